package shard

import (
	"context"
	"encoding/binary"
	"fmt"
	"math"

	"github.com/prometheus/prometheus/model/histogram"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/tsdb/chunkenc"
)

// BucketDigest summarises the data of a partition in [Mint, Maxt).
type BucketDigest struct {
	Mint, Maxt int64
	Series     int // series with at least one sample in the bucket
	Samples    int
	Hash       uint64
}

// maxDigestBuckets bounds the answer of PartitionDigest (~40 bytes each).
const maxDigestBuckets = 1 << 16

// PartitionDigest summarises partition p's data in [mint, maxt) per bucket
// of width step (the last one may be shorter), so two replicas compare by
// exchanging a few hundred bytes and repair only the buckets that differ.
//
// A bucket's Hash is the sum, modulo 2^64, of one 64-bit hash per series
// with samples in the bucket. A series' hash is FNV-1a over its labels'
// StableHash followed by every sample's timestamp and value in time order,
// passed through the splitmix64 finaliser so the per-series hashes are
// evenly spread before they are added. A sum is order-independent (series
// are visited in any order) and, unlike xor, does not cancel two equal
// contributions. Values are hashed as bits: floats by their IEEE bits
// (NaN and stale markers included); histograms by type, schema, zero
// threshold, zero count, count, sum, custom bounds and every non-empty
// bucket's index and count, so two chunk layouts of the same histogram
// (empty buckets inserted by re-coding) and counter-reset hints do not
// count as a difference. Start timestamps are not hashed.
//
// The data is read as ExportPartition reads it (memory and disk, merged,
// duplicates resolved), so equal digests mean equal query answers.
func (db *DB) PartitionDigest(ctx context.Context, p uint16, mint, maxt, step int64) ([]BucketDigest, error) {
	if p >= NumPartitions {
		return nil, fmt.Errorf("partition %d out of range", p)
	}
	if step <= 0 || mint >= maxt {
		return nil, fmt.Errorf("digest range [%d, %d) step %d: empty", mint, maxt, step)
	}
	span := uint64(maxt) - uint64(mint) // no overflow: maxt > mint
	n := (span-1)/uint64(step) + 1
	if n > maxDigestBuckets {
		return nil, fmt.Errorf("digest range [%d, %d) step %d: %d buckets, at most %d", mint, maxt, step, n, maxDigestBuckets)
	}
	if db.closed.Load() {
		return nil, errClosed
	}
	out := make([]BucketDigest, n)
	for i := range out {
		out[i].Mint = mint + int64(i)*step
		out[i].Maxt = maxt
		if uint64(maxt)-uint64(out[i].Mint) > uint64(step) {
			out[i].Maxt = out[i].Mint + step
		}
	}
	v := db.viewPartition(p, mint, maxt-1, true)
	defer v.close()
	var (
		cs  []readChunk
		it  chunkenc.Iterator
		buf []byte
	)
	for i := range v.series {
		if i%64 == 0 {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
		}
		var err error
		if cs, err = v.chunks(i, cs[:0]); err != nil {
			return nil, err
		}
		if len(cs) == 0 {
			continue
		}
		seed := binary.BigEndian.AppendUint64(buf[:0], labels.StableHash(v.series[i].s.lset))
		cur, h := -1, uint64(0)
		finish := func() {
			if cur >= 0 {
				out[cur].Hash += mix64(h)
				out[cur].Series++
			}
		}
		it = newSeriesIterator(cs, mint, maxt-1, it)
		for vt := it.Next(); vt != chunkenc.ValNone; vt = it.Next() {
			sm := sampleAt(it, vt)
			if b := int(uint64(sm.t-mint) / uint64(step)); b != cur {
				finish()
				cur, h = b, fnvAdd(fnvOffset, seed)
			}
			buf = appendSampleBits(buf[:0], sm)
			h = fnvAdd(h, buf)
			out[cur].Samples++
		}
		if err := it.Err(); err != nil {
			return nil, err
		}
		finish()
	}
	return out, nil
}

const (
	fnvOffset = 14695981039346656037
	fnvPrime  = 1099511628211
)

func fnvAdd(h uint64, b []byte) uint64 {
	for _, c := range b {
		h ^= uint64(c)
		h *= fnvPrime
	}
	return h
}

// mix64 is the splitmix64 finaliser.
func mix64(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	return x ^ x>>31
}

// appendSampleBits appends the canonical bytes of a sample's timestamp and
// value that digests hash and the importer compares.
func appendSampleBits(b []byte, sm sample) []byte {
	b = binary.BigEndian.AppendUint64(b, uint64(sm.t))
	f64 := func(f float64) { b = binary.BigEndian.AppendUint64(b, math.Float64bits(f)) }
	switch {
	case sm.h != nil:
		h := sm.h
		b = append(b, 1, byte(h.Schema))
		f64(h.ZeroThreshold)
		b = binary.BigEndian.AppendUint64(b, h.ZeroCount)
		b = binary.BigEndian.AppendUint64(b, h.Count)
		f64(h.Sum)
		for _, c := range h.CustomValues {
			f64(c)
		}
		b = appendBuckets(b, h.PositiveBucketIterator(), func(c uint64) uint64 { return c })
		b = appendBuckets(b, h.NegativeBucketIterator(), func(c uint64) uint64 { return c })
	case sm.fh != nil:
		h := sm.fh
		b = append(b, 2, byte(h.Schema))
		f64(h.ZeroThreshold)
		f64(h.ZeroCount)
		f64(h.Count)
		f64(h.Sum)
		for _, c := range h.CustomValues {
			f64(c)
		}
		b = appendBuckets(b, h.PositiveBucketIterator(), math.Float64bits)
		b = appendBuckets(b, h.NegativeBucketIterator(), math.Float64bits)
	default:
		b = append(b, 0)
		f64(sm.f)
	}
	return b
}

// appendBuckets appends index and count of every non-empty bucket, then a
// separator.
func appendBuckets[BC histogram.BucketCount](b []byte, it histogram.BucketIterator[BC], bits func(BC) uint64) []byte {
	for it.Next() {
		bk := it.At()
		if bk.Count == 0 {
			continue
		}
		b = binary.BigEndian.AppendUint32(b, uint32(bk.Index))
		b = binary.BigEndian.AppendUint64(b, bits(bk.Count))
	}
	return append(b, 0xff)
}

// sameValue reports whether two samples at one timestamp hold the same
// value, by the bits digests hash.
func sameValue(a, b sample) bool {
	var x, y [128]byte
	return string(appendSampleBits(x[:0], a)) == string(appendSampleBits(y[:0], b))
}

package shard

import (
	"context"
	"math/bits"
	"slices"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/storage"
	"github.com/prometheus/prometheus/tsdb/chunkenc"
	"github.com/prometheus/prometheus/tsdb/chunks"
	"github.com/prometheus/prometheus/util/annotations"
)

// PartitionSet is a set of partitions as a fixed-size bitmap: 128 bytes,
// cheap to copy, compare and send over the network.
type PartitionSet [NumPartitions / 64]uint64

// Add puts partition p into the set.
func (s *PartitionSet) Add(p uint16) { s[p/64&(NumPartitions/64-1)] |= 1 << (p % 64) }

// Remove takes partition p out of the set.
func (s *PartitionSet) Remove(p uint16) { s[p/64&(NumPartitions/64-1)] &^= 1 << (p % 64) }

// Has reports whether p is in the set.
func (s *PartitionSet) Has(p uint16) bool {
	return p < NumPartitions && s[p/64]&(1<<(p%64)) != 0
}

// Len is the number of partitions in the set.
func (s *PartitionSet) Len() int {
	n := 0
	for _, w := range s {
		n += bits.OnesCount64(w)
	}
	return n
}

// Full reports whether the set holds every partition.
func (s *PartitionSet) Full() bool {
	for _, w := range s {
		if w != ^uint64(0) {
			return false
		}
	}
	return true
}

// AddAll makes the set hold every partition.
func (s *PartitionSet) AddAll() {
	for i := range s {
		s[i] = ^uint64(0)
	}
}

// Partitions lists the partitions of the set in increasing order.
func (s *PartitionSet) Partitions() []uint16 {
	out := make([]uint16, 0, s.Len())
	for i, w := range s {
		for w != 0 {
			b := bits.TrailingZeros64(w)
			out = append(out, uint16(i*64+b))
			w &^= 1 << b
		}
	}
	return out
}

// PartitionQuerier is Querier restricted to the series of the partitions in
// parts (nil: all): Select, LabelNames and LabelValues see nothing else. A
// cluster node answers for the partitions it was asked for and no more, so
// data it holds for partitions it no longer owns is never counted.
func (db *DB) PartitionQuerier(mint, maxt int64, parts *PartitionSet) storage.Querier {
	return &querier{db: db, mint: mint, maxt: maxt, parts: parts}
}

// PartitionChunkQuerier is ChunkQuerier restricted to parts (nil: all).
// Unlike ChunkQuerier it hands out stored chunks as they are wherever it
// can, so a peer answering a query over the network does not decode and
// re-encode every sample; only chunks that overlap others of their series
// (out-of-order data, a replay) are merged and re-encoded. The chunks of a
// series never overlap and come in time order.
//
// By default every returned chunk holds only samples inside the range
// ([mint, maxt] narrowed by the hints' Start and End): a stored chunk that
// extends past it is re-encoded clipped. With SelectHints.DisableTrimming,
// as in Prometheus' TSDB, stored chunks go out whole instead, holding
// samples up to a chunk's span outside the range, and the reader must clip;
// that is what makes them cheap to send.
func (db *DB) PartitionChunkQuerier(mint, maxt int64, parts *PartitionSet) storage.ChunkQuerier {
	return &rawChunkQuerier{querier{db: db, mint: mint, maxt: maxt, parts: parts}}
}

type rawChunkQuerier struct{ querier }

func (q *rawChunkQuerier) Select(ctx context.Context, sortSeries bool, hints *storage.SelectHints, ms ...*labels.Matcher) storage.ChunkSeriesSet {
	return &rawChunkSet{ss: q.querier.Select(ctx, sortSeries, hints, ms...).(*seriesSet), whole: hints != nil && hints.DisableTrimming}
}

// rawChunkSet converts the lazily read series of a seriesSet to chunk
// series.
type rawChunkSet struct {
	ss    *seriesSet
	whole bool // hand out stored chunks that extend past the range as they are
	cur   storage.ChunkSeries
	err   error
}

func (s *rawChunkSet) Next() bool {
	if s.err != nil || !s.ss.Next() {
		return false
	}
	v := s.ss.At().(*memSeriesView)
	metas, err := v.chunkMetas(s.whole)
	if err != nil {
		s.err = err
		return false
	}
	s.cur = &PartitionChunkSeries{ChunkSeriesEntry: storage.ChunkSeriesEntry{Lset: v.lset, ChunkIteratorFn: func(chunks.Iterator) chunks.Iterator {
		return storage.NewListChunkSeriesIterator(metas...)
	}}, Partition: v.part}
	return true
}

// PartitionChunkSeries is a chunk series of PartitionChunkQuerier, which
// knows its partition, so a reader need not hash its labels again.
type PartitionChunkSeries struct {
	storage.ChunkSeriesEntry
	Partition uint16
}

func (s *rawChunkSet) At() storage.ChunkSeries { return s.cur }

func (s *rawChunkSet) Err() error {
	if s.err != nil {
		return s.err
	}
	return s.ss.Err()
}

func (s *rawChunkSet) Warnings() annotations.Annotations { return s.ss.Warnings() }

// chunkMetas returns the series' chunks overlapping [mint, maxt] in time
// order and without overlap. A stored chunk that overlaps no other goes out
// as it is if it lies inside the range or whole is set, else re-encoded
// clipped to the range; each run of overlapping chunks is merged and
// re-encoded, clipped to the range.
func (v *memSeriesView) chunkMetas(whole bool) ([]chunks.Meta, error) {
	if len(v.chunks) == 0 {
		return nil, nil
	}
	// The order newSeriesIterator merges in: by mint, then seq.
	slices.SortFunc(v.chunks, func(a, b readChunk) int {
		if c := cmpInt64(a.mint, b.mint); c != 0 {
			return c
		}
		return cmpUint64(a.seq, b.seq)
	})
	out := make([]chunks.Meta, 0, len(v.chunks))
	for i := 0; i < len(v.chunks); {
		j, end := i+1, v.chunks[i].maxt
		for j < len(v.chunks) && v.chunks[j].mint <= end {
			end = max(end, v.chunks[j].maxt)
			j++
		}
		if c := v.chunks[i]; j == i+1 && (whole || c.mint >= v.mint && c.maxt <= v.maxt) {
			out = append(out, chunks.Meta{Chunk: c.chk, MinTime: c.mint, MaxTime: c.maxt})
		} else {
			var err error
			if out, err = v.encode(v.chunks[i:j], out); err != nil {
				return nil, err
			}
		}
		i = j
	}
	return out, nil
}

// encode appends the samples of cs clipped to [mint, maxt] as new chunks.
func (v *memSeriesView) encode(cs []readChunk, out []chunks.Meta) ([]chunks.Meta, error) {
	if len(cs) == 0 {
		return out, nil
	}
	it := storage.NewSeriesToChunkEncoder(&storage.SeriesEntry{Lset: v.lset, SampleIteratorFn: func(reuse chunkenc.Iterator) chunkenc.Iterator {
		return newSeriesIterator(cs, v.mint, v.maxt, reuse)
	}}).Iterator(nil)
	for it.Next() {
		out = append(out, it.At())
	}
	return out, it.Err()
}

// querySliceKey carries a query slice in a context.
type querySliceKey struct{}

type querySlice struct{ index, count int }

// WithQuerySlice returns a context under which Select sees only the series
// of partitions p with p % count == index: one of count disjoint slices of
// the data, which together hold every series exactly once. A query engine
// evaluates the slices of a per-series expression concurrently and combines
// them (query/parallel). Other calls ignore it.
func WithQuerySlice(ctx context.Context, index, count int) context.Context {
	return context.WithValue(ctx, querySliceKey{}, querySlice{index: index, count: count})
}

// QuerySlice returns the partitions of the slice set by WithQuerySlice on
// ctx, and false if there is none.
func QuerySlice(ctx context.Context) (PartitionSet, bool) {
	s, ok := ctx.Value(querySliceKey{}).(querySlice)
	if !ok || s.count <= 1 {
		return PartitionSet{}, false
	}
	var ps PartitionSet
	for p := s.index; p < NumPartitions; p += s.count {
		ps.Add(uint16(p))
	}
	return ps, true
}

// Union adds the partitions that are in o.
func (s *PartitionSet) Union(o *PartitionSet) {
	for i := range s {
		s[i] |= o[i]
	}
}

// Subtract removes the partitions that are in o.
func (s *PartitionSet) Subtract(o *PartitionSet) {
	for i := range s {
		s[i] &^= o[i]
	}
}

// Intersect keeps only the partitions that are also in o.
func (s *PartitionSet) Intersect(o *PartitionSet) {
	for i := range s {
		s[i] &= o[i]
	}
}

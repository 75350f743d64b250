package shard

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"slices"

	"github.com/dgraph-io/badger/v4"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/storage"
	"github.com/prometheus/prometheus/tsdb/chunkenc"
	"github.com/prometheus/prometheus/util/annotations"
)

// Querier implements storage.Queryable.
func (db *DB) Querier(mint, maxt int64) (storage.Querier, error) {
	return &querier{db: db, mint: mint, maxt: maxt}, nil
}

// ChunkQuerier implements storage.ChunkQueryable by re-encoding the merged
// samples, so overlapping chunks never reach a remote-read client.
func (db *DB) ChunkQuerier(mint, maxt int64) (storage.ChunkQuerier, error) {
	return &chunkQuerier{querier{db: db, mint: mint, maxt: maxt}}, nil
}

type querier struct {
	db         *DB
	mint, maxt int64
	parts      *PartitionSet // nil: all partitions
	txns       []*badger.Txn
}

func (q *querier) Close() error {
	for _, t := range q.txns {
		t.Discard()
	}
	q.txns = nil
	return nil
}

// matching returns the live series matching ms with data in [mint, maxt],
// of the partitions in parts (nil: all).
func (q *querier) matching(ms []*labels.Matcher, mint, maxt int64, parts *PartitionSet) []*memSeries {
	refs := q.db.index.postingsForMatchers(ms...)
	out := make([]*memSeries, 0, len(refs))
	q.db.refsMu.RLock()
	for _, r := range refs {
		if r < uint64(len(q.db.refs)) {
			if s := q.db.refs[r]; s != nil {
				out = append(out, s)
			}
		}
	}
	q.db.refsMu.RUnlock()
	return slices.DeleteFunc(out, func(s *memSeries) bool {
		if parts != nil && !parts.Has(s.part) {
			return true
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.deleted || s.maxT < mint || s.minT > maxt
	})
}

func (q *querier) Select(ctx context.Context, sortSeries bool, hints *storage.SelectHints, ms ...*labels.Matcher) storage.SeriesSet {
	mint, maxt := q.mint, q.maxt
	labelsOnly := false
	if hints != nil {
		mint, maxt = max(mint, hints.Start), min(maxt, hints.End)
		labelsOnly = hints.Func == "series"
	}
	parts := q.parts
	if slice, ok := QuerySlice(ctx); ok {
		if parts != nil {
			slice.Intersect(parts)
		}
		parts = &slice
	}
	series := q.matching(ms, mint, maxt, parts)
	if sortSeries {
		slices.SortFunc(series, func(a, b *memSeries) int { return labels.Compare(a.lset, b.lset) })
	}
	if hints != nil && hints.Limit > 0 && len(series) > hints.Limit {
		series = series[:hints.Limit]
	}
	q.db.metrics.selectSeries.Observe(float64(len(series)))
	return &seriesSet{ctx: ctx, q: q, series: series, mint: mint, maxt: maxt, labelsOnly: labelsOnly, i: -1}
}

func (q *querier) LabelValues(_ context.Context, name string, hints *storage.LabelHints, ms ...*labels.Matcher) ([]string, annotations.Annotations, error) {
	var refs []uint64
	if len(ms) > 0 || q.parts != nil || q.narrowed() {
		refs = q.refsOf(q.matching(ms, q.mint, q.maxt, q.parts))
		if len(refs) == 0 {
			return []string{}, nil, nil
		}
	}
	vals := q.db.index.labelValues(name, refs)
	if hints != nil && hints.Limit > 0 && len(vals) > hints.Limit {
		vals = vals[:hints.Limit]
	}
	return vals, nil, nil
}

func (q *querier) LabelNames(_ context.Context, hints *storage.LabelHints, ms ...*labels.Matcher) ([]string, annotations.Annotations, error) {
	var refs []uint64
	if len(ms) > 0 || q.parts != nil || q.narrowed() {
		refs = q.refsOf(q.matching(ms, q.mint, q.maxt, q.parts))
		if len(refs) == 0 {
			return []string{}, nil, nil
		}
	}
	names := q.db.index.labelNames(refs)
	if hints != nil && hints.Limit > 0 && len(names) > hints.Limit {
		names = names[:hints.Limit]
	}
	return names, nil, nil
}

// narrowed reports whether the querier's time range may exclude some series,
// in which case label queries must look at each series' span.
func (q *querier) narrowed() bool {
	mint, err := q.db.StartTime()
	if err != nil {
		return true
	}
	return q.mint > mint || q.maxt < q.db.maxTime.Load()
}

func (q *querier) refsOf(ss []*memSeries) []uint64 {
	refs := make([]uint64, len(ss))
	for i, s := range ss {
		refs[i] = s.ref
	}
	slices.Sort(refs)
	return refs
}

// txn returns a read transaction for disk reads of this querier, opened on
// first use and discarded on Close.
func (q *querier) txn() *badger.Txn {
	if len(q.txns) == 0 {
		q.txns = append(q.txns, q.db.bdb.NewTransaction(false))
	}
	return q.txns[0]
}

// seriesSet yields series lazily; disk chunks are read per series on Next.
type seriesSet struct {
	ctx        context.Context
	q          *querier
	series     []*memSeries
	i          int
	mint, maxt int64
	labelsOnly bool
	it         *badger.Iterator
	cur        storage.Series
	err        error
}

func (ss *seriesSet) Next() bool {
	for {
		ss.i++
		if ss.i >= len(ss.series) {
			ss.close()
			return false
		}
		if ss.i%128 == 0 {
			if err := ss.ctx.Err(); err != nil {
				ss.err = err
				ss.close()
				return false
			}
		}
		s := ss.series[ss.i]
		if ss.labelsOnly {
			ss.cur = &memSeriesView{lset: s.lset}
			return true
		}
		chunks, mem, needDisk := s.snapshot(ss.mint, ss.maxt, nil)
		if needDisk {
			var err error
			if chunks, err = ss.readDisk(s, mem, chunks); err != nil {
				ss.err = err
				ss.close()
				return false
			}
		}
		if len(chunks) == 0 {
			continue
		}
		ss.cur = &memSeriesView{lset: s.lset, chunks: chunks, mint: ss.mint, maxt: ss.maxt, part: s.part}
		return true
	}
}

// readDisk appends the series' persisted chunks overlapping [mint, maxt]
// that are not also in memory.
func (ss *seriesSet) readDisk(s *memSeries, mem map[uint64]struct{}, out []readChunk) ([]readChunk, error) {
	if ss.it == nil {
		ss.it = ss.q.txn().NewIterator(badger.IteratorOptions{PrefetchValues: false, Prefix: []byte{tagChunk}})
	}
	prefix := seriesChunkPrefix(s.part, s.ref)
	for ss.it.Seek(seriesChunkSeek(s.part, s.ref, ss.mint)); ss.it.ValidForPrefix(prefix); ss.it.Next() {
		item := ss.it.Item()
		k, err := parseChunkKey(item.Key())
		if err != nil {
			return out, err
		}
		if k.maxt-maxChunkRange > ss.maxt {
			break // chunks span < maxChunkRange, so none further can start before maxt
		}
		if _, ok := mem[k.seq]; ok || k.mint > ss.maxt {
			continue
		}
		v, err := item.ValueCopy(nil)
		if err != nil {
			return out, err
		}
		chk, err := chunkFromValue(v)
		if err != nil {
			return out, fmt.Errorf("series %d chunk %d: %w", s.ref, k.seq, err)
		}
		out = append(out, readChunk{chk: chk, mint: k.mint, maxt: k.maxt, seq: k.seq})
	}
	ss.q.db.metrics.diskChunkReads.Inc()
	return out, nil
}

func (ss *seriesSet) close() {
	if ss.it != nil {
		ss.it.Close()
		ss.it = nil
	}
}

func (ss *seriesSet) At() storage.Series                { return ss.cur }
func (ss *seriesSet) Err() error                        { return ss.err }
func (ss *seriesSet) Warnings() annotations.Annotations { return nil }

// memSeriesView is a series handed to a reader: its labels and an immutable
// list of chunks.
type memSeriesView struct {
	lset       labels.Labels
	chunks     []readChunk
	mint, maxt int64
	part       uint16
}

func (s *memSeriesView) Labels() labels.Labels { return s.lset }

func (s *memSeriesView) Iterator(reuse chunkenc.Iterator) chunkenc.Iterator {
	if len(s.chunks) == 0 {
		return chunkenc.NewNopIterator()
	}
	return newSeriesIterator(s.chunks, s.mint, s.maxt, reuse)
}

type chunkQuerier struct{ querier }

func (q *chunkQuerier) Select(ctx context.Context, sortSeries bool, hints *storage.SelectHints, ms ...*labels.Matcher) storage.ChunkSeriesSet {
	return storage.NewSeriesSetToChunkSet(q.querier.Select(ctx, sortSeries, hints, ms...))
}

// ErrCorrupt marks data on disk that fails its checks (a chunk value whose
// checksum does not match): the copy must be replaced, not retried.
var ErrCorrupt = errors.New("corrupt data on disk")

var errBadChunk = fmt.Errorf("malformed chunk value: %w", ErrCorrupt)

// chunkFromValue decodes a persisted chunk value: encoding byte, chunk
// bytes, CRC32-C of both. The checksum keeps a corrupt value from reaching
// the chunk decoders, which trust their input.
func chunkFromValue(v []byte) (chunkenc.Chunk, error) {
	if len(v) < 1+2+4 || !chunkenc.IsValidEncoding(chunkenc.Encoding(v[0])) {
		return nil, errBadChunk
	}
	body, sum := v[:len(v)-4], binary.BigEndian.Uint32(v[len(v)-4:])
	if crc32.Checksum(body, castagnoli) != sum {
		return nil, fmt.Errorf("checksum mismatch: %w", errBadChunk)
	}
	return chunkenc.FromData(chunkenc.Encoding(v[0]), body[1:])
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// ReadsQuerySlices reports that Select honours shard.WithQuerySlice.
func (db *DB) ReadsQuerySlices() bool { return true }

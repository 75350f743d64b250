package shard

import (
	"math"
	"slices"

	"github.com/prometheus/prometheus/model/histogram"
	"github.com/prometheus/prometheus/tsdb/chunkenc"
)

// newSeriesIterator iterates the samples of chunks within [mint, maxt].
// Chunks that do not overlap are chained; overlapping chunks (out-of-order
// data, or a write-ahead replay after a crash) are merged, and for a
// timestamp present in several chunks the chunk with the lowest seq — the
// first written — wins.
func newSeriesIterator(chunks []readChunk, mint, maxt int64, reuse chunkenc.Iterator) chunkenc.Iterator {
	slices.SortFunc(chunks, func(a, b readChunk) int {
		if c := cmpInt64(a.mint, b.mint); c != 0 {
			return c
		}
		return cmpUint64(a.seq, b.seq)
	})
	for i := 1; i < len(chunks); i++ {
		if chunks[i].mint <= chunks[i-1].maxt {
			return newMergedIterator(chunks, mint, maxt)
		}
	}
	it, ok := reuse.(*chainIterator)
	if !ok {
		it = &chainIterator{}
	}
	*it = chainIterator{chunks: chunks, mint: mint, maxt: maxt, reuse: it.reuse}
	return it
}

func cmpUint64(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// chainIterator walks non-overlapping chunks in time order.
type chainIterator struct {
	chunks     []readChunk
	i          int
	mint, maxt int64
	cur        chunkenc.Iterator
	curMaxT    int64 // maxt of cur's chunk
	reuse      chunkenc.Iterator
	vt         chunkenc.ValueType
	done       bool
	err        error
}

// Next has a fast path for the common step, the next sample of the current
// chunk: one call into the chunk iterator, and the maxt check only in the
// chunk that crosses maxt.
func (it *chainIterator) Next() chunkenc.ValueType {
	if it.cur != nil && !it.done {
		if vt := it.cur.Next(); vt != chunkenc.ValNone {
			if it.curMaxT <= it.maxt || it.cur.AtT() <= it.maxt {
				it.vt = vt
				return vt
			}
			return it.stop()
		}
		if err := it.cur.Err(); err != nil {
			it.err = err
			return it.stop()
		}
		it.cur = nil
	}
	return it.move(math.MinInt64)
}

func (it *chainIterator) Seek(t int64) chunkenc.ValueType {
	if it.done {
		return chunkenc.ValNone
	}
	if it.cur != nil && it.cur.AtT() >= t {
		return it.vt
	}
	return it.move(t)
}

// move advances to the next sample at or after max(t, mint); with t at its
// minimum it is a plain Next.
func (it *chainIterator) move(t int64) chunkenc.ValueType {
	if it.done {
		return chunkenc.ValNone
	}
	t = max(t, it.mint)
	for {
		var vt chunkenc.ValueType
		if it.cur == nil {
			for it.i < len(it.chunks) && it.chunks[it.i].maxt < t {
				it.i++
			}
			if it.i >= len(it.chunks) || it.chunks[it.i].mint > it.maxt {
				return it.stop()
			}
			it.cur = chunkIterator(it.chunks[it.i].chk, it.reuse)
			it.curMaxT = it.chunks[it.i].maxt
			it.reuse = it.cur
			it.i++
			vt = it.cur.Seek(t)
		} else if it.cur.AtT() < t {
			vt = it.cur.Seek(t)
		} else {
			vt = it.cur.Next()
		}
		if vt != chunkenc.ValNone {
			if it.cur.AtT() > it.maxt {
				return it.stop()
			}
			it.vt = vt
			return vt
		}
		if err := it.cur.Err(); err != nil {
			it.err = err
			return it.stop()
		}
		it.cur = nil
	}
}

func (it *chainIterator) stop() chunkenc.ValueType {
	it.done = true
	it.cur = nil
	it.vt = chunkenc.ValNone
	return chunkenc.ValNone
}

func (it *chainIterator) At() (int64, float64) { return it.cur.At() }
func (it *chainIterator) AtHistogram(h *histogram.Histogram) (int64, *histogram.Histogram) {
	return it.cur.AtHistogram(h)
}

func (it *chainIterator) AtFloatHistogram(fh *histogram.FloatHistogram) (int64, *histogram.FloatHistogram) {
	return it.cur.AtFloatHistogram(fh)
}
func (it *chainIterator) AtT() int64  { return it.cur.AtT() }
func (it *chainIterator) AtST() int64 { return it.cur.AtST() }
func (it *chainIterator) Err() error  { return it.err }

// newMergedIterator materialises overlapping chunks into one sorted sample
// list. Overlap is the rare path (out-of-order writes), so simplicity wins
// over streaming here.
func newMergedIterator(chunks []readChunk, mint, maxt int64) chunkenc.Iterator {
	type ranked struct {
		sample
		seq uint64
	}
	var all []ranked
	var it chunkenc.Iterator
	for _, c := range chunks {
		it = chunkIterator(c.chk, it)
		for vt := it.Next(); vt != chunkenc.ValNone; vt = it.Next() {
			t := it.AtT()
			if t < mint || t > maxt {
				continue
			}
			r := ranked{seq: c.seq}
			r.t, r.st = t, it.AtST()
			switch vt {
			case chunkenc.ValFloat:
				_, r.f = it.At()
			case chunkenc.ValHistogram:
				_, r.h = it.AtHistogram(nil)
			case chunkenc.ValFloatHistogram:
				_, r.fh = it.AtFloatHistogram(nil)
			}
			all = append(all, r)
		}
		if err := it.Err(); err != nil {
			return &sliceIterator{err: err, i: -1}
		}
	}
	slices.SortStableFunc(all, func(a, b ranked) int {
		if c := cmpInt64(a.t, b.t); c != 0 {
			return c
		}
		return cmpUint64(a.seq, b.seq)
	})
	out := make([]sample, 0, len(all))
	last := int64(math.MinInt64)
	for _, r := range all {
		if len(out) > 0 && r.t == last {
			continue
		}
		out = append(out, r.sample)
		last = r.t
	}
	return &sliceIterator{samples: out, i: -1}
}

// sliceIterator iterates a sorted slice of samples.
type sliceIterator struct {
	samples []sample
	i       int
	err     error
}

func (it *sliceIterator) Next() chunkenc.ValueType {
	if it.i+1 >= len(it.samples) {
		it.i = len(it.samples)
		return chunkenc.ValNone
	}
	it.i++
	return it.samples[it.i].valueType()
}

func (it *sliceIterator) Seek(t int64) chunkenc.ValueType {
	if it.i < 0 {
		it.i = 0
	}
	if it.i >= len(it.samples) {
		return chunkenc.ValNone
	}
	if it.samples[it.i].t < t {
		it.i += sortSearch(it.samples[it.i:], t)
	}
	if it.i >= len(it.samples) {
		return chunkenc.ValNone
	}
	return it.samples[it.i].valueType()
}

func sortSearch(ss []sample, t int64) int {
	i, _ := slices.BinarySearchFunc(ss, t, func(a sample, t int64) int { return cmpInt64(a.t, t) })
	return i
}

func (it *sliceIterator) At() (int64, float64) { s := it.samples[it.i]; return s.t, s.f }
func (it *sliceIterator) AtHistogram(h *histogram.Histogram) (int64, *histogram.Histogram) {
	s := it.samples[it.i]
	if h == nil {
		return s.t, s.h.Copy()
	}
	s.h.CopyTo(h)
	return s.t, h
}

func (it *sliceIterator) AtFloatHistogram(fh *histogram.FloatHistogram) (int64, *histogram.FloatHistogram) {
	s := it.samples[it.i]
	src := s.fh
	if src == nil && s.h != nil {
		src = s.h.ToFloat(nil)
	}
	if fh == nil {
		return s.t, src.Copy()
	}
	src.CopyTo(fh)
	return s.t, fh
}
func (it *sliceIterator) AtT() int64  { return it.samples[it.i].t }
func (it *sliceIterator) AtST() int64 { return it.samples[it.i].st }
func (it *sliceIterator) Err() error  { return it.err }

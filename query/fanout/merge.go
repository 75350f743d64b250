package fanout

import (
	"errors"

	"github.com/prometheus/prometheus/model/histogram"
	"github.com/prometheus/prometheus/storage"
	"github.com/prometheus/prometheus/tsdb/chunkenc"
)

// replicaMerge merges the replicas of one series read from several nodes.
// Prometheus's ChainedSeriesMerge alternates between inputs whenever they
// hold the same timestamp, and marks every sample taken after a switch as of
// unknown counter-reset state; two identical replicas then lose every native
// histogram counter-reset hint. Replicas are mostly identical, so this merge
// stays on one replica for as long as it has the next timestamp and switches
// only to fill a gap, which keeps the hints a single node would give.
func replicaMerge(series ...storage.Series) storage.Series {
	series = distinctReplicas(series)
	if len(series) == 1 {
		return series[0]
	}
	return &storage.SeriesEntry{
		Lset: series[0].Labels(),
		SampleIteratorFn: func(chunkenc.Iterator) chunkenc.Iterator {
			its := make([]chunkenc.Iterator, len(series))
			for i, s := range series {
				its[i] = s.Iterator(nil)
			}
			return newReplicaIterator(its)
		},
	}
}

// distinctReplicas keeps one of the replicas that are byte for byte alike.
// Owners append the same batches in the same order, so their chunks are
// usually identical, and comparing bytes is much cheaper than decoding
// both replicas sample by sample to merge them. Of identical replicas the
// local one is kept: its in-memory chunks seek faster.
func distinctReplicas(series []storage.Series) []storage.Series {
	out := series[:0:0]
	for _, s := range series {
		rs, ok := s.(*remoteSeries)
		dup := false
		for i, o := range out {
			if ors, ok2 := o.(*remoteSeries); ok && ok2 && rs.sameAs(ors) {
				if rs.local != nil && ors.local == nil {
					out[i] = s
				}
				dup = true
				break
			}
		}
		if !dup {
			out = append(out, s)
		}
	}
	return out
}

// replicaIterator yields the union of its inputs' timestamps in order, one
// sample per timestamp, preferring the input it took the previous sample
// from.
type replicaIterator struct {
	its      []chunkenc.Iterator
	vt       []chunkenc.ValueType // current value type of each input; ValNone once exhausted
	started  bool
	cur      int
	switched bool // the current sample comes from another input than the previous one
	lastT    int64
}

func newReplicaIterator(its []chunkenc.Iterator) *replicaIterator {
	return &replicaIterator{its: its, vt: make([]chunkenc.ValueType, len(its)), cur: -1}
}

func (r *replicaIterator) Next() chunkenc.ValueType {
	if !r.started {
		r.started = true
		for i, it := range r.its {
			r.vt[i] = it.Next()
		}
		return r.pick(false)
	}
	if r.cur < 0 {
		return chunkenc.ValNone
	}
	r.vt[r.cur] = r.its[r.cur].Next()
	r.skipTo(r.lastT + 1)
	return r.pick(true)
}

func (r *replicaIterator) Seek(t int64) chunkenc.ValueType {
	if r.started && r.cur >= 0 && r.vt[r.cur] != chunkenc.ValNone && r.its[r.cur].AtT() >= t {
		return r.vt[r.cur] // never move backwards
	}
	wasStarted := r.started
	if !r.started {
		r.started = true
		for i, it := range r.its {
			r.vt[i] = it.Seek(t)
		}
	} else {
		if r.cur < 0 {
			return chunkenc.ValNone
		}
		r.skipTo(t)
	}
	return r.pick(wasStarted)
}

// skipTo moves every input still behind t to its first sample at or after t.
func (r *replicaIterator) skipTo(t int64) {
	for i, it := range r.its {
		if r.vt[i] != chunkenc.ValNone && it.AtT() < t {
			r.vt[i] = it.Seek(t)
		}
	}
}

// pick chooses the input holding the smallest timestamp, the current one on
// ties. mid is false for the first sample, which is never a switch.
func (r *replicaIterator) pick(mid bool) chunkenc.ValueType {
	best := -1
	if r.cur >= 0 && r.vt[r.cur] != chunkenc.ValNone {
		best = r.cur
	}
	for i, it := range r.its {
		if r.vt[i] == chunkenc.ValNone || i == best {
			continue
		}
		if best < 0 || it.AtT() < r.its[best].AtT() {
			best = i
		}
	}
	if best < 0 {
		r.cur = -1
		return chunkenc.ValNone
	}
	r.switched = mid && best != r.cur
	r.cur = best
	r.lastT = r.its[best].AtT()
	return r.vt[best]
}

func (r *replicaIterator) At() (int64, float64) { return r.its[r.cur].At() }

func (r *replicaIterator) AtHistogram(h *histogram.Histogram) (int64, *histogram.Histogram) {
	t, h := r.its[r.cur].AtHistogram(h)
	// After a switch the previous sample came from another replica: whether
	// a counter reset lies between them is unknown, as in Prometheus's merge.
	if r.switched && h.CounterResetHint != histogram.GaugeType {
		h.CounterResetHint = histogram.UnknownCounterReset
	}
	return t, h
}

func (r *replicaIterator) AtFloatHistogram(fh *histogram.FloatHistogram) (int64, *histogram.FloatHistogram) {
	t, fh := r.its[r.cur].AtFloatHistogram(fh)
	if r.switched && fh.CounterResetHint != histogram.GaugeType {
		fh.CounterResetHint = histogram.UnknownCounterReset
	}
	return t, fh
}

func (r *replicaIterator) AtT() int64  { return r.its[r.cur].AtT() }
func (r *replicaIterator) AtST() int64 { return r.its[r.cur].AtST() }

func (r *replicaIterator) Err() error {
	var errs []error
	for _, it := range r.its {
		errs = append(errs, it.Err())
	}
	return errors.Join(errs...)
}

package parallel

import (
	"context"
	"errors"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/timestamp"
	"github.com/prometheus/prometheus/model/value"
	"github.com/prometheus/prometheus/promql"
	"github.com/prometheus/prometheus/promql/parser"
	"github.com/prometheus/prometheus/storage"
	"github.com/prometheus/prometheus/util/annotations"
	"github.com/prometheus/prometheus/util/kahansum"
	"github.com/prometheus/prometheus/util/stats"

	"github.com/kilnhq/kiln/shard"
)

// Querier implements storage.Queryable for the outer query.
func (r *run) Querier(mint, maxt int64) (storage.Querier, error) {
	inner, err := r.q.Querier(mint, maxt)
	if err != nil {
		return nil, err
	}
	return &querier{Querier: inner, r: r}, nil
}

type querier struct {
	storage.Querier
	r *run
}

// Select answers a synthetic selector with its aggregation's slices; the
// outer engine selects everything before it evaluates anything, so the
// slices of all sliced aggregations of a query run at once.
func (q *querier) Select(ctx context.Context, sortSeries bool, hints *storage.SelectHints, ms ...*labels.Matcher) storage.SeriesSet {
	if len(ms) == 1 && ms[0].Name == model.MetricNameLabel && ms[0].Type == labels.MatchEqual {
		for i, s := range q.r.pl.sliced {
			if s.name == ms[0].Value {
				return q.r.startSlices(ctx, i)
			}
		}
	}
	return q.Querier.Select(ctx, sortSeries, hints, ms...)
}

// sliceRun is the running evaluation of one sliced aggregation.
type sliceRun struct {
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	results []sliceResult
	err     error // set when combining: errFallback
	// in counts the series the slices read; out, once loaded, is how
	// many series their results are to the outer query.
	in     atomic.Int64
	out    int64
	loaded bool
}

type sliceResult struct {
	qry     promql.Query
	val     parser.Value
	part    *partial // inGo: the slice's sums, computed on its goroutine
	samples int64    // samples a rollup read (the engine's are in stats)
	ws      annotations.Annotations
	err     error
	stats   *stats.Statistics
}

func (s *sliceRun) close() {
	for _, sr := range s.results {
		if sr.qry != nil {
			sr.qry.Close()
		}
	}
}

func (r *run) startSlices(ctx context.Context, i int) storage.SeriesSet {
	sl := r.pl.sliced[i]
	n := r.e.cfg.Slices
	ctx, cancel := context.WithCancel(ctx)
	s := &sliceRun{results: make([]sliceResult, n), cancel: cancel}
	q := counted{Queryable: r.q, n: &s.in}
	r.mu.Lock()
	if r.started == nil {
		r.started = make([]*sliceRun, len(r.pl.sliced))
	}
	r.started[i] = s
	r.mu.Unlock()
	for k := range n {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			sctx := shard.WithQuerySlice(ctx, k, n)
			sr := &s.results[k]
			if sl.rollup != nil && !r.e.cfg.NoRollups {
				sr.part, sr.samples, sr.err = sl.rollup.eval(sctx, q, sl, r.start, r.end, r.step, r.lookback(), r.e.cfg.MaxSamples)
				return
			}
			var (
				qry promql.Query
				err error
			)
			if r.step == 0 {
				qry, err = r.e.sub.NewInstantQuery(sctx, q, r.opts, sl.sub, r.start)
			} else {
				qry, err = r.e.sub.NewRangeQuery(sctx, q, r.opts, sl.sub, r.start, r.end, r.step)
			}
			if err != nil {
				sr.err = err
				return
			}
			sr.qry = qry
			res := qry.Exec(sctx)
			sr.val, sr.ws, sr.err = res.Value, res.Warnings, res.Err
			sr.stats = qry.Stats()
			if sr.err == nil && sl.combine == inGo && sr.part == nil {
				var ok bool
				if sr.part, ok = newPartial(asMatrix(sr.val), sl, r.start, r.end, r.step); !ok {
					sr.err = errFallback
				}
				sr.val = nil
				qry.Close() // the sums hold all that is needed
				sr.qry = nil
			}
		}()
	}
	return &sliceSet{r: r, sl: sl, s: s, i: -1}
}

// sliceSet is the synthetic selector's series: the slices' results, or for
// an avg the means over all of them.
type sliceSet struct {
	r      *run
	sl     *sliced
	s      *sliceRun
	series []storage.Series
	ws     annotations.Annotations
	err    error
	i      int
	ready  bool
}

func (ss *sliceSet) Next() bool {
	if !ss.ready {
		ss.ready = true
		ss.load()
	}
	if ss.err != nil {
		return false
	}
	ss.i++
	return ss.i < len(ss.series)
}

func (ss *sliceSet) At() storage.Series                { return ss.series[ss.i] }
func (ss *sliceSet) Err() error                        { return ss.err }
func (ss *sliceSet) Warnings() annotations.Annotations { return ss.ws }

func (ss *sliceSet) load() {
	ss.s.wg.Wait()
	for _, sr := range ss.s.results {
		if sr.err != nil {
			ss.err = sr.err
			if errors.Is(sr.err, errFallback) {
				ss.s.err = errFallback
			}
			ss.r.mu.Lock()
			if ss.r.readErr == nil {
				ss.r.readErr = sr.err
			}
			ss.r.mu.Unlock()
			return
		}
		ss.ws.Merge(sr.ws)
	}
	end, step := timestamp.FromTime(ss.r.end), ss.r.step.Milliseconds()
	var mats []promql.Matrix
	switch ss.sl.combine {
	case inGo:
		total := ss.s.results[0].part
		for _, sr := range ss.s.results[1:] {
			total.merge(sr.part)
		}
		m, ok := total.matrix()
		if !ok {
			ss.s.err, ss.err = errFallback, errFallback
			return
		}
		mats = append(mats, m)
	case byEngine:
		for _, sr := range ss.s.results {
			mats = append(mats, asMatrix(sr.val))
		}
	}
	for _, m := range mats {
		for _, s := range m {
			ss.series = append(ss.series, promql.NewStorageSeries(withStaleMarkers(s, end, step)))
		}
	}
	ss.s.out, ss.s.loaded = int64(len(ss.series)), true
}

// asMatrix turns an instant query's vector into one-point series.
func asMatrix(v parser.Value) promql.Matrix {
	switch v := v.(type) {
	case promql.Matrix:
		return v
	case promql.Vector:
		m := make(promql.Matrix, 0, len(v))
		for _, s := range v {
			ser := promql.Series{Metric: s.Metric}
			if s.H != nil {
				ser.Histograms = []promql.HPoint{{T: s.T, H: s.H}}
			} else {
				ser.Floats = []promql.FPoint{{T: s.T, F: s.F}}
			}
			m = append(m, ser)
		}
		return m
	case promql.Scalar:
		return nil
	}
	return nil
}

// withStaleMarkers marks the end of each run of steps with a stale marker
// at the next step, so that the outer query's selector does not carry a
// slice's value into later steps through the lookback window, where the
// aggregation itself had no value.
func withStaleMarkers(s promql.Series, end, step int64) promql.Series {
	if step <= 0 {
		return s
	}
	ts := make([]int64, 0, len(s.Floats)+len(s.Histograms))
	for _, p := range s.Floats {
		ts = append(ts, p.T)
	}
	for _, p := range s.Histograms {
		ts = append(ts, p.T)
	}
	if len(s.Histograms) > 0 && len(s.Floats) > 0 {
		slices.Sort(ts)
	}
	var stale []int64
	for i, t := range ts {
		if next := t + step; next <= end && (i+1 == len(ts) || ts[i+1] != next) {
			stale = append(stale, next)
		}
	}
	if len(stale) == 0 {
		return s
	}
	floats := make([]promql.FPoint, 0, len(s.Floats)+len(stale))
	j := 0
	for _, p := range s.Floats {
		for j < len(stale) && stale[j] < p.T {
			floats = append(floats, promql.FPoint{T: stale[j], F: math.Float64frombits(value.StaleNaN)})
			j++
		}
		floats = append(floats, p)
	}
	for ; j < len(stale); j++ {
		floats = append(floats, promql.FPoint{T: stale[j], F: math.Float64frombits(value.StaleNaN)})
	}
	s.Floats = floats
	return s
}

// partial is one slice's sums of an inGo aggregation: per group and step,
// a Kahan sum with its compensation and the count of series, as the
// engine's sum and avg keep them while they go through the series.
type partial struct {
	sl          *sliced
	start, step int64
	steps       int64
	groups      map[uint64]*group
	order       []*group
	// cells counts group-steps allocated. Sums are dense per step, so a
	// long range with many short-lived groups could take more memory than
	// the engine would; past maxPartialCells the partial is full and the
	// query falls back to the engine.
	cells int64
	full  bool
}

// maxPartialCells bounds a partial's sums: 24 bytes per cell.
const maxPartialCells = 4 << 20

type group struct {
	lset        labels.Labels
	sum, c, cnt []float64
}

// newPartial sums the series of one slice. It reports false where the sums
// could not match the engine's: native histograms (summed by the engine
// alone), and for avg non-finite values (where the engine switches to an
// incremental mean).
func newPartial(m promql.Matrix, sl *sliced, start, end time.Time, step time.Duration) (*partial, bool) {
	p := newEmptyPartial(sl, start, end, step)
	var buf []byte
	for _, s := range m {
		if len(s.Histograms) > 0 {
			return nil, false
		}
		var key uint64
		if sl.without {
			key, buf = s.Metric.HashWithoutLabels(buf, sl.grouping...)
		} else {
			key, buf = s.Metric.HashForLabels(buf, sl.grouping...)
		}
		g := p.group(key, s.Metric)
		for _, pt := range s.Floats {
			if sl.op == parser.AVG && (math.IsNaN(pt.F) || math.IsInf(pt.F, 0)) {
				return nil, false
			}
			i := int64(0)
			if p.step > 0 {
				i = (pt.T - p.start) / p.step
			}
			if i < 0 || i >= p.steps {
				continue
			}
			g.sum[i], g.c[i] = kahansum.Inc(pt.F, g.sum[i], g.c[i])
			g.cnt[i]++
		}
	}
	return p, !p.full
}

func newEmptyPartial(sl *sliced, start, end time.Time, step time.Duration) *partial {
	p := &partial{sl: sl, start: timestamp.FromTime(start), step: step.Milliseconds(), steps: 1, groups: map[uint64]*group{}}
	if p.step > 0 {
		p.steps = (timestamp.FromTime(end)-p.start)/p.step + 1
	}
	return p
}

// group returns the group of a series with labels ls, whose grouping key
// hashes to key.
func (p *partial) group(key uint64, ls labels.Labels) *group {
	// Groups are told apart by the hash of their labels alone, as the
	// engine's aggregation tells them apart.
	if g, ok := p.groups[key]; ok {
		return g
	}
	if p.cells += p.steps; p.cells > maxPartialCells {
		p.full = true
		p.groups, p.order, p.cells = map[uint64]*group{}, nil, 0 // keep going in constant memory
	}
	// One array for the three columns: a third of the allocations.
	cols := make([]float64, 3*p.steps)
	g := &group{lset: ls.MatchLabels(!p.sl.without, p.sl.grouping...), sum: cols[:p.steps:p.steps], c: cols[p.steps : 2*p.steps : 2*p.steps], cnt: cols[2*p.steps:]}
	p.groups[key] = g
	p.order = append(p.order, g)
	return g
}

// merge adds o's sums into p's: each slice's sum goes in as one more term
// and its compensation joins the compensation, so what one slice's sum
// rounded away is still there when it cancels against another's.
func (p *partial) merge(o *partial) {
	p.full = p.full || o.full
	for key, og := range o.groups {
		g := p.group(key, og.lset)
		for i := range og.sum {
			if og.cnt[i] == 0 {
				continue
			}
			if g.cnt[i] == 0 {
				g.sum[i], g.c[i] = og.sum[i], og.c[i]
			} else {
				g.sum[i], g.c[i] = kahansum.Inc(og.sum[i], g.sum[i], g.c[i])
				g.c[i] += og.c[i]
			}
			g.cnt[i] += og.cnt[i]
		}
	}
}

// matrix returns the aggregation's result: per group the sum, or the mean
// taken as the engine takes it while its sum stays finite. It reports false
// for a mean whose sum overflowed.
func (p *partial) matrix() (promql.Matrix, bool) {
	if p.full {
		return nil, false
	}
	out := make(promql.Matrix, 0, len(p.order))
	for _, g := range p.order {
		n := 0
		for _, c := range g.cnt {
			if c != 0 {
				n++
			}
		}
		// Sized up front: growing point by point was a third of the
		// bytes a sliced range query allocated.
		s := promql.Series{Metric: g.lset, Floats: make([]promql.FPoint, 0, n)}
		for i := range p.steps {
			if g.cnt[i] == 0 {
				continue
			}
			v := g.sum[i] + g.c[i]
			if p.sl.op == parser.AVG {
				if math.IsInf(g.sum[i], 0) || math.IsNaN(g.sum[i]) {
					// Overflow (slices may overflow to both
					// infinities): the engine's incremental mean.
					return nil, false
				}
				v = g.sum[i]/g.cnt[i] + g.c[i]/g.cnt[i]
			}
			s.Floats = append(s.Floats, promql.FPoint{T: p.start + i*p.step, F: v})
		}
		out = append(out, s)
	}
	return out, true
}

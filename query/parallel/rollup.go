package parallel

import (
	"context"
	"strings"
	"time"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/timestamp"
	"github.com/prometheus/prometheus/model/value"
	"github.com/prometheus/prometheus/promql"
	"github.com/prometheus/prometheus/promql/parser"
	"github.com/prometheus/prometheus/storage"
	"github.com/prometheus/prometheus/tsdb/chunkenc"
	"github.com/prometheus/prometheus/util/kahansum"
)

// rollup evaluates rate or increase of a counter for a sliced sum or avg
// straight from storage into the slice's sums, instead of through the
// engine. The engine recomputes each step's window from a buffer and walks
// all of its samples for counter resets; here each series' samples are
// read once, the window slides over them, and a window without a reset (by
// a running count) costs two subtractions. The arithmetic per window is the
// engine's (extrapolatedRate for floats), operation for operation, so the
// values are the same bits.
//
// It covers a plain selector (no offset, @, anchored or smoothed modifier),
// its latest sample within the lookback delta at each step, and rate and
// increase of one that names a counter (_total, _sum, _count, _bucket: the
// engine's "might not be a counter" info never applies). A
// native histogram or a start timestamp in the data makes the query run
// unsliced, through the engine (errFallback).
type rollup struct {
	matchers []*labels.Matcher
	rng      time.Duration
	isRate   bool
	fn       string
	// instant: the argument is the selector itself, whose value at a step
	// is its latest sample within the lookback delta, unless that is a
	// stale marker.
	instant bool
}

// rollupOf returns the rollup for an aggregation's argument e, or nil.
func rollupOf(e parser.Expr) *rollup {
	if vs, ok := e.(*parser.VectorSelector); ok {
		if !plainSelector(vs) {
			return nil
		}
		return &rollup{matchers: vs.LabelMatchers, instant: true}
	}
	call, ok := e.(*parser.Call)
	if !ok || (call.Func.Name != "rate" && call.Func.Name != "increase") || len(call.Args) != 1 {
		return nil
	}
	ms, ok := call.Args[0].(*parser.MatrixSelector)
	if !ok {
		return nil
	}
	vs, ok := ms.VectorSelector.(*parser.VectorSelector)
	if !ok || !plainSelector(vs) {
		return nil
	}
	name := metricOf(vs)
	counterLike := false
	for _, suffix := range []string{"_total", "_sum", "_count", "_bucket"} {
		counterLike = counterLike || strings.HasSuffix(name, suffix)
	}
	if !counterLike || ms.Range <= 0 {
		return nil
	}
	return &rollup{matchers: vs.LabelMatchers, rng: ms.Range, isRate: call.Func.Name == "rate", fn: call.Func.Name}
}

// plainSelector reports whether vs has no modifier.
func plainSelector(vs *parser.VectorSelector) bool {
	return vs.OriginalOffset == 0 && vs.Offset == 0 && vs.Timestamp == nil && vs.StartOrEnd == 0 && !vs.Anchored && !vs.Smoothed
}

// eval sums the rollup's values of one slice's series into a partial. It
// counts the samples it holds as the engine would (every series' values
// at every step before they are aggregated) against maxSamples.
func (ru *rollup) eval(ctx context.Context, q storage.Queryable, sl *sliced, start, end time.Time, step, lookback time.Duration, maxSamples int) (*partial, int64, error) {
	p := newEmptyPartial(sl, start, end, step)
	startMs, endMs, rangeMs := timestamp.FromTime(start), timestamp.FromTime(end), ru.rng.Milliseconds()
	if ru.instant {
		rangeMs = lookback.Milliseconds() // the window is (t - lookback, t]
	}
	mint := startMs - rangeMs + 1
	qr, err := q.Querier(mint, endMs)
	if err != nil {
		return nil, 0, err
	}
	defer func() { _ = qr.Close() }()
	set := qr.Select(ctx, false, &storage.SelectHints{Start: mint, End: endMs, Step: step.Milliseconds(), Range: rangeMs, Func: ru.fn}, ru.matchers...)

	var (
		it      chunkenc.Iterator
		ts      []int64
		fs      []float64
		resets  []int32 // resets[i]: counter resets among samples 0..i
		buf     []byte
		loaded  int64
		held    int
		rngSecs = ru.rng.Seconds()
	)
	for set.Next() {
		if err := ctx.Err(); err != nil {
			return nil, 0, err
		}
		s := set.At()
		it = s.Iterator(it)
		ts, fs, resets = ts[:0], fs[:0], resets[:0]
		for vt := it.Next(); vt != chunkenc.ValNone; vt = it.Next() {
			if vt != chunkenc.ValFloat || it.AtST() != 0 {
				return nil, 0, errFallback
			}
			t, f := it.At()
			if t < mint {
				continue
			}
			if t > endMs {
				break
			}
			if value.IsStaleNaN(f) && !ru.instant {
				continue // a range selector drops them; an instant one stops at them
			}
			n := int32(0)
			if len(fs) > 0 {
				n = resets[len(resets)-1]
				if f < fs[len(fs)-1] {
					n++
				}
			}
			ts, fs, resets = append(ts, t), append(fs, f), append(resets, n)
		}
		if err := it.Err(); err != nil {
			return nil, 0, err
		}
		loaded += int64(len(ts))
		if len(ts) == 0 {
			continue
		}
		var key uint64
		if sl.without {
			key, buf = s.Labels().HashWithoutLabels(buf, sl.grouping...)
		} else {
			key, buf = s.Labels().HashForLabels(buf, sl.grouping...)
		}
		var g *group
		lo, hi := 0, 0 // the window is samples lo..hi-1
		for k := range p.steps {
			stepTs := startMs + k*p.step
			for hi < len(ts) && ts[hi] <= stepTs {
				hi++
			}
			for lo < hi && ts[lo] <= stepTs-rangeMs {
				lo++
			}
			var v float64
			if ru.instant {
				if hi == lo || value.IsStaleNaN(fs[hi-1]) {
					continue
				}
				v = fs[hi-1]
			} else {
				if hi-lo < 2 {
					continue
				}
				v = ru.window(ts[lo:hi], fs[lo:hi], resets[hi-1]-resets[lo], stepTs-rangeMs, stepTs, rngSecs)
			}
			if g == nil {
				g = p.group(key, s.Labels())
			}
			g.sum[k], g.c[k] = kahansum.Inc(v, g.sum[k], g.c[k])
			g.cnt[k]++
			held++
		}
		if maxSamples > 0 && held > maxSamples {
			return nil, 0, promql.ErrTooManySamples("query execution")
		}
	}
	if err := set.Err(); err != nil {
		return nil, 0, err
	}
	if p.full {
		return nil, 0, errFallback
	}
	return p, loaded, nil
}

// window is extrapolatedRate for a float counter window of two or more
// samples (ts, fs) in (rangeStart, rangeEnd], with nResets counter resets,
// in the engine's order of operations.
func (ru *rollup) window(ts []int64, fs []float64, nResets int32, rangeStart, rangeEnd int64, rngSecs float64) float64 {
	last := len(fs) - 1
	resultFloat := fs[last] - fs[0]
	if nResets > 0 {
		for i := 1; i <= last; i++ {
			if fs[i] < fs[i-1] {
				resultFloat += fs[i-1]
			}
		}
	}
	firstT, lastT := ts[0], ts[last]
	durationToStart := float64(firstT-rangeStart) / 1000
	durationToEnd := float64(rangeEnd-lastT) / 1000
	sampledInterval := float64(lastT-firstT) / 1000
	averageDurationBetweenSamples := sampledInterval / float64(last)
	extrapolationThreshold := averageDurationBetweenSamples * 1.1

	if durationToStart >= extrapolationThreshold {
		durationToStart = averageDurationBetweenSamples / 2
	}
	durationToZero := durationToStart
	if resultFloat > 0 && fs[0] >= 0 {
		durationToZero = sampledInterval * (fs[0] / resultFloat)
	}
	if durationToZero < durationToStart {
		durationToStart = durationToZero
	}
	if durationToEnd >= extrapolationThreshold {
		durationToEnd = averageDurationBetweenSamples / 2
	}
	factor := 1.0
	if sampledInterval != 0 {
		factor = (sampledInterval + durationToStart + durationToEnd) / sampledInterval
	}
	if ru.isRate {
		factor /= rngSecs
	}
	return resultFloat * factor
}

package parallel_test

import (
	"context"
	"errors"
	"fmt"
	"math"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/prometheus/model/histogram"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/value"
	"github.com/prometheus/prometheus/promql"
	"github.com/prometheus/prometheus/promql/parser"
	"github.com/prometheus/prometheus/storage"
	"github.com/stretchr/testify/require"

	"github.com/kilnhq/kiln/query/parallel"
	"github.com/kilnhq/kiln/shard"
)

var testParser = parser.NewParser(parser.Options{ExperimentalDurationExpr: true})

func newEngine(maxSamples int) *promql.Engine {
	return promql.NewEngine(promql.EngineOpts{
		MaxSamples:           maxSamples,
		Timeout:              time.Minute,
		LookbackDelta:        5 * time.Minute,
		EnableAtModifier:     true,
		EnableNegativeOffset: true,
		Parser:               testParser,
	})
}

type testEnv struct {
	db       *shard.DB
	plain    *promql.Engine
	sub      *promql.Engine
	sliced   *parallel.Engine
	reg      *prometheus.Registry
	start    time.Time
	end      time.Time
	interval time.Duration
}

// newTestEnv loads 1,400 series of four metrics over an hour at a 15 s
// interval: counters with resets, histogram buckets, gauges with values
// far apart in magnitude, and series that exist only in one half of the hour, so that
// a group's value appears and disappears within a range query.
func newTestEnv(t *testing.T, maxSamples int) *testEnv {
	db := openTestDB(t)
	t.Cleanup(func() { _ = db.Close() })
	app := db.Appender(context.Background())
	const interval = 15_000
	for i := range 200 {
		job := fmt.Sprintf("job%d", i%7)
		inst := fmt.Sprintf("i%d", i)
		counter := labels.FromStrings("__name__", "reqs_total", "job", job, "instance", inst)
		gauge := labels.FromStrings("__name__", "queue", "job", job, "instance", inst)
		gappy := labels.FromStrings("__name__", "gappy_total", "job", job, "instance", inst)
		for k := range 240 {
			ts := int64(k * interval)
			// Scrapes a little late, by up to 3 s, so that rate windows
			// hold unevenly spaced samples.
			jittered := ts + int64((i*7919+k*104729)%3000)
			v := float64(k*(i%5+1)) + float64(i)
			if k > 100 && i%11 == 0 {
				v = float64(k - 100) // a counter reset
			}
			_, err := app.Append(0, counter, jittered, v)
			require.NoError(t, err)
			g := float64(i%13)*1e15 + float64(i)
			if i%2 == 0 {
				g = 0.1*float64(k%9) + 0.001*float64(i)
			}
			_, err = app.Append(0, gauge, ts, g)
			require.NoError(t, err)
			for j, le := range []string{"0.1", "1", "+Inf"} {
				b := labels.FromStrings("__name__", "lat_bucket", "job", job, "instance", inst, "le", le)
				_, err = app.Append(0, b, ts, float64(k*(j+1)*(i%4+1)))
				require.NoError(t, err)
			}
			if i%3 == 0 && k == 120 {
				// The series ends with a stale marker, as a scrape
				// target that disappears does.
				_, err = app.Append(0, gappy, ts, math.Float64frombits(value.StaleNaN))
				require.NoError(t, err)
			}
			if (i%3 == 0) == (k < 120) {
				_, err = app.Append(0, gappy, ts, float64(k))
				require.NoError(t, err)
			}
		}
	}
	// Groups of unequal size: a mean of the means of parts of a group is
	// not the group's mean.
	for i := range 31 {
		ls := labels.FromStrings("__name__", "mix", "g", fmt.Sprint(i%2), "h", fmt.Sprint(i%3), "k", fmt.Sprint(i))
		for k := range 240 {
			_, err := app.Append(0, ls, int64(k*interval), float64(i*i+k))
			require.NoError(t, err)
		}
	}
	require.NoError(t, app.Commit())

	reg := prometheus.NewRegistry()
	plain, sub := newEngine(maxSamples), newEngine(maxSamples)
	t.Cleanup(func() { _ = plain.Close(); _ = sub.Close() })
	return &testEnv{
		db: db, plain: plain, sub: sub, reg: reg,
		sliced: parallel.New(parallel.Config{Slices: 3, MaxSamples: maxSamples}, plain, sub, testParser, reg, nil),
		start:  time.UnixMilli(30 * 60_000), end: time.UnixMilli(59 * 60_000), interval: 15 * time.Second,
	}
}

func (env *testEnv) run(t *testing.T, e promql.QueryEngine, qs string, instant bool) *promql.Result {
	var (
		q   promql.Query
		err error
	)
	if instant {
		q, err = e.NewInstantQuery(context.Background(), env.db, nil, qs, env.end)
	} else {
		q, err = e.NewRangeQuery(context.Background(), env.db, nil, qs, env.start, env.end, env.interval)
	}
	require.NoError(t, err)
	t.Cleanup(q.Close)
	return q.Exec(context.Background())
}

// TestSlicedEqualsUnsliced compares every result, sample for sample, with
// the engine's own: the same series, timestamps and values up to the
// rounding of the last bits of a sum.
func TestSlicedEqualsUnsliced(t *testing.T) {
	env := newTestEnv(t, 50_000_000)
	queries := []string{
		`sum by (job) (rate(reqs_total[5m]))`,
		`sum(rate(reqs_total[5m]))`,
		`sum without (instance) (rate(reqs_total[5m]))`,
		`avg by (job) (queue)`,
		`avg without (instance) (queue)`,
		`avg(queue)`,
		`topk(3, avg by (instance) (queue))`,
		`count by (job) (gappy_total)`,
		`sum by (job) (gappy_total)`,
		`avg by (job) (gappy_total)`,
		`max by (job) (gappy_total)`,
		`min by (job) (queue)`,
		`group by (job) (gappy_total)`,
		`sum by (job) (rate(reqs_total{job="job1"}[5m])) / sum by (job) (rate(reqs_total[5m]))`,
		`sum by (job) (rate(gappy_total[5m]))`,
		`avg by (job, instance) (increase(gappy_total[1m]))`,
		`sum by (le, job) (rate(lat_bucket[5m]))`,
		// Groupings out of order, where label hashing needs them sorted.
		`avg without (job, instance) (lat_bucket)`,
		`sum without (le, instance) (rate(lat_bucket[5m]))`,
		`avg by (le, job) (lat_bucket)`,
		`avg without (k, h) (mix)`,
		`avg by (h, g) (mix)`,
		`histogram_quantile(0.9, sum by (job, le) (rate(lat_bucket[5m])))`,
		`sum by (job) (increase(reqs_total[10m] offset 5m))`,
		`sum by (job) (max_over_time(queue[2m]) * 2)`,
		`-sum by (job) (queue)`,
		`sum(queue @ 1200)`,
		`max_over_time(sum(queue)[10m:1m])`, // not sliced: inside a subquery
		`sum(queue + queue)`,                // not sliced: two selectors
	}
	notSliced := map[string]bool{queries[len(queries)-2]: true, queries[len(queries)-1]: true}
	for _, qs := range queries {
		for _, instant := range []bool{true, false} {
			t.Run(fmt.Sprintf("%s/instant=%v", qs, instant), func(t *testing.T) {
				want, got := env.compare(t, qs, instant, 1e-14, !notSliced[qs])
				require.Equal(t, want.Warnings.AsErrors(), got.Warnings.AsErrors())
			})
		}
	}
	require.Zero(t, counter(t, env.reg, "kiln_query_slice_fallbacks_total"))
}

// compare runs qs through the engine and the slicing engine, requires the
// same result (values within tolerance, relative) and that the query was
// sliced, or not, as expected.
func (env *testEnv) compare(t *testing.T, qs string, instant bool, tolerance float64, sliced bool) (want, got *promql.Result) {
	t.Helper()
	before := counter(t, env.reg, "kiln_query_sliced_total")
	want = env.run(t, env.plain, qs, instant)
	got = env.run(t, env.sliced, qs, instant)
	require.NoError(t, want.Err)
	require.NoError(t, got.Err)
	requireSameValue(t, want.Value, got.Value, tolerance)
	require.Equal(t, sliced, counter(t, env.reg, "kiln_query_sliced_total") > before, "sliced")
	return want, got
}

func requireSameValue(t *testing.T, want, got parser.Value, tolerance float64) {
	t.Helper()
	// Series order within a result is the engine's business; compare
	// keyed by labels. topk's ties would be the one exception (neither
	// occurs in the test data).
	byLabels := func(v parser.Value) map[string]promql.Series {
		out := map[string]promql.Series{}
		switch v := v.(type) {
		case promql.Matrix:
			for _, s := range v {
				out[s.Metric.String()] = s
			}
		case promql.Vector:
			for _, s := range v {
				out[s.Metric.String()] = promql.Series{Metric: s.Metric, Floats: []promql.FPoint{{T: s.T, F: s.F}}}
			}
		default:
			t.Fatalf("unexpected value type %T", v)
		}
		return out
	}
	w, g := byLabels(want), byLabels(got)
	require.NotEmpty(t, w)
	require.Len(t, g, len(w))
	for k, ws := range w {
		gs, ok := g[k]
		require.True(t, ok, "missing series %s", k)
		require.Len(t, gs.Floats, len(ws.Floats), k)
		for i := range ws.Floats {
			require.Equal(t, ws.Floats[i].T, gs.Floats[i].T, k)
			a, b := ws.Floats[i].F, gs.Floats[i].F
			// A sum's last bits depend on the order of its terms, which
			// already differs between two Selects of the engine itself.
			require.True(t, math.Float64bits(a) == math.Float64bits(b) || math.Abs(a-b) <= tolerance*math.Max(math.Abs(a), math.Abs(b)), "%s at %d: %v vs %v", k, ws.Floats[i].T, a, b)
		}
	}
}

// TestRollupExact: rate and increase computed without the engine are the
// engine's values to the bit (each group here holds one series, so no sum
// reorders terms).
func TestRollupExact(t *testing.T) {
	env := newTestEnv(t, 50_000_000)
	for _, qs := range []string{
		`sum by (instance) (rate(reqs_total[5m]))`,
		`sum by (instance) (increase(reqs_total[1m]))`,
		`avg by (instance) (rate(reqs_total[37s]))`,
		`sum by (instance) (rate(gappy_total[2m]))`,
		`sum without (le) (rate(lat_bucket{le="1"}[10m]))`,
		`sum by (instance) (queue)`,
		`avg by (instance, job) (gappy_total)`,
		`sum by (instance) (gappy_total)`,
	} {
		for _, instant := range []bool{true, false} {
			t.Run(fmt.Sprintf("%s/instant=%v", qs, instant), func(t *testing.T) {
				env.compare(t, qs, instant, 0, true)
			})
		}
	}
	// A query's own lookback delta.
	opts := promql.NewPrometheusQueryOpts(false, 40*time.Second)
	qs := `sum by (instance) (gappy_total)`
	want, err := env.plain.NewRangeQuery(context.Background(), env.db, opts, qs, env.start, env.end, env.interval)
	require.NoError(t, err)
	defer want.Close()
	got, err := env.sliced.NewRangeQuery(context.Background(), env.db, opts, qs, env.start, env.end, env.interval)
	require.NoError(t, err)
	defer got.Close()
	requireSameValue(t, want.Exec(context.Background()).Value, got.Exec(context.Background()).Value, 0)
}

// TestSliceErrors: a slice's failure is the query's, as the engine would
// have reported it.
func TestSliceErrors(t *testing.T) {
	env := newTestEnv(t, 1000)
	qs := `sum by (job) (rate(reqs_total[5m]))`
	want := env.run(t, env.plain, qs, false)
	got := env.run(t, env.sliced, qs, false)
	var tooMany promql.ErrTooManySamples
	require.ErrorAs(t, want.Err, &tooMany)
	require.ErrorAs(t, got.Err, &tooMany)
	require.Equal(t, want.Err.Error(), got.Err.Error())

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	q, err := env.sliced.NewRangeQuery(ctx, env.db, nil, qs, env.start, env.end, env.interval)
	require.NoError(t, err)
	defer q.Close()
	res := q.Exec(ctx)
	var canceled promql.ErrQueryCanceled
	require.True(t, errors.As(res.Err, &canceled) || errors.Is(res.Err, context.Canceled), "%v", res.Err)
}

// TestOuterErrorStands: when the outer query fails before it reads a
// slice, its own error is the query's, not the cancellation of the slices
// it leaves behind.
func TestOuterErrorStands(t *testing.T) {
	env := newTestEnv(t, 5000)
	qs := `count_over_time(reqs_total[1h]) > on() group_left() sum(max_over_time(queue[30m:15s]))`
	for range 5 {
		want := env.run(t, env.plain, qs, true)
		got := env.run(t, env.sliced, qs, true)
		require.Error(t, want.Err)
		require.Equal(t, want.Err.Error(), got.Err.Error())
	}
}

// TestAvgOverflowFallsBack: where sums overflow (to both infinities in
// different slices), the engine takes an incremental mean; the sliced avg
// gives the query back to it.
func TestAvgOverflowFallsBack(t *testing.T) {
	env := newTestEnv(t, 50_000_000)
	app := env.db.Appender(context.Background())
	for i := range 64 {
		v := 1e308
		if i%2 == 1 {
			v = -1e308
		}
		_, err := app.Append(0, labels.FromStrings("__name__", "big", "i", fmt.Sprint(i)), 59*60_000, v)
		require.NoError(t, err)
	}
	require.NoError(t, app.Commit())
	want := env.run(t, env.plain, `avg(big)`, true)
	got := env.run(t, env.sliced, `avg(big)`, true)
	require.NoError(t, got.Err)
	require.Equal(t, want.Value.String(), got.Value.String())
	require.Equal(t, 1.0, counter(t, env.reg, "kiln_query_slice_fallbacks_total"))
}

// TestSliceAnnotations: annotations of a slice point at the same place of
// the query text as the engine's, and are not repeated per slice.
func TestSliceAnnotations(t *testing.T) {
	env := newTestEnv(t, 50_000_000)
	qs := `sum by (job) (rate(queue[5m])) + on (job) sum by (job) (queue)`
	want := env.run(t, env.plain, qs, true)
	got := env.run(t, env.sliced, qs, true)
	require.NoError(t, got.Err)
	ww, wi := want.Warnings.AsStrings(qs, 0, 0)
	gw, gi := got.Warnings.AsStrings(qs, 0, 0)
	require.NotEmpty(t, wi)
	require.Equal(t, ww, gw)
	require.Equal(t, wi, gi)
	require.Contains(t, wi[0], "(1:20)")
}

// TestSliceFallback: a sum over native histograms cannot be combined here,
// so the query runs again unsliced; the metric is then not sliced again
// for ten minutes, while other aggregations of its queries are.
func TestSliceFallback(t *testing.T) {
	env := newTestEnv(t, 50_000_000)
	c := &clock{t: time.Unix(1e9, 0)}
	env.withClock(c)
	app := env.db.Appender(context.Background())
	for i := range 30 {
		ls := labels.FromStrings("__name__", "hist", "instance", fmt.Sprint(i))
		for k := range 240 {
			h := &histogram.Histogram{Count: uint64(k + i), Sum: float64(k), Schema: 0, ZeroThreshold: 0.001,
				PositiveSpans: []histogram.Span{{Offset: 0, Length: 1}}, PositiveBuckets: []int64{int64(k + i)}}
			_, err := app.AppendHistogram(0, ls, int64(k*15_000), h, nil)
			require.NoError(t, err)
		}
	}
	require.NoError(t, app.Commit())
	qs := `sum(rate(hist[5m]))`
	want := env.run(t, env.plain, qs, false)
	got := env.run(t, env.sliced, qs, false)
	require.NoError(t, got.Err)
	require.Equal(t, want.Value.String(), got.Value.String())
	require.Equal(t, 1.0, counter(t, env.reg, "kiln_query_slice_fallbacks_total"))

	env.run(t, env.sliced, qs, false)
	require.Equal(t, 1.0, counter(t, env.reg, "kiln_query_slice_fallbacks_total"))
	require.Zero(t, counter(t, env.reg, "kiln_query_sliced_total"))

	both := qs + ` and on () sum(queue)`
	want = env.run(t, env.plain, both, false)
	got = env.run(t, env.sliced, both, false)
	require.NoError(t, got.Err)
	require.Equal(t, want.Value.String(), got.Value.String())
	require.Equal(t, 1.0, counter(t, env.reg, "kiln_query_slice_fallbacks_total"))
	require.Equal(t, 1.0, counter(t, env.reg, "kiln_query_sliced_total"))

	c.advance(10 * time.Minute)
	got = env.run(t, env.sliced, qs, false)
	require.NoError(t, got.Err)
	require.Equal(t, 2.0, counter(t, env.reg, "kiln_query_slice_fallbacks_total"))
}

var _ storage.Queryable = (*shard.DB)(nil)

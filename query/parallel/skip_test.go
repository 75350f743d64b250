package parallel_test

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/kilnhq/kiln/query/parallel"
)

// clock is a settable Config.Now.
type clock struct{ t time.Time }

func (c *clock) now() time.Time          { return c.t }
func (c *clock) advance(d time.Duration) { c.t = c.t.Add(d) }

// withClock replaces env's slicing engine with one that reads c, and its
// registry with a new one.
func (env *testEnv) withClock(c *clock) {
	env.reg = prometheus.NewRegistry()
	env.sliced = parallel.New(parallel.Config{Slices: 3, MaxSamples: 50_000_000, Now: c.now}, env.plain, env.sub, testParser, env.reg, nil)
}

// counts returns how many queries were sliced and aggregations skipped.
func (env *testEnv) counts(t *testing.T) (sliced, skipped float64) {
	return counter(t, env.reg, "kiln_query_sliced_total"), counter(t, env.reg, "kiln_query_slicing_skipped_total")
}

// TestWideSlicedOnce: an aggregation with a group per series (600 series
// of lat_bucket, one per instance and le) is sliced once, then left to the
// engine, with the engine's result each time. Through each path of a
// slice: a rollup, the engine's argument summed here, and the engine's
// aggregation aggregated again.
func TestWideSlicedOnce(t *testing.T) {
	env := newTestEnv(t, 50_000_000)
	env.withClock(&clock{t: time.Unix(1e9, 0)})
	for i, agg := range []string{
		`sum by (instance, le) (lat_bucket)`,
		`avg by (instance, le) (max_over_time(lat_bucket[1m]))`,
		`max by (le, instance) (lat_bucket)`,
		`count without () (lat_bucket)`,
	} {
		t.Run(agg, func(t *testing.T) {
			env.compare(t, agg, false, 1e-14, true)
			// Learned: the same aggregation is not sliced again, in
			// this query or in another, instant or range.
			for _, instant := range []bool{false, true} {
				for _, qs := range []string{agg, `topk(5, ` + agg + `)`} {
					env.compare(t, qs, instant, 1e-14, false)
				}
			}
			_, skipped := env.counts(t)
			require.Equal(t, float64(4*(i+1)), skipped)
		})
	}
}

// TestNarrowKeepsSlicing: aggregations with few groups per series read
// are sliced every time, and a query's narrow aggregation stays sliced
// next to a wide one that is not.
func TestNarrowKeepsSlicing(t *testing.T) {
	env := newTestEnv(t, 50_000_000)
	env.withClock(&clock{t: time.Unix(1e9, 0)})
	for range 3 {
		env.compare(t, `sum by (job) (lat_bucket)`, false, 1e-14, true)
		env.compare(t, `max by (le) (lat_bucket)`, false, 1e-14, true)
		// 600 series into 200 groups.
		env.compare(t, `avg by (instance) (rate(lat_bucket[5m]))`, false, 1e-14, true)
	}
	_, skipped := env.counts(t)
	require.Zero(t, skipped)

	qs := `max by (instance, le) (lat_bucket) / on (le) group_left () sum by (le) (lat_bucket)`
	env.compare(t, qs, false, 1e-14, true)
	env.compare(t, qs, false, 1e-14, true) // the sum alone
	_, skipped = env.counts(t)
	require.Equal(t, 1.0, skipped)
}

// TestWideExpires: what the engine learned holds for ten minutes by its
// clock; the next query slices again, and learns again.
func TestWideExpires(t *testing.T) {
	env := newTestEnv(t, 50_000_000)
	c := &clock{t: time.Unix(1e9, 0)}
	env.withClock(c)
	qs := `sum by (instance, le) (rate(lat_bucket[5m]))`
	env.compare(t, qs, false, 1e-14, true)
	c.advance(9 * time.Minute)
	env.compare(t, qs, false, 1e-14, false)
	c.advance(time.Minute)
	env.compare(t, qs, false, 1e-14, true)
	env.compare(t, qs, false, 1e-14, false)
	sliced, skipped := env.counts(t)
	require.Equal(t, 2.0, sliced)
	require.Equal(t, 2.0, skipped)
}

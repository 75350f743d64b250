// Package parallel evaluates one PromQL query on several cores.
//
// The Prometheus engine evaluates a query on one goroutine, so a dashboard
// query over many series uses one core however many the node has. Most of
// such a query's time is an aggregation (sum, avg, count, ...) over a
// per-series expression (rate of a counter, a gauge): those give the same
// answer when each of N disjoint slices of the series is aggregated on its
// own and the slices' results are aggregated again. This package finds
// those aggregations, evaluates each slice as a query of its own on its own
// goroutine, and runs the rest of the query over the slices' results.
//
// Slices are sets of storage partitions (shard.WithQuerySlice): a series
// belongs to exactly one partition, so the slices never share a series, and
// both the local shard and the cluster fan-out narrow their reads to the
// slice's partitions.
//
// The rewrite keeps text positions: the outer query is the original text
// with each sliced aggregation's argument replaced by a synthetic selector
// padded with spaces, and each slice's query is the aggregation's text
// padded in front, so every annotation points into the original query.
// Anything not recognised is left to the engine as it is: a query with no
// sliceable aggregation, or whose rewrite does not print back to the
// original with the selector in place, runs unchanged. An avg whose mean
// cannot be taken exactly as the engine takes it (native histograms,
// non-finite values) makes the query run again unsliced, and its metric's
// sums and means are not sliced for a while. Nor is an aggregation whose
// slices returned about as many groups as they read series (avg by
// (instance) of one series per instance): the outer query would aggregate
// all of them again, which costs more than slicing saves.
package parallel

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	"github.com/prometheus/common/promslog"
	"github.com/prometheus/prometheus/promql"
	"github.com/prometheus/prometheus/promql/parser"
	"github.com/prometheus/prometheus/storage"
	"github.com/prometheus/prometheus/util/stats"

	"github.com/kilnhq/kiln/shard"
)

// Config configures an Engine.
type Config struct {
	// Slices is how many slices a sliceable aggregation is evaluated in,
	// concurrently; 1 or less turns slicing off. GOMAXPROCS is the natural
	// choice: more slices than cores only add per-slice overhead.
	Slices int
	// MaxSamples is the sample limit of one slice (the sub engine's),
	// which a slice evaluated without the engine (rollup) enforces itself.
	MaxSamples int
	// NoRollups evaluates every slice through the engine.
	NoRollups bool
	// LookbackDelta is the engine's default lookback delta, which a
	// rollup of a plain selector uses unless the query sets its own.
	LookbackDelta time.Duration
	// Now is the clock by which what the engine learned not to slice
	// expires; time.Now when nil.
	Now func() time.Time
}

// Engine is a promql.QueryEngine that slices what it can and hands the rest
// to the outer engine.
type Engine struct {
	cfg    Config
	outer  promql.QueryEngine
	sub    promql.QueryEngine
	parser parser.Parser
	logger *slog.Logger

	sliced    prometheus.Counter
	fallbacks prometheus.Counter
	skipped   prometheus.Counter

	// memo keeps the next queries from paying again for a slicing that
	// fell back or did not reduce the data.
	memo *memo
}

// New returns an Engine. outer evaluates whole queries, and is where the
// concurrency limit belongs; sub evaluates the slices of a query that
// outer already admitted, so it must not wait for a slot of the same limit
// (that could deadlock with every slot held by a query waiting for its
// slices). Both must share p's parser options.
func New(cfg Config, outer, sub promql.QueryEngine, p parser.Parser, reg prometheus.Registerer, logger *slog.Logger) *Engine {
	if logger == nil {
		logger = promslog.NewNopLogger()
	}
	f := promauto.With(reg)
	cfg.Slices = min(cfg.Slices, shard.NumPartitions) // more would be empty
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Engine{
		cfg: cfg, outer: outer, sub: sub, parser: p, logger: logger,
		memo: &memo{now: cfg.Now, expires: map[memoKey]time.Time{}},
		sliced: f.NewCounter(prometheus.CounterOpts{
			Name: "kiln_query_sliced_total",
			Help: "Queries whose aggregations were evaluated in concurrent slices of the partitions.",
		}),
		fallbacks: f.NewCounter(prometheus.CounterOpts{
			Name: "kiln_query_slice_fallbacks_total",
			Help: "Sliced queries evaluated again unsliced because a slice result could not be combined exactly (native histograms or non-finite values in avg).",
		}),
		// Named to sort after kiln_query_sliced_total, where tests
		// gathering the registry expect the two above first.
		skipped: f.NewCounter(prometheus.CounterOpts{
			Name: "kiln_query_slicing_skipped_total",
			Help: "Sliceable aggregations evaluated unsliced because slicing them recently returned about as many groups as input series.",
		}),
	}
}

// NewInstantQuery implements promql.QueryEngine.
func (e *Engine) NewInstantQuery(ctx context.Context, q storage.Queryable, opts promql.QueryOpts, qs string, ts time.Time) (promql.Query, error) {
	whole := func() (promql.Query, error) { return e.outer.NewInstantQuery(ctx, q, opts, qs, ts) }
	pl := e.plan(qs, opts)
	if pl == nil {
		return whole()
	}
	r := &run{e: e, pl: pl, q: q, opts: opts, start: ts, end: ts}
	oq, err := e.outer.NewInstantQuery(ctx, r, opts, pl.outer, ts)
	if err != nil {
		return whole()
	}
	return &query{cur: oq, orig: qs, run: r, whole: whole}, nil
}

// NewRangeQuery implements promql.QueryEngine.
func (e *Engine) NewRangeQuery(ctx context.Context, q storage.Queryable, opts promql.QueryOpts, qs string, start, end time.Time, interval time.Duration) (promql.Query, error) {
	whole := func() (promql.Query, error) { return e.outer.NewRangeQuery(ctx, q, opts, qs, start, end, interval) }
	pl := e.plan(qs, opts)
	if pl == nil {
		return whole()
	}
	r := &run{e: e, pl: pl, q: q, opts: opts, start: start, end: end, step: interval}
	oq, err := e.outer.NewRangeQuery(ctx, r, opts, pl.outer, start, end, interval)
	if err != nil {
		return whole()
	}
	return &query{cur: oq, orig: qs, run: r, whole: whole}, nil
}

func (e *Engine) plan(qs string, opts promql.QueryOpts) *plan {
	if e.cfg.Slices <= 1 || (opts != nil && opts.EnablePerStepStats()) {
		return nil
	}
	return newPlan(e.parser, qs, func(s *sliced) bool {
		if s.combine == inGo && e.memo.has(memoKey{fellBack, s.metric}) {
			return false
		}
		if e.memo.has(memoKey{wide, s.text}) {
			e.skipped.Inc()
			return false
		}
		return true
	})
}

// remember marks the metrics of a run's inGo aggregations as not to be
// sliced again for a while.
func (e *Engine) remember(pl *plan) {
	for _, s := range pl.sliced {
		if s.combine == inGo {
			e.memo.add(memoKey{fellBack, s.metric})
		}
	}
}

// errFallback is recorded by a slice whose result cannot be combined
// exactly; the query then runs unsliced.
var errFallback = errors.New("slice result cannot be combined exactly")

// query is a sliced query: the outer query, or the whole query once a
// slice asked for the fallback.
type query struct {
	mu    sync.Mutex // guards cur, which Exec replaces on a fallback
	cur   promql.Query
	orig  string
	run   *run
	whole func() (promql.Query, error)
	stats bool // the slices' samples were added to cur's stats
}

func (q *query) current() promql.Query {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.cur
}

func (q *query) Exec(ctx context.Context) *promql.Result {
	res := q.current().Exec(ctx)
	fallback := q.run.finish()
	if fallback {
		q.run.e.fallbacks.Inc()
		q.run.e.remember(q.run.pl)
		wq, werr := q.whole()
		if werr != nil {
			return &promql.Result{Err: werr}
		}
		q.mu.Lock()
		q.cur.Close()
		q.cur = wq
		q.mu.Unlock()
		return wq.Exec(ctx)
	}
	if res.Err != nil && q.run.readErr != nil {
		// The outer query failed reading a slice that had failed:
		// report the slice's error as it is (a timeout, too many
		// samples, a storage error), not as the outer engine wrapped
		// it. A slice cancelled because the outer query failed first
		// was never read, so the outer error stands.
		res.Err = q.run.readErr
	}
	q.run.e.sliced.Inc()
	if res.Err == nil {
		q.run.learn()
	}
	return res
}

func (q *query) Close()                      { q.current().Close() }
func (q *query) Statement() parser.Statement { return q.current().Statement() }
func (q *query) Cancel()                     { q.current().Cancel() }
func (q *query) String() string              { return q.orig }

// Stats adds the slices' samples to the outer query's, once; a query that
// fell back reports the unsliced run's alone.
func (q *query) Stats() *stats.Statistics {
	q.mu.Lock()
	defer q.mu.Unlock()
	st := q.cur.Stats()
	if st != nil && st.Samples != nil && q.run.done && !q.run.fellBack && !q.stats {
		q.stats = true
		st.Samples.TotalSamples += q.run.samples
		// The slices run at once: their peaks add up.
		st.Samples.PeakSamples += q.run.peak
	}
	return st
}

// run is one execution of a plan: the Queryable the outer query reads, which
// starts a sliced aggregation's slices when the outer engine selects its
// synthetic metric and passes every other selector to the real storage.
type run struct {
	e          *Engine
	pl         *plan
	q          storage.Queryable
	opts       promql.QueryOpts
	start, end time.Time
	step       time.Duration

	mu       sync.Mutex
	started  []*sliceRun // by pl.sliced index
	done     bool
	fellBack bool
	samples  int64
	peak     int
	readErr  error // the first error of a slice the outer query read
}

// lookback is the query's lookback delta.
func (r *run) lookback() time.Duration {
	if r.opts != nil && r.opts.LookbackDelta() > 0 {
		return r.opts.LookbackDelta()
	}
	if r.e.cfg.LookbackDelta > 0 {
		return r.e.cfg.LookbackDelta
	}
	return 5 * time.Minute // the engine's default
}

// finish cancels what still runs of the slices (the outer query is done
// with them), waits for them, closes their queries and reports whether
// one asked for the fallback.
func (r *run) finish() (fallback bool) {
	r.mu.Lock()
	started := r.started
	r.mu.Unlock()
	for _, s := range started {
		if s == nil {
			continue
		}
		s.cancel()
		s.wg.Wait()
		fallback = fallback || errors.Is(s.err, errFallback)
		for _, sr := range s.results {
			fallback = fallback || errors.Is(sr.err, errFallback)
			r.samples += sr.samples
			if sr.stats != nil && sr.stats.Samples != nil {
				r.samples += sr.stats.Samples.TotalSamples
				r.peak += sr.stats.Samples.PeakSamples
			}
		}
		s.close()
	}
	r.done, r.fellBack = true, fallback
	return fallback
}

// learn remembers the run's aggregations whose slices did not reduce the
// data. The query that finds out has paid for the slicing already; the
// next ones with the aggregation run it unsliced.
func (r *run) learn() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i, s := range r.started {
		if s != nil && s.loaded && isWide(s.in.Load(), s.out) {
			r.e.memo.add(memoKey{wide, strings.Clone(r.pl.sliced[i].text)})
		}
	}
}

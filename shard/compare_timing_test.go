package shard_test

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql"
	"github.com/prometheus/prometheus/promql/parser"
	"github.com/prometheus/prometheus/storage"
	"github.com/prometheus/prometheus/tsdb"
	"github.com/stretchr/testify/require"

	"github.com/kilnhq/kiln/query/parallel"
	"github.com/kilnhq/kiln/shard"
)

// Benchmarks of shard side by side with the Prometheus tsdb used as a
// library, on the same generated data, so the ratio Kiln / Prometheus is
// read from one run. Kiln fsyncs every commit; Prometheus's WAL does not.

const (
	benchSeries = 10000
	benchBatch  = 2000
	benchStep   = 15000 // ms
)

// genSeries makes loadgen-like series: counters, gauges and histogram
// buckets with job/instance/pod/method/status labels.
func genSeries(n int) []labels.Labels {
	out := make([]labels.Labels, 0, n)
	for i := 0; len(out) < n; i++ {
		inst := fmt.Sprintf("10.0.%d.%d:9100", i/250, i%250)
		pod := fmt.Sprintf("api-%d", i%97)
		out = append(out,
			labels.FromStrings("__name__", "http_requests_total", "job", "api", "instance", inst, "pod", pod, "method", []string{"GET", "POST"}[i%2], "status", []string{"200", "500"}[i%7/6]),
			labels.FromStrings("__name__", "process_resident_memory_bytes", "job", "api", "instance", inst, "pod", pod),
		)
		for _, le := range []string{"0.1", "0.5", "1", "+Inf"} {
			out = append(out, labels.FromStrings("__name__", "http_request_duration_seconds_bucket", "job", "api", "instance", inst, "pod", pod, "le", le))
		}
	}
	return out[:n]
}

// value is a realistic sample: counters grow by small integers, gauges wander.
func value(i, round int) float64 {
	if i%6 == 1 {
		return float64(200e6 + (i*7919+round*31)%1000000)
	}
	return float64(round * (1 + i%5))
}

type appendable interface {
	Appender(ctx context.Context) storage.Appender
}

func ingestRound(tb testing.TB, db appendable, ss []labels.Labels, refs []storage.SeriesRef, round int, t0 int64) {
	ts := t0 + int64(round)*benchStep
	for start := 0; start < len(ss); start += benchBatch {
		app := db.Appender(context.Background())
		for i := start; i < min(start+benchBatch, len(ss)); i++ {
			ref, err := app.Append(refs[i], ss[i], ts, value(i, round))
			if err != nil {
				tb.Fatal(err)
			}
			refs[i] = ref
		}
		if err := app.Commit(); err != nil {
			tb.Fatal(err)
		}
	}
}

type closer interface {
	appendable
	Close() error
}

func openImpl(tb testing.TB, impl, dir string) closer {
	switch impl {
	case "kiln", "kiln-sliced":
		db, err := shard.Open(shard.Config{Path: dir}, prometheus.NewRegistry(), nil)
		require.NoError(tb, err)
		return db
	case "kiln-sync-1s":
		db, err := shard.Open(shard.Config{Path: dir, SyncInterval: time.Second}, prometheus.NewRegistry(), nil)
		require.NoError(tb, err)
		return db
	default:
		db, err := tsdb.Open(dir, nil, prometheus.NewRegistry(), tsdb.DefaultOptions(), nil)
		require.NoError(tb, err)
		return db
	}
}

// BenchmarkIngest appends rounds of one sample per series in 2000-sample
// commits: one op is one round, benchSeries samples.
func BenchmarkIngest(b *testing.B) { benchIngest(b, benchSeries) }

// BenchmarkIngest100k is BenchmarkIngest over 100k series, loadgen's count:
// the series' memory no longer fits the caches, so a sample's cache misses
// weigh more. One op is 100k samples.
func BenchmarkIngest100k(b *testing.B) { benchIngest(b, 100000) }

func benchIngest(b *testing.B, series int) {
	ss := genSeries(series)
	for _, impl := range []string{"kiln", "kiln-sync-1s", "prometheus"} {
		b.Run(impl, func(b *testing.B) {
			db := openImpl(b, impl, b.TempDir())
			defer func() { _ = db.Close() }()
			refs := make([]storage.SeriesRef, len(ss))
			t0 := time.Now().Add(-24 * time.Hour).UnixMilli()
			ingestRound(b, db, ss, refs, 0, t0) // create series outside the timer
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				ingestRound(b, db, ss, refs, i+1, t0)
			}
			// Close, deferred above, is shutdown, not ingest: Kiln's
			// persists every open chunk there.
			b.StopTimer()
		})
	}
}

// BenchmarkBytesPerSample writes 1 h at 15 s (240 samples per series),
// persists it (Kiln: close, which flushes and GCs; Prometheus: compact the
// head into a block) and reports bytes on disk per sample.
func BenchmarkBytesPerSample(b *testing.B) { benchBytesPerSample(b, benchSeries) }

// BenchmarkBytesPerSample100k is BenchmarkBytesPerSample at loadgen's 100k
// series (24M samples), where fixed-size files weigh less: badger's 1 MiB
// DISCARD file alone is 0.44 bytes per sample of the 10k-series run.
func BenchmarkBytesPerSample100k(b *testing.B) { benchBytesPerSample(b, 100000) }

func benchBytesPerSample(b *testing.B, series int) {
	ss := genSeries(series)
	const rounds = 240
	for _, impl := range []string{"kiln", "prometheus"} {
		b.Run(impl, func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				dir := b.TempDir()
				db := openImpl(b, impl, dir)
				refs := make([]storage.SeriesRef, len(ss))
				t0 := time.Now().Add(-2 * time.Hour).UnixMilli()
				for r := 0; r < rounds; r++ {
					ingestRound(b, db, ss, refs, r, t0)
				}
				skip := ""
				if pdb, ok := db.(*tsdb.DB); ok {
					require.NoError(b, pdb.CompactHead(tsdb.NewRangeHead(pdb.Head(), t0, t0+rounds*benchStep)))
					skip = "wal" // the block holds the data; the WAL is transient
				}
				require.NoError(b, db.Close())
				b.ReportMetric(float64(dirSize(b, dir, skip))/float64(rounds*len(ss)), "bytes/sample")
				if impl == "kiln" {
					// Chunks and series live in the LSM tables; the value log
					// holds deleted write-ahead values that badger reclaims
					// only after compactions have recorded them as garbage,
					// which a short run never reaches.
					b.ReportMetric(float64(globSize(b, filepath.Join(dir, "*.sst")))/float64(rounds*len(ss)), "lsm-bytes/sample")
				}
			}
		})
	}
}

func dirSize(tb testing.TB, dir, skip string) int64 {
	var n int64
	require.NoError(tb, filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if skip != "" && (rel == skip || strings.HasPrefix(rel, skip+"/") || strings.HasPrefix(rel, "chunks_head")) {
			return nil
		}
		if !d.IsDir() {
			info, err := d.Info()
			if err != nil {
				return err
			}
			n += info.Size()
		}
		return nil
	}))
	return n
}

func globSize(tb testing.TB, pattern string) int64 {
	files, err := filepath.Glob(pattern)
	require.NoError(tb, err)
	var n int64
	for _, f := range files {
		info, err := os.Stat(f)
		require.NoError(tb, err)
		n += info.Size()
	}
	return n
}

// dashboardQueries are querybench's default dashboard set
// (shared/bench/querybench), with metric and label names mapped onto
// genSeries: job is always "api", pod/method/status select subsets.
var dashboardQueries = []struct {
	name, expr string
	rng        bool
}{
	{"q01_instant", `sum by (job) (rate(http_requests_total[5m]))`, false},
	{"q02_instant", `sum by (job) (rate(http_requests_total{status="500"}[5m])) / sum by (job) (rate(http_requests_total[5m]))`, false},
	{"q03_instant", `histogram_quantile(0.99, sum by (job, le) (rate(http_request_duration_seconds_bucket[5m])))`, false},
	{"q04_instant", `topk(10, sum by (pod) (rate(http_requests_total{method!="GET"}[5m])))`, false},
	{"q05_instant", `count by (job) (process_resident_memory_bytes)`, false},
	{"q06_instant", `rate(http_requests_total{pod="api-7",method="GET",status="200"}[5m])`, false},
	{"q07_range", `sum by (job) (rate(http_requests_total[5m]))`, true},
	{"q08_range", `histogram_quantile(0.95, sum by (le, pod) (rate(http_request_duration_seconds_bucket{pod=~"api-1[0-9]"}[5m])))`, true},
	{"q09_range", `sum by (pod) (process_resident_memory_bytes)`, true},
	{"q10_range", `topk(5, avg by (instance) (process_resident_memory_bytes))`, true},
	{"q11_range", `sum(rate(http_requests_total[5m]))`, true},
	{"q12_range", `avg_over_time(process_resident_memory_bytes{pod="api-7"}[5m])`, true},
}

// BenchmarkDashboard loads 1 h at 15 s of benchSeries series into each
// implementation once, outside the timer, then runs querybench's dashboard
// set: instant queries at the last sample and 1 h range queries at a 15 s
// step. Both sides serve the hour from their in-memory head, as a live
// node does for a dashboard's last hour: Kiln keeps HeadWindow (3 h) in
// memory and Prometheus keeps 2-3 h in its head, so the Prometheus head is
// queried, not a compacted block. One op is one query evaluation.
// kiln-sliced is Kiln's query path: the same engine under query/parallel,
// evaluating aggregations in GOMAXPROCS slices.
func BenchmarkDashboard(b *testing.B) {
	ss := genSeries(benchSeries)
	const rounds = 240
	t0 := time.Now().Add(-2 * time.Hour).Truncate(time.Minute).UnixMilli()
	end := time.UnixMilli(t0 + (rounds-1)*benchStep)
	engine := promql.NewEngine(promql.EngineOpts{
		MaxSamples:    50e6,
		Timeout:       time.Minute,
		LookbackDelta: 5 * time.Minute,
	})
	defer func() { _ = engine.Close() }()
	sub := promql.NewEngine(promql.EngineOpts{MaxSamples: 50e6, Timeout: time.Minute, LookbackDelta: 5 * time.Minute})
	defer func() { _ = sub.Close() }()
	for _, impl := range []string{"kiln", "kiln-sliced", "prometheus"} {
		b.Run(impl, func(b *testing.B) {
			var qe promql.QueryEngine = engine
			if impl == "kiln-sliced" {
				qe = parallel.New(parallel.Config{Slices: runtime.GOMAXPROCS(0), MaxSamples: 50e6}, engine, sub, parser.NewParser(parser.Options{}), nil, nil)
			}
			// This function runs once per benchmark run, so the load is
			// shared by every query below and never timed.
			db := openImpl(b, impl, b.TempDir())
			defer func() { _ = db.Close() }()
			refs := make([]storage.SeriesRef, len(ss))
			for r := 0; r < rounds; r++ {
				ingestRound(b, db, ss, refs, r, t0)
			}
			qa := db.(storage.Queryable)
			for _, dq := range dashboardQueries {
				b.Run(dq.name, func(b *testing.B) {
					ctx := context.Background()
					b.ReportAllocs()
					for b.Loop() {
						var (
							q   promql.Query
							err error
						)
						if dq.rng {
							q, err = qe.NewRangeQuery(ctx, qa, nil, dq.expr, end.Add(-time.Hour), end, 15*time.Second)
						} else {
							q, err = qe.NewInstantQuery(ctx, qa, nil, dq.expr, end)
						}
						if err != nil {
							b.Fatal(err)
						}
						res := q.Exec(ctx)
						if res.Err != nil {
							b.Fatal(res.Err)
						}
						q.Close()
					}
				})
			}
		})
	}
}

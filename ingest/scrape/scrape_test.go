package scrape

import (
	"context"
	"fmt"
	"math"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/model"
	"github.com/prometheus/common/promslog"
	promconfig "github.com/prometheus/prometheus/config"
	"github.com/prometheus/prometheus/discovery"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/value"
	"github.com/prometheus/prometheus/storage"
	"github.com/prometheus/prometheus/util/teststorage"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const exposition = `# HELP kiln_test_widgets Widgets made.
# TYPE kiln_test_widgets counter
kiln_test_widgets_total{colour="blue"} 42
`

// target serves a fixed exposition on 127.0.0.1 and returns its host:port.
func target(t *testing.T) string {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		_, _ = fmt.Fprint(w, exposition)
	}))
	t.Cleanup(srv.Close)
	u, err := url.Parse(srv.URL)
	require.NoError(t, err)
	return u.Host
}

// promConfig scrapes each job's single target every 50ms; the scrape
// manager requires timeout <= interval.
func promConfig(t *testing.T, jobs map[string]string) *promconfig.Config {
	text := "global:\n  scrape_interval: 50ms\n  scrape_timeout: 50ms\nscrape_configs:\n"
	for job, addr := range jobs {
		text += fmt.Sprintf("  - job_name: %s\n    static_configs:\n      - targets: [%q]\n", job, addr)
	}
	cfg, err := promconfig.Load(text, promslog.NewNopLogger())
	require.NoError(t, err)
	return cfg
}

// latest returns the newest non-stale value of the series matching ms.
func latest(t *testing.T, q storage.Queryable, ms ...*labels.Matcher) (float64, bool) {
	querier, err := q.Querier(math.MinInt64, math.MaxInt64)
	require.NoError(t, err)
	defer func() { require.NoError(t, querier.Close()) }()
	ss := querier.Select(context.Background(), false, nil, ms...)
	var (
		v     float64
		found bool
	)
	for ss.Next() {
		it := ss.At().Iterator(nil)
		for it.Next() != 0 {
			if _, f := it.At(); !value.IsStaleNaN(f) {
				v, found = f, true
			}
		}
		require.NoError(t, it.Err())
	}
	require.NoError(t, ss.Err())
	return v, found
}

// start runs s in the background and stops it, waiting, at cleanup.
func start(t *testing.T, s *Scraper) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { require.NoError(t, s.Run(ctx)) })
	t.Cleanup(func() {
		cancel()
		wg.Wait()
	})
}

func TestScrapeIntoStorage(t *testing.T) {
	db := teststorage.New(t)
	addr := target(t)
	reg := prometheus.NewRegistry()
	s, err := New(Config{Prom: promConfig(t, map[string]string{"widgets": addr}), ReloadInterval: 50 * time.Millisecond}, db, reg, nil)
	require.NoError(t, err)
	start(t, s)

	up := func(job string) func() bool {
		return func() bool {
			v, ok := latest(t, db,
				labels.MustNewMatcher(labels.MatchEqual, model.MetricNameLabel, "up"),
				labels.MustNewMatcher(labels.MatchEqual, "job", job))
			return ok && v == 1
		}
	}
	require.Eventually(t, up("widgets"), 10*time.Second, 20*time.Millisecond)

	v, ok := latest(t, db,
		labels.MustNewMatcher(labels.MatchEqual, model.MetricNameLabel, "kiln_test_widgets_total"),
		labels.MustNewMatcher(labels.MatchEqual, "colour", "blue"),
		labels.MustNewMatcher(labels.MatchEqual, "job", "widgets"),
		labels.MustNewMatcher(labels.MatchEqual, "instance", addr))
	require.True(t, ok)
	require.Equal(t, 42.0, v)

	active := s.TargetsActive()
	require.Len(t, active["widgets"], 1)

	// A reload adds a job without a restart.
	require.NoError(t, s.ApplyConfig(promConfig(t, map[string]string{"widgets": addr, "more": target(t)})))
	require.Eventually(t, up("more"), 10*time.Second, 20*time.Millisecond)

	// The scrape manager's own metrics land on the registry given to New.
	mfs, err := reg.Gather()
	require.NoError(t, err)
	names := map[string]bool{}
	for _, mf := range mfs {
		names[mf.GetName()] = true
	}
	require.True(t, names["prometheus_target_scrape_pools_total"], "registered: %v", names)
}

func TestNothingToScrape(t *testing.T) {
	cfg, err := promconfig.Load("global:\n  scrape_interval: 50ms\n", promslog.NewNopLogger())
	require.NoError(t, err)
	db := teststorage.New(t)
	s, err := New(Config{Prom: cfg, ReloadInterval: 50 * time.Millisecond}, db, prometheus.NewRegistry(), nil)
	require.NoError(t, err)
	start(t, s)
	require.Empty(t, s.TargetsActive())
}

func TestLifecycle(t *testing.T) {
	db := teststorage.New(t)
	cfg := promConfig(t, map[string]string{"widgets": "127.0.0.1:1"})

	_, err := New(Config{}, db, prometheus.NewRegistry(), nil)
	require.ErrorContains(t, err, "Config.Prom is nil")
	_, err = New(Config{Prom: cfg}, nil, prometheus.NewRegistry(), nil)
	require.ErrorContains(t, err, "nil storage")
	// A config that did not go through Load is refused up front.
	_, err = New(Config{Prom: &promconfig.Config{}}, db, prometheus.NewRegistry(), nil)
	require.Error(t, err)

	// SD metrics created by the caller are shared rather than registered
	// again. The managers' own metrics still allow one Scraper per registry.
	reg := prometheus.NewRegistry()
	sdMetrics, err := discovery.CreateAndRegisterSDMetrics(reg)
	require.NoError(t, err)
	s, err := New(Config{Prom: cfg, SDMetrics: sdMetrics}, db, reg, nil)
	require.NoError(t, err)
	_, err = New(Config{Prom: cfg, SDMetrics: sdMetrics}, db, reg, nil)
	require.ErrorContains(t, err, "cannot create discovery manager")
	_, err = New(Config{Prom: cfg}, db, reg, nil)
	require.ErrorContains(t, err, "register service discovery metrics")

	// ApplyConfig before Run only records the config.
	require.NoError(t, s.ApplyConfig(cfg))
	require.Error(t, s.ApplyConfig(nil))

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	require.NoError(t, s.Run(ctx))
	require.ErrorIs(t, s.Run(context.Background()), ErrStopped)
	require.ErrorIs(t, s.ApplyConfig(cfg), ErrStopped)
}

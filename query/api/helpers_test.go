package api

import (
	"context"
	"io"
	"math"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	promapi "github.com/prometheus/client_golang/api"
	promv1 "github.com/prometheus/client_golang/api/prometheus/v1"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/exemplar"
	"github.com/prometheus/prometheus/model/histogram"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/metadata"
	"github.com/prometheus/prometheus/model/value"
	"github.com/prometheus/prometheus/storage"
	"github.com/prometheus/prometheus/util/annotations"
	"github.com/stretchr/testify/require"
	"github.com/valyala/fasthttp"
)

// The fixture: 21 samples per series, every 15s from t=0 to t=300s. The
// API's clock is pinned to fixtureNow so /federate sees the whole window.
const (
	fixtureStep    = 15 * time.Second
	fixtureSamples = 21
	fixtureEndSec  = 300
)

var fixtureNow = time.Unix(fixtureEndSec, 0)

// fixtureHistogram is test_histogram at sample i: a zero bucket of i+1 and
// buckets (0.5,1] = 2(i+1) and (1,2] = i+1.
func fixtureHistogram(i int) *histogram.Histogram {
	n := float64(i + 1)
	return &histogram.Histogram{
		Schema:          0,
		Count:           uint64(4 * n),
		Sum:             10 * n,
		ZeroThreshold:   0.001,
		ZeroCount:       uint64(n),
		PositiveSpans:   []histogram.Span{{Offset: 0, Length: 2}},
		PositiveBuckets: []int64{int64(2 * n), -int64(n)}, // delta encoded: 2n, n
	}
}

// fixtureNHCB is a custom-buckets histogram: le=1 -> 1, (1,2] -> 2.
func fixtureNHCB() *histogram.Histogram {
	return &histogram.Histogram{
		Schema:          histogram.CustomBucketsSchema,
		Count:           3,
		Sum:             5,
		PositiveSpans:   []histogram.Span{{Offset: 0, Length: 2}},
		PositiveBuckets: []int64{1, 1},
		CustomValues:    []float64{1, 2},
	}
}

// loadFixture writes the test data set through the storage's Appender, so
// it works for any storage.Storage.
func loadFixture(t testing.TB, s storage.Storage) {
	t.Helper()
	app := s.Appender(context.Background())
	for i := range fixtureSamples {
		ts := int64(i) * fixtureStep.Milliseconds()
		add := func(l labels.Labels, v float64) storage.SeriesRef {
			ref, err := app.Append(0, l, ts, v)
			require.NoError(t, err)
			return ref
		}
		add(labels.FromStrings("__name__", "up", "job", "api", "instance", "a"), 1)
		add(labels.FromStrings("__name__", "up", "job", "api", "instance", "b"), 0)
		okLabels := labels.FromStrings("__name__", "http_requests_total", "job", "api", "code", "200")
		ref := add(okLabels, float64(10*i))
		if i == 4 {
			_, err := app.AppendExemplar(ref, okLabels, exemplar.Exemplar{
				Labels: labels.FromStrings("trace_id", "abc"), Value: 5, Ts: ts, HasTs: true,
			})
			require.NoError(t, err)
		}
		add(labels.FromStrings("__name__", "http_requests_total", "job", "api", "code", "500"), float64(i))
		add(labels.FromStrings("__name__", "foo.bar", "service.name", "checkout"), 42)
		switch {
		case i <= 10:
			add(labels.FromStrings("__name__", "stale_metric", "job", "stale"), 1)
		case i == 11:
			add(labels.FromStrings("__name__", "stale_metric", "job", "stale"), math.Float64frombits(value.StaleNaN))
		}
		_, err := app.AppendHistogram(0, labels.FromStrings("__name__", "test_histogram", "job", "api"), ts, fixtureHistogram(i), nil)
		require.NoError(t, err)
		_, err = app.AppendHistogram(0, labels.FromStrings("__name__", "nhcb_metric", "job", "api"), ts, fixtureNHCB(), nil)
		require.NoError(t, err)
	}
	require.NoError(t, app.Commit())
}

// testEnv is an API served by a real fasthttp server on a loopback port.
type testEnv struct {
	api     *API
	reg     *prometheus.Registry
	url     string
	http    *http.Client
	prom    promv1.API
	ready   *atomic.Bool
	nextHit *atomic.Int64 // requests that fell through to next
}

type envOption func(*Config, *Deps)

// newTestAPI serves the API over s. It is the seam for running the suite
// over other storages: anything that is a storage.Storage works.
func newTestAPI(t testing.TB, s storage.Storage, opts ...envOption) *testEnv {
	t.Helper()
	env := &testEnv{ready: &atomic.Bool{}, nextHit: &atomic.Int64{}, reg: prometheus.NewRegistry()}
	env.ready.Store(true)

	cfg := DefaultConfig()
	deps := Deps{
		Queryable: s,
		Metadata:  fakeMetadata{},
		Stats:     fakeStats{},
		Gatherer:  env.reg,
		Ready:     env.ready.Load,
		BuildInfo: BuildInfo{
			Version: "0.1.0", Revision: "abc123", Branch: "main",
			BuildUser: "kiln@ci", BuildDate: "20250101-00:00:00", GoVersion: "go1.26.8",
		},
		Flags:            map[string]string{"query.timeout": "2m", "query.max-samples": "50000000"},
		ConfigYAML:       func() string { return "global:\n  scrape_interval: 15s\n" },
		StorageRetention: "15d",
		StartTime:        time.Unix(1000, 0).UTC(),
	}
	if eq, ok := s.(storage.ExemplarQueryable); ok {
		deps.Exemplars = eq
	}
	for _, o := range opts {
		o(&cfg, &deps)
	}

	a, err := New(cfg, deps, env.reg, nil)
	require.NoError(t, err)
	a.now = func() time.Time { return fixtureNow }
	env.api = a

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	srv := &fasthttp.Server{
		Handler: a.Handler(func(ctx *fasthttp.RequestCtx) {
			env.nextHit.Add(1)
			ctx.Error("next handler", fasthttp.StatusNotFound)
		}),
		ReadTimeout:  30 * time.Second,
		WriteTimeout: 30 * time.Second,
		// The worker pool's cleaner only notices Shutdown when it wakes;
		// the 10s default would outlive the leak check.
		MaxIdleWorkerDuration: 100 * time.Millisecond,
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()

	transport := &http.Transport{}
	env.http = &http.Client{Transport: transport, Timeout: 30 * time.Second}
	env.url = "http://" + ln.Addr().String()
	client, err := promapi.NewClient(promapi.Config{Address: env.url, Client: env.http})
	require.NoError(t, err)
	env.prom = promv1.NewAPI(client)

	t.Cleanup(func() {
		transport.CloseIdleConnections()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		require.NoError(t, srv.ShutdownWithContext(ctx))
		require.NoError(t, <-served)
		require.NoError(t, a.Close())
	})
	return env
}

// get performs a raw GET and returns status, content type and body.
func (e *testEnv) get(t testing.TB, pathAndQuery string) (int, string, string) {
	t.Helper()
	resp, err := e.http.Get(e.url + pathAndQuery)
	require.NoError(t, err)
	return readResponse(t, resp)
}

// postForm performs a raw form POST.
func (e *testEnv) postForm(t testing.TB, path string, form url.Values) (int, string, string) {
	t.Helper()
	resp, err := e.http.Post(e.url+path, "application/x-www-form-urlencoded", strings.NewReader(form.Encode()))
	require.NoError(t, err)
	return readResponse(t, resp)
}

func (e *testEnv) do(t testing.TB, method, path string, header http.Header) (int, http.Header, string) {
	t.Helper()
	req, err := http.NewRequest(method, e.url+path, nil)
	require.NoError(t, err)
	for k, vs := range header {
		req.Header[k] = vs
	}
	resp, err := e.http.Do(req)
	require.NoError(t, err)
	defer func() { _ = resp.Body.Close() }()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, resp.Header, string(body)
}

func readResponse(t testing.TB, resp *http.Response) (int, string, string) {
	t.Helper()
	defer func() { _ = resp.Body.Close() }()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, resp.Header.Get("Content-Type"), string(body)
}

// requireJSON asserts an exact body (byte for byte) and a JSON content type.
func (e *testEnv) requireJSON(t testing.TB, pathAndQuery string, wantStatus int, wantBody string) {
	t.Helper()
	status, ctype, body := e.get(t, pathAndQuery)
	require.Equal(t, wantBody, body, pathAndQuery)
	require.Equal(t, wantStatus, status, pathAndQuery)
	require.Equal(t, "application/json", ctype)
}

// q escapes a PromQL expression for a URL.
func q(s string) string { return url.QueryEscape(s) }

// fakeMetadata serves a fixed metadata set, ignoring limits to prove the
// API enforces them itself.
type fakeMetadata struct{}

func (fakeMetadata) Metadata(_ context.Context, metric string, _, _ int) (map[string][]metadata.Metadata, error) {
	all := map[string][]metadata.Metadata{
		"up": {{Type: model.MetricTypeGauge, Help: "Whether the target is up."}},
		"http_requests_total": {
			{Type: model.MetricTypeCounter, Help: "Requests served.", Unit: "requests"},
			{Type: model.MetricTypeCounter, Help: "Requests handled."},
		},
	}
	if metric == "" {
		return all, nil
	}
	return map[string][]metadata.Metadata{metric: all[metric]}, nil
}

// fakeStats serves 12-entry cardinality lists, more than the default
// limit of 10, and does not cut them, so the API's own cut is tested.
type fakeStats struct{}

func (fakeStats) TSDBStatus(context.Context, int) (TSDBStatus, error) {
	var list []TSDBStat
	for i := range 12 {
		list = append(list, TSDBStat{Name: string(rune('a' + i)), Value: uint64(100 - i)})
	}
	return TSDBStatus{
		HeadStats:                   HeadStats{NumSeries: 8, NumLabelPairs: 14, ChunkCount: 8, MinTime: 0, MaxTime: 300000},
		SeriesCountByMetricName:     list,
		LabelValueCountByLabelName:  list,
		MemoryInBytesByLabelName:    nil, // must still come out as []
		SeriesCountByLabelValuePair: list[:3],
	}, nil
}

// blockingQueryable blocks Select for series named name until the query's
// context ends or release is closed, then returns nothing. It makes
// timeouts, cancellation and queueing deterministic.
type blockingQueryable struct {
	storage.SampleAndChunkQueryable
	name        string
	entered     chan struct{}
	release     chan struct{}
	releaseOnce sync.Once
}

// releaseAll unblocks every current and future Select. Tests also register
// it as a cleanup so that a failing test cannot leave a request hanging.
func (b *blockingQueryable) releaseAll() {
	b.releaseOnce.Do(func() { close(b.release) })
}

func newBlockingQueryable(inner storage.SampleAndChunkQueryable, name string) *blockingQueryable {
	return &blockingQueryable{SampleAndChunkQueryable: inner, name: name, entered: make(chan struct{}, 16), release: make(chan struct{})}
}

func (b *blockingQueryable) Querier(mint, maxt int64) (storage.Querier, error) {
	q, err := b.SampleAndChunkQueryable.Querier(mint, maxt)
	if err != nil {
		return nil, err
	}
	return &blockingQuerier{Querier: q, b: b}, nil
}

type blockingQuerier struct {
	storage.Querier
	b *blockingQueryable
}

func (q *blockingQuerier) Select(ctx context.Context, sortSeries bool, hints *storage.SelectHints, ms ...*labels.Matcher) storage.SeriesSet {
	for _, m := range ms {
		if m.Name == model.MetricNameLabel && m.Type == labels.MatchEqual && m.Value == q.b.name {
			q.b.entered <- struct{}{}
			select {
			case <-ctx.Done():
			case <-q.b.release:
			}
			return storage.EmptySeriesSet()
		}
	}
	return q.Querier.Select(ctx, sortSeries, hints, ms...)
}

// warningQueryable adds a storage warning to every Select, the way a
// cluster fan-out reports a failed node.
type warningQueryable struct {
	storage.SampleAndChunkQueryable
}

func (w warningQueryable) Querier(mint, maxt int64) (storage.Querier, error) {
	q, err := w.SampleAndChunkQueryable.Querier(mint, maxt)
	if err != nil {
		return nil, err
	}
	return warningQuerier{q}, nil
}

type warningQuerier struct{ storage.Querier }

func (w warningQuerier) Select(ctx context.Context, sortSeries bool, hints *storage.SelectHints, ms ...*labels.Matcher) storage.SeriesSet {
	return warningSeriesSet{w.Querier.Select(ctx, sortSeries, hints, ms...)}
}

type warningSeriesSet struct{ storage.SeriesSet }

func (w warningSeriesSet) Warnings() annotations.Annotations {
	var ws annotations.Annotations
	ws.Merge(w.SeriesSet.Warnings())
	ws.Add(errPartial)
	return ws
}

var errPartial = errPartialT("node kiln-2 unreachable: partial response")

type errPartialT string

func (e errPartialT) Error() string { return string(e) }

// unavailableQueryable fails every Querier call with an error that reports
// Unavailable() == true.
type unavailableQueryable struct {
	storage.SampleAndChunkQueryable
}

type errUnavailable struct{}

func (errUnavailable) Error() string     { return "no quorum for read" }
func (errUnavailable) Unavailable() bool { return true }

func (unavailableQueryable) Querier(int64, int64) (storage.Querier, error) {
	return nil, errUnavailable{}
}

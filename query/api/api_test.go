package api

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/prompb"
	"github.com/prometheus/prometheus/util/teststorage"
	"github.com/stretchr/testify/require"
	"github.com/valyala/fasthttp"
)

func TestConfigDefaults(t *testing.T) {
	require.Equal(t, DefaultConfig(), withDefaults(Config{}))

	// Negative switches a limit off and survives defaulting.
	cfg := withDefaults(Config{MaxConcurrency: -1, RemoteReadSampleLimit: -1, RemoteReadConcurrencyLimit: -1})
	require.Equal(t, -1, cfg.MaxConcurrency)
	require.Equal(t, -1, cfg.RemoteReadSampleLimit)
	require.Equal(t, -1, cfg.RemoteReadConcurrencyLimit)
}

func TestNewErrors(t *testing.T) {
	_, err := New(Config{}, Deps{}, nil, nil)
	require.EqualError(t, err, "query api: Deps.Queryable is required")

	// A second API on the same registry collides on the engine metrics;
	// New reports it instead of panicking.
	s := teststorage.New(t)
	reg := prometheus.NewRegistry()
	a, err := New(Config{}, Deps{Queryable: s}, reg, nil)
	require.NoError(t, err)
	defer func() { _ = a.Close() }()
	_, err = New(Config{}, Deps{Queryable: s}, reg, nil)
	require.ErrorContains(t, err, "query api: register metrics: duplicate metrics collector registration attempted")
}

// TestHandlerWithoutServer drives the handler on a bare RequestCtx, with
// nil registerer and logger and no optional dependencies.
func TestHandlerWithoutServer(t *testing.T) {
	s := teststorage.New(t)
	loadFixture(t, s)
	a, err := New(Config{MaxConcurrency: -1}, Deps{Queryable: s}, nil, nil)
	require.NoError(t, err)
	defer func() { _ = a.Close() }()
	a.now = func() time.Time { return fixtureNow }
	require.Nil(t, a.gate)

	var nextCalled bool
	h := a.Handler(func(*fasthttp.RequestCtx) { nextCalled = true })
	serve := func(uri string) (int, string) {
		var ctx fasthttp.RequestCtx
		ctx.Request.SetRequestURI(uri)
		h(&ctx)
		return ctx.Response.StatusCode(), string(ctx.Response.Body())
	}

	status, body := serve("/api/v1/query?query=" + q(`up{instance="a"}`))
	require.Equal(t, 200, status)
	require.Equal(t, `{"status":"success","data":{"resultType":"vector","result":[{"metric":`+upA+`,"value":[300,"1"]}]}}`, body)

	// Optional dependencies absent: empty answers, not panics.
	status, body = serve("/api/v1/metadata")
	require.Equal(t, 200, status)
	require.Equal(t, `{"status":"success","data":{}}`, body)
	status, body = serve("/api/v1/status/flags")
	require.Equal(t, 200, status)
	require.Equal(t, `{"status":"success","data":{}}`, body)
	status, body = serve("/api/v1/status/config")
	require.Equal(t, 200, status)
	require.Equal(t, `{"status":"success","data":{"yaml":""}}`, body)
	status, body = serve("/api/v1/query_exemplars?query=up")
	require.Equal(t, 200, status)
	require.Equal(t, `{"status":"success","data":[]}`, body)
	status, body = serve("/api/v1/status/tsdb")
	require.Equal(t, 500, status)
	require.Equal(t, `{"status":"error","errorType":"internal","error":"TSDB status is not available"}`, body)

	// No Gatherer: /metrics is someone else's.
	require.False(t, nextCalled)
	serve("/metrics")
	require.True(t, nextCalled)
}

func TestRemoteReadSampleLimit(t *testing.T) {
	s := teststorage.New(t)
	loadFixture(t, s)
	env := newTestAPI(t, s, func(c *Config, _ *Deps) { c.RemoteReadSampleLimit = 5 })

	// 21 samples exceed the limit of 5 for a samples response...
	_, err := tryRemoteRead(t, env, prompb.ReadRequest_SAMPLES, 0, 300000, labels.MustNewMatcher(labels.MatchEqual, "instance", "a"))
	require.ErrorContains(t, err, "returned http status 400 Bad Request: exceeded sample limit (5)")
	// ...but streamed responses are not subject to it, as in Prometheus.
	got := remoteRead(t, env, prompb.ReadRequest_STREAMED_XOR_CHUNKS, 0, 300000, labels.MustNewMatcher(labels.MatchEqual, "instance", "a"))
	require.Len(t, got[`{__name__="up", instance="a", job="api"}`].floats, fixtureSamples)
}

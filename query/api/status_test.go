package api

import (
	"compress/gzip"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	promv1 "github.com/prometheus/client_golang/api/prometheus/v1"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/common/expfmt"
	"github.com/stretchr/testify/require"
)

func testStatusEndpoints(t *testing.T, env *testEnv) {
	env.requireJSON(t, "/api/v1/status/buildinfo", http.StatusOK,
		`{"status":"success","data":{"version":"0.1.0","revision":"abc123","branch":"main","buildUser":"kiln@ci","buildDate":"20250101-00:00:00","goVersion":"go1.26.8"}}`)
	env.requireJSON(t, "/api/v1/status/flags", http.StatusOK,
		`{"status":"success","data":{"query.max-samples":"50000000","query.timeout":"2m"}}`)
	env.requireJSON(t, "/api/v1/status/config", http.StatusOK,
		`{"status":"success","data":{"yaml":"global:\n  scrape_interval: 15s\n"}}`)

	ctx := context.Background()
	bi, err := env.prom.Buildinfo(ctx)
	require.NoError(t, err)
	require.Equal(t, promv1.BuildinfoResult{
		Version: "0.1.0", Revision: "abc123", Branch: "main",
		BuildUser: "kiln@ci", BuildDate: "20250101-00:00:00", GoVersion: "go1.26.8",
	}, bi)
	flags, err := env.prom.Flags(ctx)
	require.NoError(t, err)
	require.Equal(t, promv1.FlagsResult{"query.timeout": "2m", "query.max-samples": "50000000"}, flags)
	cfg, err := env.prom.Config(ctx)
	require.NoError(t, err)
	require.Equal(t, "global:\n  scrape_interval: 15s\n", cfg.YAML)

	ri, err := env.prom.Runtimeinfo(ctx)
	require.NoError(t, err)
	require.Equal(t, time.Unix(1000, 0).UTC(), ri.StartTime.UTC())
	require.Equal(t, "15d", ri.StorageRetention)
	require.True(t, ri.ReloadConfigSuccess)
	require.Equal(t, runtime.GOMAXPROCS(0), ri.GOMAXPROCS)
	require.Positive(t, ri.GoroutineCount)
	wd, err := os.Getwd()
	require.NoError(t, err)
	require.Equal(t, wd, ri.CWD)

	// Every field Prometheus sends is present.
	_, _, body := env.get(t, "/api/v1/status/runtimeinfo")
	var raw struct {
		Data map[string]any `json:"data"`
	}
	require.NoError(t, json.Unmarshal([]byte(body), &raw))
	for _, k := range []string{"startTime", "CWD", "hostname", "serverTime", "reloadConfigSuccess", "lastConfigTime",
		"corruptionCount", "goroutineCount", "GOMAXPROCS", "GOMEMLIMIT", "GOGC", "GODEBUG", "storageRetention"} {
		require.Contains(t, raw.Data, k)
	}
}

func testTSDBStatus(t *testing.T, env *testEnv) {
	list := func(n int) string {
		var sb strings.Builder
		sb.WriteByte('[')
		for i := range n {
			if i > 0 {
				sb.WriteByte(',')
			}
			sb.WriteString(`{"name":"` + string(rune('a'+i)) + `","value":` + itoa(100-i) + `}`)
		}
		sb.WriteByte(']')
		return sb.String()
	}
	head := `"headStats":{"numSeries":8,"numLabelPairs":14,"chunkCount":8,"minTime":0,"maxTime":300000}`
	// Default limit 10; the source sent 12 and the API cuts; a nil list
	// still comes out as [].
	env.requireJSON(t, "/api/v1/status/tsdb", http.StatusOK,
		`{"status":"success","data":{`+head+`,"seriesCountByMetricName":`+list(10)+`,"labelValueCountByLabelName":`+list(10)+
			`,"memoryInBytesByLabelName":[],"seriesCountByLabelValuePair":`+list(3)+`}}`)
	env.requireJSON(t, "/api/v1/status/tsdb?limit=2", http.StatusOK,
		`{"status":"success","data":{`+head+`,"seriesCountByMetricName":`+list(2)+`,"labelValueCountByLabelName":`+list(2)+
			`,"memoryInBytesByLabelName":[],"seriesCountByLabelValuePair":`+list(2)+`}}`)

	for _, bad := range []string{"0", "-1", "x"} {
		env.requireJSON(t, "/api/v1/status/tsdb?limit="+bad, http.StatusBadRequest,
			`{"status":"error","errorType":"bad_data","error":"limit must be a positive number"}`)
	}
	env.requireJSON(t, "/api/v1/status/tsdb?limit=10001", http.StatusBadRequest,
		`{"status":"error","errorType":"bad_data","error":"limit must not exceed 10000"}`)

	res, err := env.prom.TSDB(context.Background(), promv1.WithLimit(3))
	require.NoError(t, err)
	require.Equal(t, 8, res.HeadStats.NumSeries)
	require.Equal(t, 300000, res.HeadStats.MaxTime)
	require.Len(t, res.SeriesCountByMetricName, 3)
	require.Equal(t, promv1.Stat{Name: "a", Value: 100}, res.SeriesCountByMetricName[0])
}

func itoa(i int) string { return strconv.Itoa(i) }

func testRouting(t *testing.T, env *testEnv) {
	// Wrong method: 405 with Allow.
	status, hdr, _ := env.do(t, http.MethodDelete, "/api/v1/query?query=up", nil)
	require.Equal(t, http.StatusMethodNotAllowed, status)
	require.Equal(t, "GET, POST", hdr.Get("Allow"))
	status, hdr, _ = env.do(t, http.MethodGet, "/api/v1/read", nil)
	require.Equal(t, http.StatusMethodNotAllowed, status)
	require.Equal(t, "POST", hdr.Get("Allow"))

	// Paths the API does not own go to next, e.g. /api/v1/write.
	before := env.nextHit.Load()
	for _, p := range []string{"/api/v1/write", "/api/v1/targets", "/", "/api/v1/label/job", "/api/v1/labels/extra"} {
		status, _, body := env.get(t, p)
		require.Equal(t, http.StatusNotFound, status, p)
		require.Equal(t, "next handler", body, p)
	}
	require.Equal(t, before+5, env.nextHit.Load())

	status, _, body := env.get(t, "/-/healthy")
	require.Equal(t, http.StatusOK, status)
	require.Equal(t, "Kiln Server is Healthy.\n", body)
	status, _, body = env.do(t, http.MethodHead, "/-/healthy", nil)
	require.Equal(t, http.StatusOK, status)
	require.Empty(t, body)

	// JSON responses are compressed when the client asks for it (fasthttp
	// leaves bodies under 200 bytes alone).
	const path = "/api/v1/query_range?query=up&start=0&end=300&step=15"
	_, _, plainBody := env.get(t, path)
	require.Greater(t, len(plainBody), 200)
	status, hdr, body = env.do(t, http.MethodGet, path, http.Header{"Accept-Encoding": {"gzip"}})
	require.Equal(t, http.StatusOK, status)
	require.Equal(t, "gzip", hdr.Get("Content-Encoding"))
	zr, err := gzip.NewReader(strings.NewReader(body))
	require.NoError(t, err)
	plain, err := io.ReadAll(zr)
	require.NoError(t, err)
	require.Equal(t, plainBody, string(plain))
}

func testMetricsEndpoint(t *testing.T, env *testEnv) {
	_, _, _ = env.get(t, "/api/v1/query?query=up&time=300")
	status, ctype, body := env.get(t, "/metrics")
	require.Equal(t, http.StatusOK, status)
	require.True(t, strings.HasPrefix(ctype, "text/plain"), ctype)
	require.Contains(t, body, "prometheus_engine_queries_concurrent_max 20\n")
	require.Contains(t, body, `kiln_http_requests_total{code="200",handler="/api/v1/query"}`)
	require.Contains(t, body, "prometheus_remote_read_handler_queries 0\n")

	// The label-values route counts under one handler name.
	_, _, _ = env.get(t, "/api/v1/label/job/values")
	require.Positive(t, testutil.ToFloat64(env.api.metrics.requests.WithLabelValues("/api/v1/label/:name/values", "200")))

	// OpenMetrics and protobuf are negotiated by promhttp.
	status, hdr, _ := env.do(t, http.MethodGet, "/metrics", http.Header{"Accept": {string(expfmt.NewFormat(expfmt.TypeProtoDelim))}})
	require.Equal(t, http.StatusOK, status)
	require.Contains(t, hdr.Get("Content-Type"), "application/vnd.google.protobuf")

	// Go's runtime profiles are served as by Prometheus.
	status, _, body = env.get(t, "/debug/pprof/goroutine?debug=1")
	require.Equal(t, http.StatusOK, status)
	require.Contains(t, body, "goroutine profile:")
}

func testReadiness(t *testing.T, newStorage storageFactory) {
	env, _ := newFixtureEnv(t, newStorage)
	env.ready.Store(false)

	status, _, body := env.get(t, "/-/ready")
	require.Equal(t, http.StatusServiceUnavailable, status)
	require.Equal(t, "Service Unavailable", body)
	for _, p := range []string{"/api/v1/query?query=up", "/api/v1/labels", "/api/v1/status/buildinfo", "/federate?match[]=up"} {
		status, _, body = env.get(t, p)
		require.Equal(t, http.StatusServiceUnavailable, status, p)
		require.Equal(t, "Service Unavailable", body, p)
	}
	// Liveness and self-metrics do not wait for readiness.
	status, _, _ = env.get(t, "/-/healthy")
	require.Equal(t, http.StatusOK, status)
	status, _, _ = env.get(t, "/metrics")
	require.Equal(t, http.StatusOK, status)

	env.ready.Store(true)
	status, _, body = env.get(t, "/-/ready")
	require.Equal(t, http.StatusOK, status)
	require.Equal(t, "Kiln Server is Ready.\n", body)
	status, _, _ = env.get(t, "/api/v1/query?query=up")
	require.Equal(t, http.StatusOK, status)
}

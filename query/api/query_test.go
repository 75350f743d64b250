package api

import (
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	promv1 "github.com/prometheus/client_golang/api/prometheus/v1"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/common/model"
	"github.com/stretchr/testify/require"
)

const (
	upA = `{"__name__":"up","instance":"a","job":"api"}`
	upB = `{"__name__":"up","instance":"b","job":"api"}`
)

func testInstantQueryJSON(t *testing.T, env *testEnv) {
	f := func(query, at, wantResult string) {
		t.Helper()
		env.requireJSON(t, "/api/v1/query?query="+q(query)+"&time="+at, http.StatusOK,
			`{"status":"success","data":{"resultType":"vector","result":`+wantResult+`}}`)
	}
	f("up", "300",
		`[{"metric":`+upA+`,"value":[300,"1"]},{"metric":`+upB+`,"value":[300,"0"]}]`)
	// Sub-second timestamps keep all three millisecond digits, as
	// Prometheus writes them.
	f("up", "300.5",
		`[{"metric":`+upA+`,"value":[300.500,"1"]},{"metric":`+upB+`,"value":[300.500,"0"]}]`)
	f(`up{instance="a"}`, "300.05", `[{"metric":`+upA+`,"value":[300.050,"1"]}]`)
	f(`up{instance="a"}`, "1970-01-01T00:05:00.001Z", `[{"metric":`+upA+`,"value":[300.001,"1"]}]`)
	// Value formatting: shortest round-trip digits, exponent form only
	// outside [1e-6, 1e21), and strconv's spelling of the specials.
	f(`up{instance="a"} + 0.1`, "300", `[{"metric":{"instance":"a","job":"api"},"value":[300,"1.1"]}]`)
	f(`up{instance="a"} * 1e-7`, "300", `[{"metric":{"instance":"a","job":"api"},"value":[300,"1e-07"]}]`)
	f(`up{instance="a"} * 1e-6`, "300", `[{"metric":{"instance":"a","job":"api"},"value":[300,"0.000001"]}]`)
	f(`up{instance="a"} * 1e21`, "300", `[{"metric":{"instance":"a","job":"api"},"value":[300,"1e+21"]}]`)
	f(`up{instance="a"} * 123456789012`, "300", `[{"metric":{"instance":"a","job":"api"},"value":[300,"123456789012"]}]`)
	f(`up / 0`, "300",
		`[{"metric":{"instance":"a","job":"api"},"value":[300,"+Inf"]},{"metric":{"instance":"b","job":"api"},"value":[300,"NaN"]}]`)
	f(`-up{instance="a"} / 0`, "300", `[{"metric":{"instance":"a","job":"api"},"value":[300,"-Inf"]}]`)
	// UTF-8 metric and label names, and an empty result.
	f(`{"foo.bar"}`, "300", `[{"metric":{"__name__":"foo.bar","service.name":"checkout"},"value":[300,"42"]}]`)
	f(`nonexistent`, "300", `[]`)
	// Label values are written without HTML escaping, as in Prometheus.
	f(`label_replace(up{instance="a"}, "x", "<a&b>", "", "")`, "300",
		`[{"metric":{"__name__":"up","instance":"a","job":"api","x":"<a&b>"},"value":[300,"1"]}]`)
}

func testRangeQueryJSON(t *testing.T, env *testEnv) {
	env.requireJSON(t, "/api/v1/query_range?query="+q(`up{instance="a"}`)+"&start=270&end=300&step=15", http.StatusOK,
		`{"status":"success","data":{"resultType":"matrix","result":[{"metric":`+upA+`,"values":[[270,"1"],[285,"1"],[300,"1"]]}]}}`)
	env.requireJSON(t, "/api/v1/query_range?query=up&start=299.5&end=300&step=0.25", http.StatusOK,
		`{"status":"success","data":{"resultType":"matrix","result":[`+
			`{"metric":`+upA+`,"values":[[299.500,"1"],[299.750,"1"],[300,"1"]]},`+
			`{"metric":`+upB+`,"values":[[299.500,"0"],[299.750,"0"],[300,"0"]]}]}}`)
	env.requireJSON(t, "/api/v1/query_range?query=nonexistent&start=0&end=300&step=1m", http.StatusOK,
		`{"status":"success","data":{"resultType":"matrix","result":[]}}`)
	// A scalar expression over a range becomes a nameless series.
	env.requireJSON(t, "/api/v1/query_range?query=2&start=0&end=30&step=15", http.StatusOK,
		`{"status":"success","data":{"resultType":"matrix","result":[{"metric":{},"values":[[0,"2"],[15,"2"],[30,"2"]]}]}}`)
}

func testNativeHistogramJSON(t *testing.T, env *testEnv) {
	h := func(n int) string {
		return map[int]string{
			20: `{"count":"80","sum":"200","buckets":[[3,"-0.001","0.001","20"],[0,"0.5","1","40"],[0,"1","2","20"]]}`,
			21: `{"count":"84","sum":"210","buckets":[[3,"-0.001","0.001","21"],[0,"0.5","1","42"],[0,"1","2","21"]]}`,
		}[n]
	}
	metric := `{"__name__":"test_histogram","job":"api"}`
	env.requireJSON(t, "/api/v1/query?query=test_histogram&time=300", http.StatusOK,
		`{"status":"success","data":{"resultType":"vector","result":[{"metric":`+metric+`,"histogram":[300,`+h(21)+`]}]}}`)
	env.requireJSON(t, "/api/v1/query_range?query=test_histogram&start=285&end=300&step=15", http.StatusOK,
		`{"status":"success","data":{"resultType":"matrix","result":[{"metric":`+metric+`,"histograms":[[285,`+h(20)+`],[300,`+h(21)+`]]}]}}`)
	// Empty buckets are left out and so is "buckets" when none remain.
	env.requireJSON(t, "/api/v1/query?query="+q(`test_histogram - test_histogram`)+"&time=300", http.StatusOK,
		`{"status":"success","data":{"resultType":"vector","result":[{"metric":{"job":"api"},"histogram":[300,{"count":"0","sum":"0"}]}]}}`)
	// Floats derived from histograms go in "value".
	env.requireJSON(t, "/api/v1/query?query="+q(`histogram_count(test_histogram)`)+"&time=300", http.StatusOK,
		`{"status":"success","data":{"resultType":"vector","result":[{"metric":{"job":"api"},"value":[300,"84"]}]}}`)
}

func testScalarAndStringJSON(t *testing.T, env *testEnv) {
	// Scalars and strings use Prometheus's MarshalJSON: the time as a plain
	// JSON number, a scalar's value without exponent notation.
	env.requireJSON(t, "/api/v1/query?query=1.5&time=300.5", http.StatusOK,
		`{"status":"success","data":{"resultType":"scalar","result":[300.5,"1.5"]}}`)
	env.requireJSON(t, "/api/v1/query?query=1e-7&time=300", http.StatusOK,
		`{"status":"success","data":{"resultType":"scalar","result":[300,"0.0000001"]}}`)
	env.requireJSON(t, "/api/v1/query?query="+q(`"a<b"`)+"&time=300", http.StatusOK,
		`{"status":"success","data":{"resultType":"string","result":[300,"a\u003cb"]}}`)
}

func testAnnotations(t *testing.T, env *testEnv) {
	// An info annotation (rate over a name that is not counter-like).
	env.requireJSON(t, "/api/v1/query?query="+q(`rate(up[1m])`)+"&time=300", http.StatusOK,
		`{"status":"success","data":{"resultType":"vector","result":[`+
			`{"metric":{"instance":"a","job":"api"},"value":[300,"0"]},{"metric":{"instance":"b","job":"api"},"value":[300,"0"]}]},`+
			`"infos":["PromQL info: metric might not be a counter, name does not end in _total/_sum/_count/_bucket: \"up\" (1:6)"]}`)
	// A warning annotation.
	env.requireJSON(t, "/api/v1/query?query="+q(`quantile(2, up)`)+"&time=300", http.StatusOK,
		`{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[300,"+Inf"]}]},`+
			`"warnings":["PromQL warning: quantile value should be between 0 and 1, got 2 (1:10)"]}`)
	// Both, through the client.
	_, warns, infos, err := env.prom.Query(context.Background(), `quantile(2, rate(up[1m]))`, fixtureNow)
	require.NoError(t, err)
	require.Len(t, warns, 1)
	require.Contains(t, warns[0], "quantile value should be between 0 and 1")
	require.Len(t, infos, 1)
	require.Contains(t, infos[0], "metric might not be a counter")
}

func testQueryParams(t *testing.T, env *testEnv) {
	// limit truncates and warns.
	env.requireJSON(t, "/api/v1/query?query=up&time=300&limit=1", http.StatusOK,
		`{"status":"success","data":{"resultType":"vector","result":[{"metric":`+upA+`,"value":[300,"1"]}]},"warnings":["results truncated due to limit"]}`)
	env.requireJSON(t, "/api/v1/query_range?query=up&start=300&end=300&step=1&limit=1", http.StatusOK,
		`{"status":"success","data":{"resultType":"matrix","result":[{"metric":`+upA+`,"values":[[300,"1"]]}]},"warnings":["results truncated due to limit"]}`)
	env.requireJSON(t, "/api/v1/query?query="+q(`up{instance="a"}`)+"&time=300&limit=1", http.StatusOK,
		`{"status":"success","data":{"resultType":"vector","result":[{"metric":`+upA+`,"value":[300,"1"]}]}}`)

	// lookback_delta overrides the 5m default per query: the last sample
	// is at 300s.
	env.requireJSON(t, "/api/v1/query?query="+q(`up{instance="a"}`)+"&time=400", http.StatusOK,
		`{"status":"success","data":{"resultType":"vector","result":[{"metric":`+upA+`,"value":[400,"1"]}]}}`)
	env.requireJSON(t, "/api/v1/query?query="+q(`up{instance="a"}`)+"&time=400&lookback_delta=30s", http.StatusOK,
		`{"status":"success","data":{"resultType":"vector","result":[]}}`)
	env.requireJSON(t, "/api/v1/query?query="+q(`up{instance="a"}`)+"&time=320&lookback_delta=30", http.StatusOK,
		`{"status":"success","data":{"resultType":"vector","result":[{"metric":`+upA+`,"value":[320,"1"]}]}}`)

	// step as a duration string, timeout as float seconds.
	env.requireJSON(t, "/api/v1/query_range?query="+q(`up{instance="a"}`)+"&start=240&end=300&step=1m&timeout=10.5", http.StatusOK,
		`{"status":"success","data":{"resultType":"matrix","result":[{"metric":`+upA+`,"values":[[240,"1"],[300,"1"]]}]}}`)

	// stats adds query statistics.
	for _, path := range []string{
		"/api/v1/query?query=up&time=300&stats=true",
		"/api/v1/query_range?query=up&start=270&end=300&step=15&stats=all",
	} {
		status, _, body := env.get(t, path)
		require.Equal(t, http.StatusOK, status)
		var resp struct {
			Status   string   `json:"status"`
			Warnings []string `json:"warnings"`
			Data     struct {
				Stats struct {
					Timings map[string]float64 `json:"timings"`
					Samples map[string]any     `json:"samples"`
				} `json:"stats"`
			} `json:"data"`
		}
		require.NoError(t, json.Unmarshal([]byte(body), &resp), body)
		require.Equal(t, "success", resp.Status)
		require.Empty(t, resp.Warnings)
		require.Contains(t, resp.Data.Stats.Timings, "evalTotalTime")
		require.Contains(t, resp.Data.Stats.Timings, "execQueueTime")
		require.Positive(t, resp.Data.Stats.Samples["totalQueryableSamples"])
	}
	// Values other than true/all still work but are deprecated.
	status, _, body := env.get(t, "/api/v1/query?query=up&time=300&stats=1")
	require.Equal(t, http.StatusOK, status)
	require.Contains(t, body, `"stats":{`)
	require.Contains(t, body, `"warnings":["value \"1\" for parameter \"stats\" is deprecated and will be rejected in the next major release, use \"true\" or \"all\""]`)
}

func testQueryPOST(t *testing.T, env *testEnv) {
	_, _, getBody := env.get(t, "/api/v1/query?query=up&time=300")
	status, ctype, body := env.postForm(t, "/api/v1/query", url.Values{"query": {"up"}, "time": {"300"}})
	require.Equal(t, http.StatusOK, status)
	require.Equal(t, "application/json", ctype)
	require.Equal(t, getBody, body)

	// Body values take precedence over URL values, as with net/http.
	status, _, body = env.postForm(t, "/api/v1/query?time=0&query=nonexistent", url.Values{"query": {`up{instance="a"}`}, "time": {"300"}})
	require.Equal(t, http.StatusOK, status)
	require.Equal(t, `{"status":"success","data":{"resultType":"vector","result":[{"metric":`+upA+`,"value":[300,"1"]}]}}`, body)

	status, _, body = env.postForm(t, "/api/v1/query_range", url.Values{"query": {`up{instance="a"}`}, "start": {"285"}, "end": {"300"}, "step": {"15s"}})
	require.Equal(t, http.StatusOK, status)
	require.Equal(t, `{"status":"success","data":{"resultType":"matrix","result":[{"metric":`+upA+`,"values":[[285,"1"],[300,"1"]]}]}}`, body)
}

func testQueryClient(t *testing.T, env *testEnv) {
	ctx := context.Background()
	v, warns, infos, err := env.prom.Query(ctx, "up", fixtureNow)
	require.NoError(t, err)
	require.Empty(t, warns)
	require.Empty(t, infos)
	require.Equal(t, model.Vector{
		{Metric: model.Metric{"__name__": "up", "instance": "a", "job": "api"}, Value: 1, Timestamp: 300000},
		{Metric: model.Metric{"__name__": "up", "instance": "b", "job": "api"}, Value: 0, Timestamp: 300000},
	}, v)

	v, _, _, err = env.prom.QueryRange(ctx, `http_requests_total{code="500"}`, promv1.Range{
		Start: time.Unix(270, 0), End: fixtureNow, Step: fixtureStep,
	})
	require.NoError(t, err)
	require.Equal(t, model.Matrix{{
		Metric: model.Metric{"__name__": "http_requests_total", "code": "500", "job": "api"},
		Values: []model.SamplePair{{Timestamp: 270000, Value: 18}, {Timestamp: 285000, Value: 19}, {Timestamp: 300000, Value: 20}},
	}}, v)

	v, _, _, err = env.prom.Query(ctx, "test_histogram", fixtureNow)
	require.NoError(t, err)
	vec, ok := v.(model.Vector)
	require.True(t, ok)
	require.Len(t, vec, 1)
	require.NotNil(t, vec[0].Histogram)
	require.Equal(t, model.FloatString(84), vec[0].Histogram.Count)
	require.Equal(t, model.FloatString(210), vec[0].Histogram.Sum)
	require.Len(t, vec[0].Histogram.Buckets, 3)

	v, _, _, err = env.prom.Query(ctx, "1.5", fixtureNow)
	require.NoError(t, err)
	require.Equal(t, &model.Scalar{Value: 1.5, Timestamp: 300000}, v)

	_, _, _, err = env.prom.Query(ctx, "up{", fixtureNow)
	var apiErr *promv1.Error
	require.ErrorAs(t, err, &apiErr)
	require.Equal(t, promv1.ErrBadData, apiErr.Type)
}

func testQueryBadInput(t *testing.T, env *testEnv) {
	f := func(path string, wantStatus int, wantType, wantError string) {
		t.Helper()
		status, ctype, body := env.get(t, path)
		require.Equal(t, wantStatus, status, body)
		require.Equal(t, "application/json", ctype)
		var resp map[string]string
		require.NoError(t, json.Unmarshal([]byte(body), &resp), body)
		require.Equal(t, map[string]string{"status": "error", "errorType": wantType, "error": wantError}, resp, path)
	}
	const bad = http.StatusBadRequest

	// Exact bytes once; the rest compare decoded fields.
	env.requireJSON(t, "/api/v1/query?query="+q("up{"), bad,
		`{"status":"error","errorType":"bad_data","error":"invalid parameter \"query\": 1:4: parse error: unexpected end of input inside braces"}`)

	f("/api/v1/query?query="+q("sum(up"), bad, "bad_data", `invalid parameter "query": 1:7: parse error: unclosed left parenthesis`)
	f("/api/v1/query?time=300", bad, "bad_data", `invalid parameter "query": unknown position: parse error: no expression found in input`)
	f("/api/v1/query?query=up&time=abc", bad, "bad_data", `invalid parameter "time": invalid time value for 'time': cannot parse "abc" to a valid timestamp`)
	f("/api/v1/query?query=up&timeout=soon", bad, "bad_data", `invalid parameter "timeout": cannot parse "soon" to a valid duration`)
	f("/api/v1/query?query=up&limit=-1", bad, "bad_data", `invalid parameter "limit": limit must be non-negative`)
	f("/api/v1/query?query=up&limit=x", bad, "bad_data", `invalid parameter "limit": strconv.Atoi: parsing "x": invalid syntax`)
	f("/api/v1/query?query=up&lookback_delta=x", bad, "bad_data", `error parsing lookback delta duration: cannot parse "x" to a valid duration`)

	rng := "/api/v1/query_range?query=up"
	f(rng+"&end=300&step=15", bad, "bad_data", `invalid parameter "start": cannot parse "" to a valid timestamp`)
	f(rng+"&start=0&end=yesterday&step=15", bad, "bad_data", `invalid parameter "end": cannot parse "yesterday" to a valid timestamp`)
	f(rng+"&start=300&end=0&step=15", bad, "bad_data", `invalid parameter "end": end timestamp must not be before start time`)
	f(rng+"&start=0&end=300", bad, "bad_data", `invalid parameter "step": cannot parse "" to a valid duration`)
	f(rng+"&start=0&end=300&step=abc", bad, "bad_data", `invalid parameter "step": cannot parse "abc" to a valid duration`)
	f(rng+"&start=0&end=300&step=0", bad, "bad_data", `invalid parameter "step": zero or negative query resolution step widths are not accepted. Try a positive integer`)
	f(rng+"&start=0&end=300&step=-15s", bad, "bad_data", `invalid parameter "step": cannot parse "-15s" to a valid duration`)
	f(rng+"&start=0&end=300&step=1e300", bad, "bad_data", `invalid parameter "step": cannot parse "1e300" to a valid duration. It overflows int64`)
	f(rng+"&start=0&end=11001&step=1", bad, "bad_data", `exceeded maximum resolution of 11,000 points per timeseries. Try decreasing the query resolution (?step=XX)`)
	f("/api/v1/query_range?start=0&end=300&step=15&query="+q("rate(up)"), bad, "bad_data",
		`invalid parameter "query": 1:6: parse error: expected type range vector in call to function "rate", got instant vector`)

	// 11,000 points is still allowed.
	status, _, _ := env.get(t, rng+"&start=0&end=11000&step=1")
	require.Equal(t, http.StatusOK, status)
}

func testQueryExemplars(t *testing.T, env *testEnv) {
	if env.api.deps.Exemplars == nil {
		t.Skip("storage has no exemplars")
	}
	want := `{"status":"success","data":[{"seriesLabels":{"__name__":"http_requests_total","code":"200","job":"api"},` +
		`"exemplars":[{"labels":{"trace_id":"abc"},"value":"5","timestamp":60}]}]}`
	env.requireJSON(t, "/api/v1/query_exemplars?query="+q(`http_requests_total`)+"&start=0&end=300", http.StatusOK, want)
	env.requireJSON(t, "/api/v1/query_exemplars?query="+q(`sum(rate(http_requests_total{code="200"}[5m]))`), http.StatusOK, want)
	env.requireJSON(t, "/api/v1/query_exemplars?query=up&start=0&end=300", http.StatusOK, `{"status":"success","data":[]}`)

	res, err := env.prom.QueryExemplars(context.Background(), "http_requests_total", time.Unix(0, 0), fixtureNow)
	require.NoError(t, err)
	require.Len(t, res, 1)
	require.Equal(t, model.LabelSet{"trace_id": "abc"}, res[0].Exemplars[0].Labels)
	require.Equal(t, model.SampleValue(5), res[0].Exemplars[0].Value)
	require.Equal(t, model.Time(60000), res[0].Exemplars[0].Timestamp)

	// Without selectors there is nothing to look up: 204, as Prometheus.
	status, _, body := env.get(t, "/api/v1/query_exemplars?query=1")
	require.Equal(t, http.StatusNoContent, status)
	require.Empty(t, body)

	env.requireJSON(t, "/api/v1/query_exemplars?query=up&start=10&end=0", http.StatusBadRequest,
		`{"status":"error","errorType":"bad_data","error":"end timestamp must not be before start timestamp"}`)
	env.requireJSON(t, "/api/v1/query_exemplars?query=up&start=x", http.StatusBadRequest,
		`{"status":"error","errorType":"bad_data","error":"invalid parameter \"start\": invalid time value for 'start': cannot parse \"x\" to a valid timestamp"}`)
	env.requireJSON(t, "/api/v1/query_exemplars?query="+q("up{"), http.StatusBadRequest,
		`{"status":"error","errorType":"bad_data","error":"1:4: parse error: unexpected end of input inside braces"}`)
}

func testFormatQuery(t *testing.T, env *testEnv) {
	env.requireJSON(t, "/api/v1/format_query?query="+q(`sum(rate(http_requests_total{code="200"}[5m]))by(job)`), http.StatusOK,
		`{"status":"success","data":"sum by (job) (rate(http_requests_total{code=\"200\"}[5m]))"}`)
	got, err := env.prom.FormatQuery(context.Background(), `up>0`)
	require.NoError(t, err)
	// The client hands back the raw JSON of "data".
	require.Equal(t, `"up \u003e 0"`, got)
	env.requireJSON(t, "/api/v1/format_query?query="+q("up{"), http.StatusBadRequest,
		`{"status":"error","errorType":"bad_data","error":"invalid parameter \"query\": 1:4: parse error: unexpected end of input inside braces"}`)
}

// newBlockingEnv serves the fixture through a blockingQueryable that blocks
// queries for "slow_metric".
func newBlockingEnv(t *testing.T, newStorage storageFactory, cfg func(*Config)) (*testEnv, *blockingQueryable) {
	var bq *blockingQueryable
	env, _ := newFixtureEnv(t, newStorage, func(c *Config, d *Deps) {
		if cfg != nil {
			cfg(c)
		}
		bq = newBlockingQueryable(d.Queryable, "slow_metric")
		d.Queryable = bq
	})
	// Registered after the server's cleanup, so it runs before it: a
	// failed test must not leave a request blocked during shutdown.
	t.Cleanup(bq.releaseAll)
	return env, bq
}

// testQueryTimeout: the query's own timeout parameter and the engine
// timeout both end a query stuck in storage with 503 "timeout".
func testQueryTimeout(t *testing.T, newStorage storageFactory) {
	env, _ := newBlockingEnv(t, newStorage, nil)
	want := `{"status":"error","errorType":"timeout","error":"query timed out in expression evaluation"}`
	env.requireJSON(t, "/api/v1/query?query=slow_metric&time=300&timeout=50ms", http.StatusServiceUnavailable, want)
	env.requireJSON(t, "/api/v1/query_range?query=slow_metric&start=0&end=300&step=15&timeout=0.05", http.StatusServiceUnavailable, want)

	env2, _ := newBlockingEnv(t, newStorage, func(c *Config) { c.Timeout = 50 * time.Millisecond })
	env2.requireJSON(t, "/api/v1/query?query=slow_metric&time=300", http.StatusServiceUnavailable, want)
	// Queries that do not block are unaffected.
	status, _, _ := env2.get(t, "/api/v1/query?query=up&time=300")
	require.Equal(t, http.StatusOK, status)
}

func testMaxSamples(t *testing.T, newStorage storageFactory) {
	env, _ := newFixtureEnv(t, newStorage, func(c *Config, _ *Deps) { c.MaxSamples = 10 })
	env.requireJSON(t, "/api/v1/query?query="+q(`http_requests_total[5m]`)+"&time=300", http.StatusUnprocessableEntity,
		`{"status":"error","errorType":"execution","error":"query processing would load too many samples into memory in query execution"}`)
	// Small enough queries still pass.
	status, _, _ := env.get(t, "/api/v1/query?query=up&time=300")
	require.Equal(t, http.StatusOK, status)
}

// testConcurrencyLimit: with one slot taken, a second query waits in the
// queue until its deadline and then fails with 503 "timeout".
func testConcurrencyLimit(t *testing.T, newStorage storageFactory) {
	env, bq := newBlockingEnv(t, newStorage, func(c *Config) { c.MaxConcurrency = 1 })

	type result struct {
		status int
		body   string
	}
	first := make(chan result, 1)
	go func() {
		resp, err := env.http.Get(env.url + "/api/v1/query?query=slow_metric&time=300")
		if err != nil {
			first <- result{body: err.Error()}
			return
		}
		status, _, body := readResponse(t, resp)
		first <- result{status, body}
	}()
	<-bq.entered // the first query now holds the only slot

	env.requireJSON(t, "/api/v1/query?query=up&time=300&timeout=100ms", http.StatusServiceUnavailable,
		`{"status":"error","errorType":"timeout","error":"query timed out in query queue"}`)

	bq.releaseAll()
	r := <-first
	require.Equal(t, http.StatusOK, r.status, r.body)
	require.Equal(t, `{"status":"success","data":{"resultType":"vector","result":[]}}`, r.body)

	// The slot is free again.
	status, _, _ := env.get(t, "/api/v1/query?query=up&time=300")
	require.Equal(t, http.StatusOK, status)

	require.Equal(t, 1.0, testutil.ToFloat64(env.api.metrics.queryQueueTimeouts))
	require.NoError(t, testutil.GatherAndCompare(env.reg, strings.NewReader(`
# HELP prometheus_engine_queries_concurrent_max The max number of concurrent queries.
# TYPE prometheus_engine_queries_concurrent_max gauge
prometheus_engine_queries_concurrent_max 1
`), "prometheus_engine_queries_concurrent_max"))
}

// testCloseCancelsQueries: Close cancels in-flight queries, which answer
// 499 "canceled" like Prometheus's client-closed-request case.
func testCloseCancelsQueries(t *testing.T, newStorage storageFactory) {
	env, bq := newBlockingEnv(t, newStorage, nil)
	done := make(chan struct{})
	var (
		status int
		body   string
	)
	go func() {
		defer close(done)
		resp, err := env.http.Get(env.url + "/api/v1/query?query=slow_metric&time=300")
		if err != nil {
			body = err.Error()
			return
		}
		status, _, body = readResponse(t, resp)
	}()
	<-bq.entered
	require.NoError(t, env.api.Close())
	<-done
	require.Equal(t, statusClientClosedRequest, status, body)
	require.Equal(t, `{"status":"error","errorType":"canceled","error":"query was canceled in expression evaluation"}`, body)
}

// testStorageWarnings: warnings from storage (how a cluster fan-out reports
// a partial response) reach the response's "warnings".
func testStorageWarnings(t *testing.T, newStorage storageFactory) {
	env, _ := newFixtureEnv(t, newStorage, func(_ *Config, d *Deps) {
		d.Queryable = warningQueryable{d.Queryable}
	})
	env.requireJSON(t, "/api/v1/query?query="+q(`up{instance="a"}`)+"&time=300", http.StatusOK,
		`{"status":"success","data":{"resultType":"vector","result":[{"metric":`+upA+`,"value":[300,"1"]}]},"warnings":["node kiln-2 unreachable: partial response"]}`)
	env.requireJSON(t, "/api/v1/series?match[]="+q(`up{instance="b"}`), http.StatusOK,
		`{"status":"success","data":[`+upB+`],"warnings":["node kiln-2 unreachable: partial response"]}`)
}

func testUnavailable(t *testing.T, newStorage storageFactory) {
	env, _ := newFixtureEnv(t, newStorage, func(_ *Config, d *Deps) {
		d.Queryable = unavailableQueryable{d.Queryable}
	})
	want := `{"status":"error","errorType":"unavailable","error":"no quorum for read"}`
	env.requireJSON(t, "/api/v1/query?query=up&time=300", http.StatusServiceUnavailable, want)
	env.requireJSON(t, "/api/v1/series?match[]=up", http.StatusServiceUnavailable, want)
	env.requireJSON(t, "/api/v1/labels", http.StatusServiceUnavailable, want)
	status, _, body := env.get(t, "/federate?match[]=up")
	require.Equal(t, http.StatusServiceUnavailable, status)
	require.Equal(t, "no quorum for read", body)
}

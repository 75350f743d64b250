package api

import (
	"context"
	"net/http"
	"net/url"
	"testing"
	"time"

	promv1 "github.com/prometheus/client_golang/api/prometheus/v1"
	"github.com/prometheus/common/model"
	"github.com/stretchr/testify/require"
)

const allMetricNames = `["foo.bar","http_requests_total","nhcb_metric","stale_metric","test_histogram","up"]`

func testSeries(t *testing.T, env *testEnv) {
	ok := func(query, wantData string) {
		t.Helper()
		env.requireJSON(t, "/api/v1/series?"+query, http.StatusOK, `{"status":"success","data":`+wantData+`}`)
	}
	ok("match[]=up", `[`+upA+`,`+upB+`]`)
	// Several selectors are merged, deduplicated and sorted.
	ok("match[]="+q(`up{instance="b"}`)+"&match[]=stale_metric&match[]=up",
		`[{"__name__":"stale_metric","job":"stale"},`+upA+`,`+upB+`]`)
	ok("match[]="+q(`{"foo.bar"}`), `[{"__name__":"foo.bar","service.name":"checkout"}]`)
	ok("match[]=nonexistent", `[]`)
	ok("match[]=up&start=0&end=300", `[`+upA+`,`+upB+`]`)
	env.requireJSON(t, "/api/v1/series?match[]=up&limit=1", http.StatusOK,
		`{"status":"success","data":[`+upA+`],"warnings":["results truncated due to limit"]}`)
	ok("match[]=up&limit=2", `[`+upA+`,`+upB+`]`)

	status, _, body := env.postForm(t, "/api/v1/series", url.Values{"match[]": {`up{instance="a"}`}})
	require.Equal(t, http.StatusOK, status)
	require.Equal(t, `{"status":"success","data":[`+upA+`]}`, body)

	bad := func(query, wantError string) {
		t.Helper()
		env.requireJSON(t, "/api/v1/series?"+query, http.StatusBadRequest,
			`{"status":"error","errorType":"bad_data","error":`+jsonString(wantError)+`}`)
	}
	bad("", "no match[] parameter provided")
	bad("match[]="+q("up{"), `invalid parameter "match[]": 1:4: parse error: unexpected end of input inside braces`)
	bad("match[]="+q(`{job=~".*"}`), `invalid parameter "match[]": match[] must contain at least one non-empty matcher`)
	bad("match[]=up&match[]="+q(`{job=""}`), `invalid parameter "match[]": match[] must contain at least one non-empty matcher`)
	bad("match[]=up&start=x", `invalid parameter "start": invalid time value for 'start': cannot parse "x" to a valid timestamp`)
	bad("match[]=up&end=x", `invalid parameter "end": invalid time value for 'end': cannot parse "x" to a valid timestamp`)
	bad("match[]=up&limit=x", `invalid parameter "limit": strconv.Atoi: parsing "x": invalid syntax`)

	sets, warns, _, err := env.prom.Series(context.Background(), []string{"up", "stale_metric"}, time.Time{}, time.Time{})
	require.NoError(t, err)
	require.Empty(t, warns)
	require.Equal(t, []model.LabelSet{
		{"__name__": "stale_metric", "job": "stale"},
		{"__name__": "up", "instance": "a", "job": "api"},
		{"__name__": "up", "instance": "b", "job": "api"},
	}, sets)
}

func testLabelNames(t *testing.T, env *testEnv) {
	ok := func(query, wantData string) {
		t.Helper()
		env.requireJSON(t, "/api/v1/labels"+query, http.StatusOK, `{"status":"success","data":`+wantData+`}`)
	}
	ok("", `["__name__","code","instance","job","service.name"]`)
	ok("?match[]=up", `["__name__","instance","job"]`)
	ok("?match[]=up&match[]="+q(`http_requests_total{code="500"}`), `["__name__","code","instance","job"]`)
	ok("?match[]=nonexistent", `[]`)
	ok("?start=0&end=300", `["__name__","code","instance","job","service.name"]`)
	env.requireJSON(t, "/api/v1/labels?limit=2", http.StatusOK,
		`{"status":"success","data":["__name__","code"],"warnings":["results truncated due to limit"]}`)

	status, _, body := env.postForm(t, "/api/v1/labels", url.Values{"match[]": {"up"}})
	require.Equal(t, http.StatusOK, status)
	require.Equal(t, `{"status":"success","data":["__name__","instance","job"]}`, body)

	env.requireJSON(t, "/api/v1/labels?match[]="+q("up{"), http.StatusBadRequest,
		`{"status":"error","errorType":"bad_data","error":"1:4: parse error: unexpected end of input inside braces"}`)
	env.requireJSON(t, "/api/v1/labels?start=x", http.StatusBadRequest,
		`{"status":"error","errorType":"bad_data","error":"invalid parameter \"start\": invalid time value for 'start': cannot parse \"x\" to a valid timestamp"}`)

	names, _, _, err := env.prom.LabelNames(context.Background(), []string{"up"}, time.Time{}, time.Time{})
	require.NoError(t, err)
	require.Equal(t, model.LabelNames{"__name__", "instance", "job"}, names)
}

func testLabelValues(t *testing.T, env *testEnv) {
	ok := func(path, wantData string) {
		t.Helper()
		env.requireJSON(t, path, http.StatusOK, `{"status":"success","data":`+wantData+`}`)
	}
	ok("/api/v1/label/job/values", `["api","stale"]`)
	ok("/api/v1/label/__name__/values", allMetricNames)
	ok("/api/v1/label/instance/values?match[]=up", `["a","b"]`)
	ok("/api/v1/label/code/values?match[]="+q(`http_requests_total{code="200"}`)+"&match[]="+q(`http_requests_total{code="500"}`), `["200","500"]`)
	ok("/api/v1/label/nonexistent/values", `[]`)
	// UTF-8 label names: plain, percent-encoded, and in the U__ escaping
	// clients use where only legacy names are allowed.
	ok("/api/v1/label/service.name/values", `["checkout"]`)
	ok("/api/v1/label/service%2Ename/values", `["checkout"]`)
	ok("/api/v1/label/U__service_2e_name/values", `["checkout"]`)
	env.requireJSON(t, "/api/v1/label/instance/values?limit=1", http.StatusOK,
		`{"status":"success","data":["a"],"warnings":["results truncated due to limit"]}`)

	env.requireJSON(t, "/api/v1/label/%FF/values", http.StatusBadRequest,
		`{"status":"error","errorType":"bad_data","error":"invalid label name: \"\\xff\""}`)
	// Validation applies to the unescaped name, as in Prometheus.
	env.requireJSON(t, "/api/v1/label/U__service_2e_name%FF/values", http.StatusBadRequest,
		`{"status":"error","errorType":"bad_data","error":"invalid label name: \"service.name\\xff\""}`)
	env.requireJSON(t, "/api/v1/label/job/values?match[]="+q("up{"), http.StatusBadRequest,
		`{"status":"error","errorType":"bad_data","error":"1:4: parse error: unexpected end of input inside braces"}`)
	env.requireJSON(t, "/api/v1/label/job/values?limit=-1", http.StatusBadRequest,
		`{"status":"error","errorType":"bad_data","error":"invalid parameter \"limit\": limit must be non-negative"}`)

	// Only GET, as in Prometheus.
	status, _, _ := env.postForm(t, "/api/v1/label/job/values", nil)
	require.Equal(t, http.StatusMethodNotAllowed, status)

	vals, _, _, err := env.prom.LabelValues(context.Background(), "service.name", nil, time.Time{}, time.Time{})
	require.NoError(t, err)
	require.Equal(t, model.LabelValues{"checkout"}, vals)
}

func testMetadata(t *testing.T, env *testEnv) {
	ok := func(query, wantData string) {
		t.Helper()
		env.requireJSON(t, "/api/v1/metadata"+query, http.StatusOK, `{"status":"success","data":`+wantData+`}`)
	}
	const (
		reqs = `"http_requests_total":[{"type":"counter","unit":"requests","help":"Requests served."},{"type":"counter","unit":"","help":"Requests handled."}]`
		up   = `"up":[{"type":"gauge","unit":"","help":"Whether the target is up."}]`
	)
	ok("", `{`+reqs+`,`+up+`}`)
	ok("?limit=1", `{`+reqs+`}`)
	ok("?limit=0", `{}`)
	ok("?limit=-1", `{`+reqs+`,`+up+`}`)
	ok("?limit_per_metric=1", `{"http_requests_total":[{"type":"counter","unit":"requests","help":"Requests served."}],`+up+`}`)
	ok("?metric=up", `{`+up+`}`)
	ok("?metric=nonexistent", `{}`)

	env.requireJSON(t, "/api/v1/metadata?limit=x", http.StatusBadRequest,
		`{"status":"error","errorType":"bad_data","error":"limit must be a number"}`)
	env.requireJSON(t, "/api/v1/metadata?limit_per_metric=x", http.StatusBadRequest,
		`{"status":"error","errorType":"bad_data","error":"limit_per_metric must be a number"}`)

	md, err := env.prom.Metadata(context.Background(), "up", "")
	require.NoError(t, err)
	require.Equal(t, map[string][]promv1.Metadata{"up": {{Type: promv1.MetricTypeGauge, Help: "Whether the target is up."}}}, md)
}

// jsonString is s as a JSON string, HTML-escaped like the API's errors.
func jsonString(s string) string {
	return string(appendString(nil, s, true))
}

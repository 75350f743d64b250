package api

import (
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/stretchr/testify/require"
)

func testFederate(t *testing.T, env *testEnv) {
	status, ctype, body := env.get(t, "/federate?match[]="+q(`{job="api"}`))
	require.Equal(t, http.StatusOK, status)
	require.Equal(t, "text/plain; version=0.0.4; charset=utf-8; escaping=underscores", ctype)
	// Sorted by name, latest sample with its timestamp, instance="" added
	// where missing, the NHCB as a classic histogram and the exponential
	// native histogram (test_histogram) left out of the text format.
	require.Equal(t, `# TYPE http_requests_total untyped
http_requests_total{code="200",job="api",instance=""} 200 300000
http_requests_total{code="500",job="api",instance=""} 20 300000
# TYPE nhcb_metric histogram
nhcb_metric_bucket{job="api",instance="",le="1"} 1 300000
nhcb_metric_bucket{job="api",instance="",le="2"} 3 300000
nhcb_metric_bucket{job="api",instance="",le="+Inf"} 3 300000
nhcb_metric_sum{job="api",instance=""} 5 300000
nhcb_metric_count{job="api",instance=""} 3 300000
# TYPE up untyped
up{instance="a",job="api"} 1 300000
up{instance="b",job="api"} 0 300000
`, body)

	// Several selectors are merged; a series whose last sample is a stale
	// marker is dropped.
	_, _, body = env.get(t, "/federate?match[]="+q(`up{instance="b"}`)+"&match[]=stale_metric&match[]="+q(`{"foo.bar"}`))
	require.Equal(t, `# TYPE foo_bar untyped
foo_bar{service_name="checkout",instance=""} 42 300000
# TYPE up untyped
up{instance="b",job="api"} 0 300000
`, body)
	_, _, body = env.get(t, "/federate?match[]=stale_metric")
	require.Empty(t, body)
	status, _, body = env.get(t, "/federate")
	require.Equal(t, http.StatusOK, status)
	require.Empty(t, body)

	// UTF-8 names pass through when the client allows them. (Text 1.0.0 is
	// not offered, so the answer is 0.0.4 with the requested escaping, as
	// from Prometheus.)
	status, hdr, body := env.do(t, http.MethodGet, "/federate?match[]="+q(`{"foo.bar"}`),
		http.Header{"Accept": {"text/plain;version=1.0.0;escaping=allow-utf-8"}})
	require.Equal(t, http.StatusOK, status)
	require.Equal(t, "text/plain; version=0.0.4; charset=utf-8; escaping=allow-utf-8", hdr.Get("Content-Type"))
	require.Equal(t, `# TYPE "foo.bar" untyped
{"foo.bar","service.name"="checkout",instance=""} 42 300000
`, body)

	status, _, body = env.get(t, "/federate?match[]="+q("up{"))
	require.Equal(t, http.StatusBadRequest, status)
	require.Equal(t, "1:4: parse error: unexpected end of input inside braces", body)
}

func testFederateProtobuf(t *testing.T, env *testEnv) {
	format := expfmt.NewFormat(expfmt.TypeProtoDelim)
	status, hdr, body := env.do(t, http.MethodGet, "/federate?match[]="+q(`{job="api"}`), http.Header{"Accept": {string(format)}})
	require.Equal(t, http.StatusOK, status)
	require.True(t, strings.HasPrefix(hdr.Get("Content-Type"), string(format)), hdr.Get("Content-Type"))

	dec := expfmt.NewDecoder(strings.NewReader(body), format)
	fams := map[string]*dto.MetricFamily{}
	var names []string
	for {
		var mf dto.MetricFamily
		err := dec.Decode(&mf)
		if errors.Is(err, io.EOF) {
			break
		}
		require.NoError(t, err)
		fams[mf.GetName()] = &mf
		names = append(names, mf.GetName())
	}
	// Protobuf carries the exponential native histogram too.
	require.Equal(t, []string{"http_requests_total", "nhcb_metric", "test_histogram", "up"}, names)

	h := fams["test_histogram"]
	require.Equal(t, dto.MetricType_HISTOGRAM, h.GetType())
	require.Len(t, h.Metric, 1)
	m := h.Metric[0]
	require.Equal(t, int64(300000), m.GetTimestampMs())
	var lbls []string
	for _, l := range m.Label {
		lbls = append(lbls, l.GetName()+"="+l.GetValue())
	}
	require.Equal(t, []string{"job=api", "instance="}, lbls)
	hist := m.GetHistogram()
	require.Equal(t, 84.0, hist.GetSampleCountFloat())
	require.Equal(t, 210.0, hist.GetSampleSum())
	require.Equal(t, int32(0), hist.GetSchema())
	require.Equal(t, 0.001, hist.GetZeroThreshold())
	require.Equal(t, 21.0, hist.GetZeroCountFloat())
	require.Len(t, hist.GetPositiveSpan(), 1)
	require.Equal(t, int32(0), hist.GetPositiveSpan()[0].GetOffset())
	require.Equal(t, uint32(2), hist.GetPositiveSpan()[0].GetLength())
	require.Equal(t, []float64{42, 21}, hist.GetPositiveCount())

	nhcb := fams["nhcb_metric"].Metric[0].GetHistogram()
	require.Len(t, nhcb.Bucket, 2)
	require.Equal(t, 1.0, nhcb.Bucket[0].GetUpperBound())
	require.Equal(t, 1.0, nhcb.Bucket[0].GetCumulativeCountFloat())
	require.Equal(t, 3.0, nhcb.Bucket[1].GetCumulativeCountFloat())

	up := fams["up"]
	require.Equal(t, dto.MetricType_UNTYPED, up.GetType())
	require.Len(t, up.Metric, 2)
	require.Equal(t, 1.0, up.Metric[0].GetUntyped().GetValue())
}

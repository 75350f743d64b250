package remotewrite

import (
	"fmt"
	"testing"

	"github.com/prometheus/prometheus/prompb"
	writev2 "github.com/prometheus/prometheus/prompb/io/prometheus/write/v2"
	"github.com/stretchr/testify/require"
	"github.com/valyala/fasthttp"
)

// benchSeriesLabels returns a label set shaped like a Kubernetes scrape:
// 9 labels, ~230 bytes.
func benchSeriesLabels(i int) []string {
	return []string{
		"__name__", fmt.Sprintf("container_cpu_usage_seconds_%d_total", i%50),
		"container", fmt.Sprintf("app-%d", i%7),
		"cpu", "total",
		"id", fmt.Sprintf("/kubepods/burstable/pod%08x-1234-5678-9abc-def012345678", i),
		"image", "registry.example.com/team/app:v1.2.3",
		"instance", fmt.Sprintf("10.0.%d.%d:10250", i/256%256, i%256),
		"job", "kubelet",
		"namespace", "production",
		"pod", fmt.Sprintf("app-%d-5d8f7c9b4-x%04d", i%7, i),
	}
}

// benchV1 builds a 1.0 request of series×samplesPerSeries samples.
func benchV1(series, samplesPerSeries int) *prompb.WriteRequest {
	req := &prompb.WriteRequest{}
	for i := range series {
		ts := prompb.TimeSeries{Labels: lbls(benchSeriesLabels(i)...)}
		for j := range samplesPerSeries {
			ts.Samples = append(ts.Samples, prompb.Sample{Value: float64(i*j) * 1.5, Timestamp: 1700000000000 + int64(j)*15000})
		}
		req.Timeseries = append(req.Timeseries, ts)
	}
	return req
}

func benchV2(series, samplesPerSeries int) *writev2.Request {
	b := newV2Builder()
	for i := range series {
		ts := writev2.TimeSeries{
			LabelsRefs: b.refs(benchSeriesLabels(i)...),
			Metadata: writev2.Metadata{
				Type:    writev2.Metadata_METRIC_TYPE_COUNTER,
				HelpRef: b.syms.Symbolize("Cumulative cpu time consumed in seconds."),
				UnitRef: b.syms.Symbolize("seconds"),
			},
		}
		for j := range samplesPerSeries {
			ts.Samples = append(ts.Samples, writev2.Sample{Value: float64(i*j) * 1.5, Timestamp: 1700000000000 + int64(j)*15000})
		}
		b.add(ts)
	}
	return b.build()
}

// BenchmarkHandle measures a whole request through Handle: snappy, decode,
// labels, append to a no-op storage, Commit, response. 2000 samples per
// request, as in Prometheus' default max_samples_per_send.
func BenchmarkHandle(b *testing.B) {
	for _, c := range []struct {
		name              string
		series, perSeries int
		v2                bool
	}{
		{"v1/2000x1", 2000, 1, false},
		{"v1/200x10", 200, 10, false},
		{"v2/2000x1", 2000, 1, true},
		{"v2/200x10", 200, 10, true},
	} {
		b.Run(c.name, func(b *testing.B) {
			h, _ := newTestHandler(b, Config{}, nopStorage{})
			var raw []byte
			ct := ctV1
			if c.v2 {
				raw = marshalV2(b, benchV2(c.series, c.perSeries))
				ct = ctV2
			} else {
				raw = marshalV1(b, benchV1(c.series, c.perSeries))
			}
			body := snappyBody(raw)

			var req fasthttp.Request
			req.Header.SetMethod(fasthttp.MethodPost)
			req.SetRequestURI("/api/v1/write")
			req.Header.SetContentType(ct)
			req.Header.Set(fasthttp.HeaderContentEncoding, "snappy")
			req.SetBody(body)
			var ctx fasthttp.RequestCtx
			ctx.Init(&req, nil, nil)
			h.Handle(&ctx)
			require.Equal(b, 204, ctx.Response.StatusCode(), string(ctx.Response.Body()))

			samples := c.series * c.perSeries
			b.SetBytes(int64(len(raw)))
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				ctx.Response.Reset()
				h.Handle(&ctx)
			}
			b.StopTimer()
			require.Equal(b, 204, ctx.Response.StatusCode())
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*samples), "ns/sample")
		})
	}
}

// BenchmarkDecode compares the decoders with prompb's generated Unmarshal
// (which also allocates every string and slice) on the uncompressed body.
func BenchmarkDecode(b *testing.B) {
	v1 := marshalV1(b, benchV1(2000, 1))
	v2 := marshalV2(b, benchV2(2000, 1))
	report := func(b *testing.B) {
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*2000), "ns/sample")
	}
	b.Run("kiln/v1", func(b *testing.B) {
		var r Request
		b.SetBytes(int64(len(v1)))
		b.ReportAllocs()
		for b.Loop() {
			if err := DecodeV1(v1, &r); err != nil {
				b.Fatal(err)
			}
		}
		report(b)
	})
	b.Run("prompb/v1", func(b *testing.B) {
		b.SetBytes(int64(len(v1)))
		b.ReportAllocs()
		for b.Loop() {
			var r prompb.WriteRequest
			if err := r.Unmarshal(v1); err != nil {
				b.Fatal(err)
			}
		}
		report(b)
	})
	b.Run("kiln/v2", func(b *testing.B) {
		var r Request
		b.SetBytes(int64(len(v2)))
		b.ReportAllocs()
		for b.Loop() {
			if err := DecodeV2(v2, &r); err != nil {
				b.Fatal(err)
			}
		}
		report(b)
	})
	b.Run("prompb/v2", func(b *testing.B) {
		b.SetBytes(int64(len(v2)))
		b.ReportAllocs()
		for b.Loop() {
			var r writev2.Request
			if err := r.Unmarshal(v2); err != nil {
				b.Fatal(err)
			}
		}
		report(b)
	})
}

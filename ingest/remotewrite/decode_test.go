package remotewrite

import (
	"math"
	"strconv"
	"strings"
	"testing"

	"github.com/prometheus/prometheus/model/histogram"
	"github.com/prometheus/prometheus/model/value"
	"github.com/prometheus/prometheus/prompb"
	writev2 "github.com/prometheus/prometheus/prompb/io/prometheus/write/v2"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/encoding/protowire"
)

// v1Requests are round-trip cases, also used as fuzz seeds.
func v1Requests() map[string]*prompb.WriteRequest {
	return map[string]*prompb.WriteRequest{
		"empty": {},
		"floats": {Timeseries: []prompb.TimeSeries{
			{
				Labels: lbls("__name__", "up", "instance", "a:9090", "job", "node"),
				Samples: []prompb.Sample{
					{Value: 1, Timestamp: 1000},
					{Value: 0, Timestamp: 0},
					{Value: -3.5e300, Timestamp: -5},
					{Value: math.Float64frombits(value.StaleNaN), Timestamp: 3000},
					{Value: math.NaN(), Timestamp: 4000},
					{Value: math.Inf(-1), Timestamp: math.MaxInt64},
				},
			},
			{Labels: lbls("__name__", "x", "z", "ünïcödé ✓"), Samples: []prompb.Sample{{Value: 2, Timestamp: 1}}},
		}},
		"unsorted and empty values": {Timeseries: []prompb.TimeSeries{{
			Labels:  lbls("job", "j", "empty", "", "__name__", "m", "a", "b"),
			Samples: []prompb.Sample{{Value: 1, Timestamp: 1}},
		}}},
		"invalid labels": {Timeseries: []prompb.TimeSeries{
			{Labels: lbls("job", "no name"), Samples: []prompb.Sample{{Value: 1, Timestamp: 1}}},
			{Labels: lbls("__name__", "dup", "a", "1", "a", "2"), Samples: []prompb.Sample{{Value: 1, Timestamp: 1}}},
			{Labels: lbls("__name__", "bad", "a", "\xff\xfe"), Samples: []prompb.Sample{{Value: 1, Timestamp: 1}}},
			{Labels: lbls("__name__", "emptyname", "", "v"), Samples: []prompb.Sample{{Value: 1, Timestamp: 1}}},
			{Labels: lbls("__name__", "ok"), Samples: []prompb.Sample{{Value: 1, Timestamp: 1}}},
		}},
		"histograms": {Timeseries: []prompb.TimeSeries{
			{
				Labels: lbls("__name__", "h"),
				Histograms: []prompb.Histogram{
					prompb.FromIntHistogram(1000, fixIntHistogramCount(testIntHistogram(1))),
					prompb.FromIntHistogram(2000, &histogram.Histogram{Sum: math.Float64frombits(value.StaleNaN)}),
				},
			},
			{
				Labels: lbls("__name__", "fh"),
				Histograms: []prompb.Histogram{
					prompb.FromFloatHistogram(1000, fixIntHistogramCount(testIntHistogram(2)).ToFloat(nil)),
					prompb.FromFloatHistogram(2000, testNHCB()),
				},
			},
		}},
		"exemplars": {Timeseries: []prompb.TimeSeries{
			{
				Labels:    lbls("__name__", "req_total"),
				Samples:   []prompb.Sample{{Value: 5, Timestamp: 1000}},
				Exemplars: []prompb.Exemplar{{Labels: lbls("trace_id", "abc", "span_id", "1"), Value: 0.5, Timestamp: 1000}},
			},
			{
				Labels:    lbls("__name__", "req_total"),
				Exemplars: []prompb.Exemplar{{Labels: lbls("trace_id", "def"), Value: 0.7, Timestamp: 999}},
			},
			{
				Labels:    lbls("__name__", "bad_ex"),
				Samples:   []prompb.Sample{{Value: 5, Timestamp: 1000}},
				Exemplars: []prompb.Exemplar{{Labels: lbls("a", "1", "a", "2"), Value: 1, Timestamp: 1}},
			},
		}},
		"metadata": {
			Timeseries: []prompb.TimeSeries{{Labels: lbls("__name__", "http_requests_total"), Samples: []prompb.Sample{{Value: 1, Timestamp: 1}}}},
			Metadata: []prompb.MetricMetadata{
				{Type: prompb.MetricMetadata_COUNTER, MetricFamilyName: "http_requests_total", Help: "Requests.", Unit: ""},
				{Type: prompb.MetricMetadata_HISTOGRAM, MetricFamilyName: "latency_seconds", Help: "Latency.", Unit: "seconds"},
				{Type: prompb.MetricMetadata_GAUGEHISTOGRAM, MetricFamilyName: "gh"},
				{Type: prompb.MetricMetadata_MetricType(42), MetricFamilyName: "weird"},
			},
		},
	}
}

func v2Requests() map[string]*writev2.Request {
	out := map[string]*writev2.Request{"empty": {}}

	b := newV2Builder()
	b.add(writev2.TimeSeries{
		LabelsRefs: b.refs("__name__", "up", "instance", "a:9090", "job", "node"),
		Samples: []writev2.Sample{
			{Value: 1, Timestamp: 1000, StartTimestamp: 500},
			{Value: math.Float64frombits(value.StaleNaN), Timestamp: 2000},
			{Value: math.Inf(1), Timestamp: -1, StartTimestamp: -1},
		},
		Metadata: writev2.Metadata{Type: writev2.Metadata_METRIC_TYPE_GAUGE, HelpRef: b.syms.Symbolize("Up."), UnitRef: 0},
	})
	b.add(writev2.TimeSeries{
		LabelsRefs: b.refs("__name__", "latency_seconds", "le", "0.5"),
		Histograms: []writev2.Histogram{
			writev2.FromIntHistogram(100, 1000, fixIntHistogramCount(testIntHistogram(3))),
			writev2.FromFloatHistogram(0, 2000, testNHCB()),
		},
		Exemplars: []writev2.Exemplar{{LabelsRefs: b.refs("trace_id", "t1"), Value: 0.3, Timestamp: 1000}},
		Metadata: writev2.Metadata{
			Type:    writev2.Metadata_METRIC_TYPE_HISTOGRAM,
			HelpRef: b.syms.Symbolize("Latency."),
			UnitRef: b.syms.Symbolize("seconds"),
		},
	})
	b.add(writev2.TimeSeries{ // exemplar-only, as Prometheus' queue manager sends
		LabelsRefs: b.refs("__name__", "up", "instance", "a:9090", "job", "node"),
		Exemplars:  []writev2.Exemplar{{LabelsRefs: b.refs("trace_id", "t2"), Value: 1, Timestamp: 1000}},
	})
	out["mixed"] = b.build()

	b = newV2Builder()
	good := b.refs("__name__", "good")
	b.add(writev2.TimeSeries{LabelsRefs: []uint32{0, 999}, Samples: []writev2.Sample{{Value: 1, Timestamp: 1}}})
	b.add(writev2.TimeSeries{LabelsRefs: good[:1], Samples: []writev2.Sample{{Value: 1, Timestamp: 1}}})
	b.add(writev2.TimeSeries{LabelsRefs: good, Samples: []writev2.Sample{{Value: 1, Timestamp: 1}}, Metadata: writev2.Metadata{HelpRef: 999}})
	b.add(writev2.TimeSeries{LabelsRefs: good})
	b.add(writev2.TimeSeries{LabelsRefs: good, Samples: []writev2.Sample{{Value: 1, Timestamp: 1}},
		Histograms: []writev2.Histogram{writev2.FromFloatHistogram(0, 1, testNHCB())}})
	b.add(writev2.TimeSeries{LabelsRefs: good, Samples: []writev2.Sample{{Value: 1, Timestamp: 1}},
		Exemplars: []writev2.Exemplar{{LabelsRefs: []uint32{1, 12345}, Value: 1, Timestamp: 1}}})
	b.add(writev2.TimeSeries{LabelsRefs: good, Samples: []writev2.Sample{{Value: 2, Timestamp: 2}}})
	out["invalid"] = b.build()
	return out
}

func TestDecodeV1RoundTrip(t *testing.T) {
	var r Request // reused across cases on purpose: reset must be complete
	for name, req := range v1Requests() {
		t.Run(name, func(t *testing.T) {
			buf := marshalV1(t, req)
			require.NoError(t, DecodeV1(buf, &r))
			var pb prompb.WriteRequest
			require.NoError(t, pb.Unmarshal(buf))
			require.NoError(t, diffV1(&pb, &r))
		})
	}
}

func TestDecodeV2RoundTrip(t *testing.T) {
	var r Request
	for name, req := range v2Requests() {
		t.Run(name, func(t *testing.T) {
			buf := marshalV2(t, req)
			require.NoError(t, DecodeV2(buf, &r))
			var pb writev2.Request
			require.NoError(t, pb.Unmarshal(buf))
			require.NoError(t, diffV2(&pb, &r))
		})
	}
}

func TestDecodeV1Details(t *testing.T) {
	var r Request
	require.NoError(t, DecodeV1(marshalV1(t, v1Requests()["unsorted and empty values"]), &r))
	require.Len(t, r.Timeseries, 1)
	ts := r.Timeseries[0]
	require.NoError(t, ts.Err)
	require.Equal(t, []Label{{Name: "__name__", Value: "m"}, {Name: "a", Value: "b"}, {Name: "job", Value: "j"}}, ts.Labels)
	require.Equal(t, "m", ts.MetricName())

	require.NoError(t, DecodeV1(marshalV1(t, v1Requests()["invalid labels"]), &r))
	require.Len(t, r.Timeseries, 5)
	for i, want := range []string{"missing __name__", `duplicate label name "a"`, "not valid UTF-8", "empty label name", ""} {
		if want == "" {
			require.NoError(t, r.Timeseries[i].Err)
			continue
		}
		require.ErrorIs(t, r.Timeseries[i].Err, ErrInvalidLabels)
		require.ErrorContains(t, r.Timeseries[i].Err, want)
	}

	require.NoError(t, DecodeV1(marshalV1(t, v1Requests()["floats"]), &r))
	require.Equal(t, value.StaleNaN, math.Float64bits(r.Timeseries[0].Samples[3].Value))
}

func TestDecodeV2Details(t *testing.T) {
	var r Request
	require.NoError(t, DecodeV2(marshalV2(t, v2Requests()["invalid"]), &r))
	require.Len(t, r.Timeseries, 7)
	wantErrs := []struct {
		is  error
		msg string
	}{
		{ErrInvalidLabels, "outside of symbols table"},
		{ErrInvalidLabels, "odd number of label refs"},
		{ErrInvalidSeries, "help_ref 999"},
		{ErrInvalidSeries, "no samples or histograms"},
		{ErrInvalidSeries, "both samples and histograms"},
		{nil, ""},
		{nil, ""},
	}
	for i, w := range wantErrs {
		if w.is == nil {
			require.NoError(t, r.Timeseries[i].Err, "series %d", i)
			continue
		}
		require.ErrorIs(t, r.Timeseries[i].Err, w.is, "series %d", i)
		require.ErrorContains(t, r.Timeseries[i].Err, w.msg, "series %d", i)
	}
	require.ErrorIs(t, r.Timeseries[5].Exemplars[0].Err, ErrInvalidExemplar)

	require.NoError(t, DecodeV2(marshalV2(t, v2Requests()["mixed"]), &r))
	require.Equal(t, 1, r.exemplarOnly)
	require.Equal(t, Metadata{Type: "histogram", Help: "Latency.", Unit: "seconds"}, r.Timeseries[1].Metadata)
}

func TestDecodeWrongMessage(t *testing.T) {
	var r Request
	v2 := marshalV2(t, v2Requests()["mixed"])
	require.ErrorIs(t, DecodeV1(v2, &r), ErrWrongMessage)
	v1 := marshalV1(t, v1Requests()["floats"])
	require.ErrorIs(t, DecodeV2(v1, &r), ErrWrongMessage)
	// 1.0 metadata alone (field 3) is also recognised.
	require.ErrorIs(t, DecodeV2(marshalV1(t, &prompb.WriteRequest{Metadata: []prompb.MetricMetadata{{MetricFamilyName: "x"}}}), &r), ErrWrongMessage)
}

func TestDecodeMalformed(t *testing.T) {
	valid := marshalV1(t, v1Requests()["histograms"])
	var r Request
	for n := range len(valid) {
		// Every strict prefix that prompb rejects, Kiln must reject.
		var pb prompb.WriteRequest
		if pb.Unmarshal(valid[:n]) != nil {
			require.ErrorIs(t, DecodeV1(valid[:n], &r), ErrMalformed, "prefix %d", n)
		}
	}
	require.ErrorIs(t, DecodeV1([]byte{0x0a, 0xff}, &r), ErrMalformed)
	require.ErrorIs(t, DecodeV1([]byte{0x08, 0x01}, &r) /* field 1 as varint */, ErrMalformed)
	require.ErrorIs(t, DecodeV2([]byte{0x22, 0x01, 'x'}, &r), ErrInvalidSymbols)
}

// TestDecodeNonCanonical feeds encodings that Prometheus' marshaller never
// produces but that protobuf allows: unpacked repeated scalars, interleaved
// repeated fields, repeated (last-wins / merged) fields, unknown fields and
// groups. prompb is the reference.
func TestDecodeNonCanonical(t *testing.T) {
	var (
		str = func(b []byte, f protowire.Number, s string) []byte {
			return protowire.AppendString(protowire.AppendTag(b, f, protowire.BytesType), s)
		}
		msg = func(b []byte, f protowire.Number, m []byte) []byte {
			return protowire.AppendBytes(protowire.AppendTag(b, f, protowire.BytesType), m)
		}
		varint = func(b []byte, f protowire.Number, v uint64) []byte {
			return protowire.AppendVarint(protowire.AppendTag(b, f, protowire.VarintType), v)
		}
		double = func(b []byte, f protowire.Number, v float64) []byte {
			return protowire.AppendFixed64(protowire.AppendTag(b, f, protowire.Fixed64Type), math.Float64bits(v))
		}
		group = func(b []byte, f protowire.Number) []byte {
			b = protowire.AppendTag(b, f, protowire.StartGroupType)
			b = varint(b, 1, 7)
			b = protowire.AppendTag(b, 2, protowire.StartGroupType)
			b = protowire.AppendTag(b, 2, protowire.EndGroupType)
			return protowire.AppendTag(b, f, protowire.EndGroupType)
		}
	)

	t.Run("v1", func(t *testing.T) {
		var hist []byte
		hist = varint(hist, 1, 5)                                  // count_int
		hist = protowire.AppendTag(hist, 12, protowire.VarintType) // positive_deltas, unpacked...
		hist = protowire.AppendVarint(hist, protowire.EncodeZigZag(2))
		hist = protowire.AppendTag(hist, 9, protowire.VarintType) // ...interleaved with negative_deltas
		hist = protowire.AppendVarint(hist, protowire.EncodeZigZag(1))
		hist = protowire.AppendTag(hist, 12, protowire.VarintType)
		hist = protowire.AppendVarint(hist, protowire.EncodeZigZag(-1))
		hist = msg(hist, 11, varint(varint(nil, 1, protowire.EncodeZigZag(-3)), 2, 2))
		hist = msg(hist, 8, varint(nil, 2, 1))
		hist = double(hist, 3, 1.5)
		hist = varint(hist, 4, protowire.EncodeZigZag(-53))
		hist = double(hist, 16, 0.25) // custom_values unpacked
		hist = double(hist, 16, 0.75)
		hist = varint(hist, 15, 77)
		hist = group(hist, 99)

		var label1 []byte
		label1 = str(label1, 2, "first")
		label1 = str(label1, 1, "__name__")
		label1 = str(label1, 2, "m") // last wins
		var sample []byte
		sample = varint(sample, 2, 10)
		sample = double(sample, 1, 3)
		sample = varint(sample, 2, 20) // last wins
		sample = varint(sample, 99, 1) // unknown

		var ts []byte
		ts = msg(ts, 2, sample)
		ts = msg(ts, 1, label1)
		ts = msg(ts, 4, hist)
		ts = msg(ts, 1, str(str(nil, 1, "b"), 2, "x"))
		ts = group(ts, 50)

		var req []byte
		req = msg(req, 1, ts)
		req = varint(req, 2, 1) // reserved field, unknown to both
		req = group(req, 7)
		req = msg(req, 3, str(varint(nil, 1, 1), 2, "m"))

		var pb prompb.WriteRequest
		require.NoError(t, pb.Unmarshal(req))
		var r Request
		require.NoError(t, DecodeV1(req, &r))
		require.NoError(t, diffV1(&pb, &r))
		require.NoError(t, r.Timeseries[0].Err)
		require.Equal(t, []int64{2, -1}, r.Timeseries[0].Histograms[0].PositiveDeltas)
		require.Equal(t, []float64{0.25, 0.75}, r.Timeseries[0].Histograms[0].CustomValues)
	})

	t.Run("v2", func(t *testing.T) {
		var md []byte
		md = varint(md, 1, 1)
		var md2 []byte
		md2 = varint(md2, 3, 2) // merges with md

		var ts []byte
		ts = varint(ts, 1, 1) // labels_refs unpacked, split around other fields
		ts = msg(ts, 5, md)
		ts = msg(ts, 2, varint(double(nil, 1, 4), 3, 9))
		ts = varint(ts, 1, 3)
		ts = msg(ts, 5, md2)
		ts = msg(ts, 4, msg(double(nil, 2, 1), 1, protowire.AppendVarint(protowire.AppendVarint(nil, 4), 5)))

		var req []byte
		req = msg(req, 5, ts) // series before the symbols they reference
		for _, s := range []string{"", "__name__", "help", "m", "trace_id", "t"} {
			req = str(req, 4, s)
		}
		req = group(req, 9)

		var pb writev2.Request
		require.NoError(t, pb.Unmarshal(req))
		var r Request
		require.NoError(t, DecodeV2(req, &r))
		require.NoError(t, diffV2(&pb, &r))
		require.NoError(t, r.Timeseries[0].Err)
		require.Equal(t, Metadata{Type: "counter", Help: "help"}, r.Timeseries[0].Metadata)
	})

	t.Run("mixed histogram", func(t *testing.T) {
		var hist []byte
		hist = varint(hist, 1, 5)
		hist = double(hist, 2, 5) // both oneof members: prompb keeps the last
		var req []byte
		req = msg(req, 1, msg(msg(nil, 1, str(str(nil, 1, "__name__"), 2, "h")), 4, hist))
		var r Request
		require.NoError(t, DecodeV1(req, &r))
		require.ErrorIs(t, r.Timeseries[0].Histograms[0].Err, ErrInvalidHistogram)
	})
}

// TestAmplificationRealistic pins down the claim behind maxAmplification:
// realistic requests decode to well under its limit.
func TestAmplificationRealistic(t *testing.T) {
	small := newV2Builder() // the smallest useful series: two labels, one sample
	for i := range 1000 {
		small.add(writev2.TimeSeries{
			LabelsRefs: small.refs("__name__", "m"+strconv.Itoa(i%100), "i", strconv.Itoa(i%50)),
			Samples:    []writev2.Sample{{Value: 1, Timestamp: 1700000000000}},
		})
	}
	var r Request
	for name, body := range map[string][]byte{
		"v1 kubernetes":    marshalV1(t, benchV1(2000, 1)),
		"v1 10 per series": marshalV1(t, benchV1(200, 10)),
		"v2 kubernetes":    marshalV2(t, benchV2(2000, 1)),
		"v2 minimal":       marshalV2(t, small.build()),
	} {
		var err error
		if strings.HasPrefix(name, "v1") {
			err = DecodeV1(body, &r)
		} else {
			err = DecodeV2(body, &r)
		}
		require.NoError(t, err)
		ratio := float64(r.mem) / float64(len(body))
		t.Logf("%s: %d bytes decode to %d (%.1f×)", name, len(body), r.mem, ratio)
		require.Less(t, ratio, maxAmplification/2.0, name)
	}
}

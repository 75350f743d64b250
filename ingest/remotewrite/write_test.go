package remotewrite

import (
	"fmt"
	"math"
	"strconv"
	"testing"
	"time"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/histogram"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/metadata"
	"github.com/prometheus/prometheus/model/value"
	"github.com/prometheus/prometheus/prompb"
	writev2 "github.com/prometheus/prometheus/prompb/io/prometheus/write/v2"
	"github.com/prometheus/prometheus/storage"
	"github.com/stretchr/testify/require"
)

func TestWriteV1Samples(t *testing.T) {
	st := &fakeStorage{}
	h, _ := newTestHandler(t, Config{}, st)
	res := postV1(h, &prompb.WriteRequest{Timeseries: []prompb.TimeSeries{
		{
			Labels: lbls("job", "j", "__name__", "up", "empty", ""),
			Samples: []prompb.Sample{
				{Value: 1, Timestamp: 1000},
				{Value: math.Float64frombits(value.StaleNaN), Timestamp: 2000},
			},
		},
		{Labels: lbls("__name__", "nothing")}, // empty 1.0 series: nothing to write, not an error
	}})
	require.Equal(t, 204, res.code, res.body)
	got := st.all()
	require.Len(t, got, 2)
	require.Equal(t, labels.FromStrings("__name__", "up", "job", "j"), got[0].ls)
	require.Equal(t, int64(1000), got[0].t)
	require.Equal(t, 1.0, got[0].v)
	require.Equal(t, value.StaleNaN, math.Float64bits(got[1].v), "stale marker bits preserved")
	require.Zero(t, got[0].st)
}

// TestLabelsOwned checks that the labels handed to storage do not alias the
// pooled decompression buffer, which the next request overwrites.
func TestLabelsOwned(t *testing.T) {
	st := &fakeStorage{}
	h, _ := newTestHandler(t, Config{}, st)
	for i := range 20 {
		res := postV1(h, &prompb.WriteRequest{Timeseries: []prompb.TimeSeries{
			{
				Labels:    lbls("__name__", "m"+strconv.Itoa(i), "v", fmt.Sprintf("%030d", i)),
				Samples:   []prompb.Sample{{Value: 1, Timestamp: int64(i)}},
				Exemplars: []prompb.Exemplar{{Labels: lbls("trace_id", fmt.Sprintf("%020d", i)), Value: 1, Timestamp: int64(i)}},
			},
		}})
		require.Equal(t, 204, res.code)
	}
	for i, a := range st.all() {
		require.Equal(t, labels.FromStrings("__name__", "m"+strconv.Itoa(i), "v", fmt.Sprintf("%030d", i)), a.ls)
		require.Len(t, a.exemplars, 1)
		require.Equal(t, labels.FromStrings("trace_id", fmt.Sprintf("%020d", i)), a.exemplars[0].Labels)
	}
}

func TestWriteV2SamplesAndStartTimestamp(t *testing.T) {
	st := &fakeStorage{}
	h, _ := newTestHandler(t, Config{}, st)
	b := newV2Builder()
	b.add(writev2.TimeSeries{
		LabelsRefs: b.refs("__name__", "c_total", "a", "b"),
		Samples:    []writev2.Sample{{Value: 3, Timestamp: 2000, StartTimestamp: 1000}, {Value: 4, Timestamp: 3000, StartTimestamp: 1000}},
		Metadata:   writev2.Metadata{Type: writev2.Metadata_METRIC_TYPE_COUNTER, HelpRef: b.syms.Symbolize("Things.")},
	})
	res := postV2(h, b.build())
	require.Equal(t, 204, res.code, res.body)
	require.Equal(t, "2/0/0", res.samples+"/"+res.histograms+"/"+res.exemplars)
	got := st.all()
	require.Len(t, got, 2)
	require.Equal(t, int64(1000), got[0].st)
	require.Equal(t, int64(3000), got[1].t)
	require.Equal(t, Metadata{Type: "counter", Help: "Things."}, got[0].meta)
	require.Equal(t, "c_total", got[0].family)
}

func TestWriteHistograms(t *testing.T) {
	st := &fakeStorage{}
	h, _ := newTestHandler(t, Config{}, st)

	ih := fixIntHistogramCount(testIntHistogram(1))
	hiRes := fixIntHistogramCount(testIntHistogram(2))
	hiRes.Schema = 10 // above the maximum: reduced, as Prometheus does
	invalid := testIntHistogram(3)
	invalid.Count = 1 // fewer than in the buckets

	b := newV2Builder()
	b.add(writev2.TimeSeries{
		LabelsRefs: b.refs("__name__", "h"),
		Histograms: []writev2.Histogram{
			writev2.FromIntHistogram(500, 1000, ih),
			writev2.FromIntHistogram(0, 2000, hiRes),
			writev2.FromIntHistogram(0, 3000, invalid),
		},
		Metadata: writev2.Metadata{Type: writev2.Metadata_METRIC_TYPE_HISTOGRAM},
	})
	b.add(writev2.TimeSeries{
		LabelsRefs: b.refs("__name__", "nhcb"),
		Histograms: []writev2.Histogram{writev2.FromFloatHistogram(0, 1000, testNHCB())},
	})
	res := postV2(h, b.build())
	require.Equal(t, 400, res.code, res.body)
	require.Contains(t, res.body, "histogram")
	require.Equal(t, "0/3/0", res.samples+"/"+res.histograms+"/"+res.exemplars)

	got := st.all()
	require.Len(t, got, 3)
	require.True(t, ih.Equals(got[0].h))
	require.Equal(t, int64(500), got[0].st)
	require.Nil(t, got[0].fh)
	require.Equal(t, histogram.ExponentialSchemaMax, got[1].h.Schema)
	require.Equal(t, hiRes.Count, got[1].h.Count)
	require.True(t, testNHCB().Equals(got[2].fh))
	require.Equal(t, "h", got[0].family)
}

func TestWriteV1Metadata(t *testing.T) {
	st := &fakeStorage{}
	h, _ := newTestHandler(t, Config{}, st)

	// Prometheus' queue manager ships metadata in its own requests.
	res := postV1(h, &prompb.WriteRequest{Metadata: []prompb.MetricMetadata{
		{Type: prompb.MetricMetadata_HISTOGRAM, MetricFamilyName: "req_duration_seconds", Help: "Duration.", Unit: "seconds"},
		{Type: prompb.MetricMetadata_COUNTER, MetricFamilyName: "req_total", Help: "Requests."},
	}})
	require.Equal(t, 204, res.code, res.body)
	require.Zero(t, st.appenders, "metadata-only requests open no appender")

	res = postV1(h, &prompb.WriteRequest{
		Timeseries: []prompb.TimeSeries{
			{Labels: lbls("__name__", "req_duration_seconds_bucket", "le", "1"), Samples: []prompb.Sample{{Value: 1, Timestamp: 1}}},
			{Labels: lbls("__name__", "req_total"), Samples: []prompb.Sample{{Value: 1, Timestamp: 1}}},
			{Labels: lbls("__name__", "g"), Samples: []prompb.Sample{{Value: 1, Timestamp: 1}}},
			{Labels: lbls("__name__", "unknown_metric"), Samples: []prompb.Sample{{Value: 1, Timestamp: 1}}},
		},
		// In-request metadata is used (and cached) too.
		Metadata: []prompb.MetricMetadata{{Type: prompb.MetricMetadata_GAUGE, MetricFamilyName: "g", Help: "G."}},
	})
	require.Equal(t, 204, res.code, res.body)
	got := st.all()
	require.Len(t, got, 4)
	require.Equal(t, "req_duration_seconds", got[0].family)
	require.Equal(t, Metadata{Type: "histogram", Help: "Duration.", Unit: "seconds"}, got[0].meta)
	require.Equal(t, "req_total", got[1].family)
	require.Equal(t, Metadata{Type: "counter", Help: "Requests."}, got[1].meta)
	require.Equal(t, Metadata{Type: "gauge", Help: "G."}, got[2].meta)
	require.Empty(t, got[3].family)
	require.Equal(t, Metadata{}, got[3].meta)
}

func TestWriteExemplars(t *testing.T) {
	t.Run("v1 exemplar-only series pair with their samples", func(t *testing.T) {
		st := &fakeStorage{}
		h, _ := newTestHandler(t, Config{}, st)
		res := postV1(h, &prompb.WriteRequest{Timeseries: []prompb.TimeSeries{
			{Labels: lbls("__name__", "a"), Samples: []prompb.Sample{{Value: 1, Timestamp: 1000}, {Value: 2, Timestamp: 2000}}},
			{Labels: lbls("__name__", "a"), Exemplars: []prompb.Exemplar{
				{Labels: lbls("trace_id", "late"), Value: 2, Timestamp: 2000},
				{Labels: lbls("trace_id", "early"), Value: 1, Timestamp: 1000},
				{Labels: lbls("trace_id", "between"), Value: 1.5, Timestamp: 1500},
			}},
			{Labels: lbls("__name__", "orphan"), Exemplars: []prompb.Exemplar{{Labels: lbls("trace_id", "x"), Value: 1, Timestamp: 1}}},
			{Labels: lbls("__name__", "bad_ex"), Samples: []prompb.Sample{{Value: 1, Timestamp: 1}},
				Exemplars: []prompb.Exemplar{{Labels: lbls("a", "1", "a", "2"), Value: 1, Timestamp: 1}}},
		}})
		// 1.0: exemplar losses are counted, not reported (Prometheus behaviour).
		require.Equal(t, 204, res.code, res.body)
		got := st.all()
		require.Len(t, got, 3)
		// Exemplars ride on the latest sample at or before them, sorted by time.
		require.Len(t, got[0].exemplars, 2)
		require.Equal(t, "early", got[0].exemplars[0].Labels.Get("trace_id"))
		require.Equal(t, "between", got[0].exemplars[1].Labels.Get("trace_id"))
		require.True(t, got[0].exemplars[0].HasTs)
		require.Len(t, got[1].exemplars, 1)
		require.Equal(t, "late", got[1].exemplars[0].Labels.Get("trace_id"))
		require.Empty(t, got[2].exemplars)
	})

	t.Run("v2", func(t *testing.T) {
		st := &fakeStorage{}
		h, _ := newTestHandler(t, Config{}, st)
		b := newV2Builder()
		series := b.refs("__name__", "a")
		b.add(writev2.TimeSeries{
			LabelsRefs: series,
			Samples:    []writev2.Sample{{Value: 1, Timestamp: 1000}},
			Exemplars:  []writev2.Exemplar{{LabelsRefs: b.refs("trace_id", "own"), Value: 1, Timestamp: 1000}},
		})
		b.add(writev2.TimeSeries{
			LabelsRefs: series,
			Exemplars:  []writev2.Exemplar{{LabelsRefs: b.refs("trace_id", "sibling"), Value: 1, Timestamp: 900}},
		})
		res := postV2(h, b.build())
		require.Equal(t, 204, res.code, res.body)
		require.Equal(t, "1/0/2", res.samples+"/"+res.histograms+"/"+res.exemplars)
		got := st.all()
		require.Len(t, got, 1)
		require.Len(t, got[0].exemplars, 2)
		require.Equal(t, "sibling", got[0].exemplars[0].Labels.Get("trace_id"))

		// Orphans and invalid exemplars are a 400 in 2.0.
		b = newV2Builder()
		b.add(writev2.TimeSeries{
			LabelsRefs: b.refs("__name__", "orphan"),
			Exemplars:  []writev2.Exemplar{{LabelsRefs: b.refs("trace_id", "x"), Value: 1, Timestamp: 1}},
		})
		b.add(writev2.TimeSeries{
			LabelsRefs: b.refs("__name__", "b"),
			Samples:    []writev2.Sample{{Value: 1, Timestamp: 1}},
			Exemplars:  []writev2.Exemplar{{LabelsRefs: []uint32{1, 9999}, Value: 1, Timestamp: 1}},
		})
		res = postV2(h, b.build())
		require.Equal(t, 400, res.code, res.body)
		require.Contains(t, res.body, "no sample")
		require.Contains(t, res.body, "outside of symbols table")
		require.Equal(t, "1/0/0", res.samples+"/"+res.histograms+"/"+res.exemplars)
	})

	t.Run("partial exemplar failure", func(t *testing.T) {
		st := &fakeStorage{appendErr: func(a *appended) error {
			return &storage.AppendPartialError{ExemplarErrors: []error{storage.ErrOutOfOrderExemplar}}
		}}
		h, _ := newTestHandler(t, Config{}, st)
		b := newV2Builder()
		b.add(writev2.TimeSeries{
			LabelsRefs: b.refs("__name__", "a"),
			Samples:    []writev2.Sample{{Value: 1, Timestamp: 1000}},
			Exemplars: []writev2.Exemplar{
				{LabelsRefs: b.refs("trace_id", "1"), Value: 1, Timestamp: 1000},
				{LabelsRefs: b.refs("trace_id", "2"), Value: 1, Timestamp: 1000},
			},
		})
		res := postV2(h, b.build())
		require.Equal(t, 400, res.code, res.body)
		require.Contains(t, res.body, "out of order exemplar")
		require.Equal(t, "1/0/1", res.samples+"/"+res.histograms+"/"+res.exemplars)
		require.Len(t, st.all(), 1, "the sample itself is committed")
	})
}

func TestStorageRejections(t *testing.T) {
	for _, proto := range []string{"v1", "v2"} {
		t.Run(proto, func(t *testing.T) {
			st := &fakeStorage{appendErr: func(a *appended) error {
				switch a.t {
				case 1:
					return storage.ErrOutOfOrderSample
				case 2:
					return fmt.Errorf("%w: below retention", storage.ErrOutOfBounds)
				case 3:
					return storage.ErrTooOldSample
				case 4:
					return storage.ErrDuplicateSampleForTimestamp
				}
				return nil
			}}
			h, _ := newTestHandler(t, Config{}, st)
			future := time.Now().Add(time.Hour).UnixMilli()
			ts := []int64{1, 2, 3, 4, 5, 6, future}

			var res response
			if proto == "v1" {
				samples := make([]prompb.Sample, len(ts))
				for i, t := range ts {
					samples[i] = prompb.Sample{Value: 1, Timestamp: t}
				}
				res = postV1(h, &prompb.WriteRequest{Timeseries: []prompb.TimeSeries{{Labels: lbls("__name__", "a"), Samples: samples}}})
			} else {
				samples := make([]writev2.Sample, len(ts))
				for i, t := range ts {
					samples[i] = writev2.Sample{Value: 1, Timestamp: t}
				}
				b := newV2Builder()
				b.add(writev2.TimeSeries{LabelsRefs: b.refs("__name__", "a"), Samples: samples})
				res = postV2(h, b.build())
				require.Equal(t, "2/0/0", res.samples+"/"+res.histograms+"/"+res.exemplars)
			}
			require.Equal(t, 400, res.code, res.body)
			require.Len(t, st.all(), 2, "valid samples are committed despite the rejections")
			for _, want := range []string{"5 samples", "out of order", "out of bounds", "too old", "duplicate", "timestamp " + strconv.FormatInt(future, 10)} {
				require.Contains(t, res.body, want)
			}
		})
	}
}

func TestErrorMessageBounded(t *testing.T) {
	st := &fakeStorage{appendErr: func(*appended) error { return storage.ErrOutOfOrderSample }}
	h, _ := newTestHandler(t, Config{}, st)
	req := &prompb.WriteRequest{}
	for i := range 1000 {
		req.Timeseries = append(req.Timeseries, prompb.TimeSeries{
			Labels: lbls("__name__", "a", "i", strconv.Itoa(i)), Samples: []prompb.Sample{{Value: 1, Timestamp: 1}},
		})
	}
	res := postV1(h, req)
	require.Equal(t, 400, res.code)
	require.Contains(t, res.body, "1000 samples")
	require.Contains(t, res.body, "and 992 more errors")
	require.Less(t, len(res.body), 2000)
}

func TestMetadataCacheBounded(t *testing.T) {
	c := newFamilyCache()
	for i := range familyShards*familyShardMax + 100 {
		c.put("f"+strconv.Itoa(i), metadata.Metadata{Type: model.MetricTypeCounter})
	}
	require.LessOrEqual(t, c.size.Load(), int64(familyShards*familyShardMax))
	var n int
	for i := range c.shards {
		n += len(c.shards[i].m)
	}
	require.Equal(t, int64(n), c.size.Load())
}

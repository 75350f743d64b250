package remotewrite

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/golang/snappy"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/exemplar"
	"github.com/prometheus/prometheus/model/histogram"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/prompb"
	writev2 "github.com/prometheus/prometheus/prompb/io/prometheus/write/v2"
	"github.com/prometheus/prometheus/storage"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	// fasthttp refreshes its cached Date header from a process-wide
	// goroutine that never exits once a server has started.
	goleak.VerifyTestMain(m, goleak.IgnoreAnyFunction("github.com/valyala/fasthttp.updateServerDate.func1"))
}

// appended is one recorded Append call.
type appended struct {
	ls        labels.Labels
	st, t     int64
	v         float64
	h         *histogram.Histogram
	fh        *histogram.FloatHistogram
	family    string
	meta      Metadata
	exemplars []exemplar.Exemplar
}

// fakeStorage is an AppendableV2 that records committed appends and injects
// errors: appendErr is consulted per Append (nil result = success).
type fakeStorage struct {
	mu        sync.Mutex
	committed []appended
	appenders int
	rollbacks int
	commitErr error
	appendErr func(a *appended) error
}

func (s *fakeStorage) AppenderV2(context.Context) storage.AppenderV2 {
	s.mu.Lock()
	s.appenders++
	s.mu.Unlock()
	return &fakeAppender{s: s}
}

func (s *fakeStorage) all() []appended {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.committed)
}

type fakeAppender struct {
	s       *fakeStorage
	pending []appended
	done    bool
}

func (a *fakeAppender) Append(_ storage.SeriesRef, ls labels.Labels, st, t int64, v float64, h *histogram.Histogram, fh *histogram.FloatHistogram, opts storage.AppendV2Options) (storage.SeriesRef, error) {
	if a.done {
		panic("append after commit/rollback")
	}
	rec := appended{
		ls: ls, st: st, t: t, v: v, h: h, fh: fh,
		family: strings.Clone(opts.MetricFamilyName),
		meta:   Metadata{Type: opts.Metadata.Type, Help: opts.Metadata.Help, Unit: opts.Metadata.Unit},
		// The slice is the caller's to reuse after the call.
		exemplars: slices.Clone(opts.Exemplars),
	}
	if a.s.appendErr != nil {
		if err := a.s.appendErr(&rec); err != nil {
			var partial *storage.AppendPartialError
			if !errors.As(err, &partial) {
				return 0, err
			}
			a.pending = append(a.pending, rec)
			return 1, err
		}
	}
	a.pending = append(a.pending, rec)
	return 1, nil
}

func (a *fakeAppender) Commit() error {
	a.done = true
	a.s.mu.Lock()
	defer a.s.mu.Unlock()
	if a.s.commitErr != nil {
		return a.s.commitErr
	}
	a.s.committed = append(a.s.committed, a.pending...)
	return nil
}

func (a *fakeAppender) Rollback() error {
	a.done = true
	a.s.mu.Lock()
	a.s.rollbacks++
	a.s.mu.Unlock()
	return nil
}

// nopStorage accepts everything, for benchmarks.
type nopStorage struct{}

func (nopStorage) AppenderV2(context.Context) storage.AppenderV2 { return nopAppender{} }

type nopAppender struct{}

func (nopAppender) Append(storage.SeriesRef, labels.Labels, int64, int64, float64, *histogram.Histogram, *histogram.FloatHistogram, storage.AppendV2Options) (storage.SeriesRef, error) {
	return 1, nil
}
func (nopAppender) Commit() error   { return nil }
func (nopAppender) Rollback() error { return nil }

// --- request builders ------------------------------------------------------

func lbls(kv ...string) []prompb.Label {
	out := make([]prompb.Label, 0, len(kv)/2)
	for i := 0; i < len(kv); i += 2 {
		out = append(out, prompb.Label{Name: kv[i], Value: kv[i+1]})
	}
	return out
}

func marshalV1(t testing.TB, req *prompb.WriteRequest) []byte {
	t.Helper()
	b, err := req.Marshal()
	require.NoError(t, err)
	return b
}

func marshalV2(t testing.TB, req *writev2.Request) []byte {
	t.Helper()
	b, err := req.Marshal()
	require.NoError(t, err)
	return b
}

// v2Builder assembles a writev2.Request through Prometheus' own symbol table.
type v2Builder struct {
	syms writev2.SymbolsTable
	req  writev2.Request
}

func newV2Builder() *v2Builder { return &v2Builder{syms: writev2.NewSymbolTable()} }

func (b *v2Builder) refs(kv ...string) []uint32 {
	return b.syms.SymbolizeLabels(labels.FromStrings(kv...), nil)
}

func (b *v2Builder) add(ts writev2.TimeSeries) *v2Builder {
	b.req.Timeseries = append(b.req.Timeseries, ts)
	return b
}

func (b *v2Builder) build() *writev2.Request {
	b.req.Symbols = b.syms.Symbols()
	return &b.req
}

func testIntHistogram(i int) *histogram.Histogram {
	return &histogram.Histogram{
		Count:         12 + uint64(i),
		ZeroCount:     2 + uint64(i),
		ZeroThreshold: 0.001,
		Sum:           18.4 * float64(i+1),
		Schema:        1,
		PositiveSpans: []histogram.Span{{Offset: 0, Length: 2}, {Offset: 1, Length: 2}},
		PositiveBuckets: []int64{
			int64(i + 1), 1, -1, 0,
		},
		NegativeSpans:   []histogram.Span{{Offset: 0, Length: 2}, {Offset: 1, Length: 2}},
		NegativeBuckets: []int64{int64(i + 1), 1, -1, 0},
	}
}

func fixIntHistogramCount(h *histogram.Histogram) *histogram.Histogram {
	var sum, cur int64
	for _, d := range h.PositiveBuckets {
		cur += d
		sum += cur
	}
	cur = 0
	for _, d := range h.NegativeBuckets {
		cur += d
		sum += cur
	}
	h.Count = uint64(sum) + h.ZeroCount
	return h
}

func testNHCB() *histogram.FloatHistogram {
	return &histogram.FloatHistogram{
		Schema:          histogram.CustomBucketsSchema,
		Count:           6,
		Sum:             42,
		PositiveSpans:   []histogram.Span{{Offset: 0, Length: 3}},
		PositiveBuckets: []float64{1, 2, 3},
		CustomValues:    []float64{0.1, 0.5, 1},
	}
}

func snappyBody(b []byte) []byte { return snappy.Encode(nil, b) }

// --- differential comparison against prompb --------------------------------

// normLabels is Prometheus' label set with empty values dropped, which is
// how Kiln normalises (see TimeSeries.Labels).
func normLabels(ls labels.Labels) []Label {
	var out []Label
	ls.Range(func(l labels.Label) {
		if l.Value != "" {
			out = append(out, l)
		}
	})
	return out
}

// promRejectsLabels is Prometheus' receiver validation (write_handler.go).
func promRejectsLabels(ls labels.Labels) bool {
	if _, dup := ls.HasDuplicateLabelNames(); dup {
		return true
	}
	return !ls.Has(model.MetricNameLabel) || !ls.IsValid(model.UTF8Validation)
}

func labelsEqual(a, b []Label) bool {
	return slices.Equal(a, b) || (len(a) == 0 && len(b) == 0)
}

func floatBitsEqual(a, b []float64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if math.Float64bits(a[i]) != math.Float64bits(b[i]) {
			return false
		}
	}
	return true
}

func spansEqual(a, b []histogram.Span) bool {
	return slices.Equal(a, b) || (len(a) == 0 && len(b) == 0)
}

func int64sEqual(a, b []int64) bool {
	return slices.Equal(a, b) || (len(a) == 0 && len(b) == 0)
}

func intHistEqual(a, b *histogram.Histogram) bool {
	return a.CounterResetHint == b.CounterResetHint && a.Schema == b.Schema &&
		math.Float64bits(a.ZeroThreshold) == math.Float64bits(b.ZeroThreshold) &&
		a.ZeroCount == b.ZeroCount && a.Count == b.Count &&
		math.Float64bits(a.Sum) == math.Float64bits(b.Sum) &&
		spansEqual(a.PositiveSpans, b.PositiveSpans) && spansEqual(a.NegativeSpans, b.NegativeSpans) &&
		int64sEqual(a.PositiveBuckets, b.PositiveBuckets) && int64sEqual(a.NegativeBuckets, b.NegativeBuckets) &&
		floatBitsEqual(a.CustomValues, b.CustomValues)
}

func floatHistEqual(a, b *histogram.FloatHistogram) bool {
	return a.CounterResetHint == b.CounterResetHint && a.Schema == b.Schema &&
		math.Float64bits(a.ZeroThreshold) == math.Float64bits(b.ZeroThreshold) &&
		math.Float64bits(a.ZeroCount) == math.Float64bits(b.ZeroCount) &&
		math.Float64bits(a.Count) == math.Float64bits(b.Count) &&
		math.Float64bits(a.Sum) == math.Float64bits(b.Sum) &&
		spansEqual(a.PositiveSpans, b.PositiveSpans) && spansEqual(a.NegativeSpans, b.NegativeSpans) &&
		floatBitsEqual(a.PositiveBuckets, b.PositiveBuckets) && floatBitsEqual(a.NegativeBuckets, b.NegativeBuckets) &&
		floatBitsEqual(a.CustomValues, b.CustomValues)
}

// histogramView is what both sides' histograms are compared through.
type histogramView struct {
	isFloat bool
	h       *histogram.Histogram
	fh      *histogram.FloatHistogram
	t, st   int64
}

func compareHistogram(want histogramView, got *Histogram) error {
	if got.Err != nil {
		return nil // mixing int and float: prompb resolves it last-wins, Kiln refuses
	}
	if want.isFloat != got.IsFloat || want.t != got.Timestamp || want.st != got.StartTimestamp {
		return fmt.Errorf("histogram kind/timestamps: want float=%v t=%d st=%d, got %+v", want.isFloat, want.t, want.st, got)
	}
	if want.isFloat {
		if !floatHistEqual(want.fh, got.ToFloatHistogram()) {
			return fmt.Errorf("float histogram: want %v, got %v", want.fh, got.ToFloatHistogram())
		}
	} else if !intHistEqual(want.h, got.ToIntHistogram()) {
		return fmt.Errorf("int histogram: want %v, got %v", want.h, got.ToIntHistogram())
	}
	return nil
}

func compareSamples(want []Sample, got []Sample) error {
	if len(want) != len(got) {
		return fmt.Errorf("samples: want %d, got %d", len(want), len(got))
	}
	for i := range want {
		if math.Float64bits(want[i].Value) != math.Float64bits(got[i].Value) ||
			want[i].Timestamp != got[i].Timestamp || want[i].StartTimestamp != got[i].StartTimestamp {
			return fmt.Errorf("sample %d: want %+v, got %+v", i, want[i], got[i])
		}
	}
	return nil
}

func compareExemplar(want exemplar.Exemplar, got *Exemplar) error {
	if got.Err != nil {
		// Kiln validates exemplar labels, Prometheus leaves that to the
		// exemplar storage; only a Kiln acceptance must match.
		return nil
	}
	if !labelsEqual(normLabels(want.Labels), got.Labels) ||
		math.Float64bits(want.Value) != math.Float64bits(got.Value) || want.Ts != got.Timestamp {
		return fmt.Errorf("exemplar: want %v, got %+v", want, got)
	}
	return nil
}

// checkSeriesLabels compares a series' labels, or checks that Kiln's
// rejection is one Prometheus makes too (Kiln must never be stricter).
func checkSeriesLabels(want labels.Labels, got *TimeSeries) error {
	if errors.Is(got.Err, ErrInvalidLabels) {
		if !promRejectsLabels(want) {
			return fmt.Errorf("kiln rejects labels Prometheus accepts: %v: %v", want, got.Err)
		}
		return nil
	}
	if promRejectsLabels(want) {
		// Tolerated only where Kiln's normalisation (dropping empty
		// values) turned an invalid set into a valid one.
		if !promRejectsLabels(labels.New(normLabels(want)...)) {
			return nil
		}
		return fmt.Errorf("kiln accepts labels Prometheus rejects: %v", want)
	}
	if !labelsEqual(normLabels(want), got.Labels) {
		return fmt.Errorf("labels: want %v, got %v", normLabels(want), got.Labels)
	}
	if got.MetricName() != want.Get(model.MetricNameLabel) {
		return fmt.Errorf("metric name: want %q, got %q", want.Get(model.MetricNameLabel), got.MetricName())
	}
	return nil
}

func wantMetricType(name string) model.MetricType {
	t := model.MetricType(strings.ToLower(name))
	if slices.Contains(metricTypes[:], t) {
		return t
	}
	return model.MetricTypeUnknown
}

// diffV1 reports how r differs from what prompb decoded from the same bytes.
func diffV1(pb *prompb.WriteRequest, r *Request) error {
	if len(pb.Timeseries) != len(r.Timeseries) {
		return fmt.Errorf("series: want %d, got %d", len(pb.Timeseries), len(r.Timeseries))
	}
	b := labels.NewScratchBuilder(0)
	for i := range pb.Timeseries {
		pts, got := &pb.Timeseries[i], &r.Timeseries[i]
		if err := checkSeriesLabels(pts.ToLabels(&b, nil), got); err != nil {
			return fmt.Errorf("series %d: %w", i, err)
		}
		// The contents are decoded whether or not the series is valid.
		want := make([]Sample, len(pts.Samples))
		for k, s := range pts.Samples {
			want[k] = Sample{Value: s.Value, Timestamp: s.Timestamp}
		}
		if err := compareSamples(want, got.Samples); err != nil {
			return fmt.Errorf("series %d: %w", i, err)
		}
		if len(pts.Histograms) != len(got.Histograms) || len(pts.Exemplars) != len(got.Exemplars) {
			return fmt.Errorf("series %d: histograms/exemplars: want %d/%d, got %d/%d", i,
				len(pts.Histograms), len(pts.Exemplars), len(got.Histograms), len(got.Exemplars))
		}
		for k, h := range pts.Histograms {
			v := histogramView{isFloat: h.IsFloatHistogram(), t: h.Timestamp}
			if v.isFloat {
				v.fh = h.ToFloatHistogram()
			} else {
				v.h = h.ToIntHistogram()
			}
			if err := compareHistogram(v, &got.Histograms[k]); err != nil {
				return fmt.Errorf("series %d histogram %d: %w", i, k, err)
			}
		}
		for k, e := range pts.Exemplars {
			if err := compareExemplar(e.ToExemplar(&b, nil), &got.Exemplars[k]); err != nil {
				return fmt.Errorf("series %d exemplar %d: %w", i, k, err)
			}
		}
	}
	if len(pb.Metadata) != len(r.Metadata) {
		return fmt.Errorf("metadata: want %d, got %d", len(pb.Metadata), len(r.Metadata))
	}
	for i, m := range pb.Metadata {
		want := Metadata{FamilyName: m.MetricFamilyName, Type: wantMetricType(m.Type.String()), Help: m.Help, Unit: m.Unit}
		if want != r.Metadata[i] {
			return fmt.Errorf("metadata %d: want %+v, got %+v", i, want, r.Metadata[i])
		}
	}
	return nil
}

// diffV2 is diffV1 for 2.0.
func diffV2(pb *writev2.Request, r *Request) error {
	if !slices.Equal(pb.Symbols, r.Symbols) && (len(pb.Symbols) > 0 || len(r.Symbols) > 0) {
		return fmt.Errorf("symbols: want %q, got %q", pb.Symbols, r.Symbols)
	}
	if len(pb.Timeseries) != len(r.Timeseries) {
		return fmt.Errorf("series: want %d, got %d", len(pb.Timeseries), len(r.Timeseries))
	}
	b := labels.NewScratchBuilder(0)
	for i := range pb.Timeseries {
		pts, got := &pb.Timeseries[i], &r.Timeseries[i]
		ls, lerr := pts.ToLabels(&b, pb.Symbols)
		md, merr := pts.ToMetadata(pb.Symbols)
		switch {
		case lerr != nil:
			if !errors.Is(got.Err, ErrInvalidLabels) {
				return fmt.Errorf("series %d: prompb: %v, kiln: %v", i, lerr, got.Err)
			}
		case errors.Is(got.Err, ErrInvalidLabels) || got.Err == nil:
			if err := checkSeriesLabels(ls, got); err != nil {
				return fmt.Errorf("series %d: %w", i, err)
			}
		}
		if lerr == nil && !errors.Is(got.Err, ErrInvalidLabels) && !promRejectsLabels(ls) {
			if merr != nil && !errors.Is(got.Err, ErrInvalidSeries) {
				return fmt.Errorf("series %d: prompb metadata: %v, kiln: %v", i, merr, got.Err)
			}
			if merr == nil {
				want := Metadata{Type: md.Type, Help: md.Help, Unit: md.Unit}
				if got.Metadata != want {
					return fmt.Errorf("series %d: metadata: want %+v, got %+v", i, want, got.Metadata)
				}
				ns, nh, ne := len(pts.Samples), len(pts.Histograms), len(pts.Exemplars)
				invalid := (ns > 0 && nh > 0) || (ns == 0 && nh == 0 && ne == 0)
				if invalid != errors.Is(got.Err, ErrInvalidSeries) {
					return fmt.Errorf("series %d: samples/histograms/exemplars %d/%d/%d, kiln: %v", i, ns, nh, ne, got.Err)
				}
			}
		}
		want := make([]Sample, len(pts.Samples))
		for k, s := range pts.Samples {
			want[k] = Sample{Value: s.Value, Timestamp: s.Timestamp, StartTimestamp: s.StartTimestamp}
		}
		if err := compareSamples(want, got.Samples); err != nil {
			return fmt.Errorf("series %d: %w", i, err)
		}
		if len(pts.Histograms) != len(got.Histograms) || len(pts.Exemplars) != len(got.Exemplars) {
			return fmt.Errorf("series %d: histograms/exemplars: want %d/%d, got %d/%d", i,
				len(pts.Histograms), len(pts.Exemplars), len(got.Histograms), len(got.Exemplars))
		}
		for k, h := range pts.Histograms {
			v := histogramView{isFloat: h.IsFloatHistogram(), t: h.Timestamp, st: h.StartTimestamp}
			if v.isFloat {
				v.fh = h.ToFloatHistogram()
			} else {
				v.h = h.ToIntHistogram()
			}
			if err := compareHistogram(v, &got.Histograms[k]); err != nil {
				return fmt.Errorf("series %d histogram %d: %w", i, k, err)
			}
		}
		for k, e := range pts.Exemplars {
			ex, err := e.ToExemplar(&b, pb.Symbols)
			if err != nil {
				if !errors.Is(got.Exemplars[k].Err, ErrInvalidExemplar) {
					return fmt.Errorf("series %d exemplar %d: prompb: %v, kiln accepted it", i, k, err)
				}
				continue
			}
			if err := compareExemplar(ex, &got.Exemplars[k]); err != nil {
				return fmt.Errorf("series %d exemplar %d: %w", i, k, err)
			}
		}
	}
	return nil
}

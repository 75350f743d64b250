package remotewrite

import (
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/histogram"
	"github.com/prometheus/prometheus/model/labels"
)

// Request is a decoded remote-write message: either a prometheus.WriteRequest
// (DecodeV1) or an io.prometheus.write.v2.Request (DecodeV2). Both decode into
// the same shape so that everything downstream of the decoder has one code path.
//
// Every string in a Request aliases the buffer it was decoded from, and every
// slice aliases arenas owned by the Request. Both are reused by the next
// Decode call, so copy anything that must outlive it.
type Request struct {
	// Timeseries in wire order. Invalid series stay in place with Err set, so
	// callers can write the valid ones and report the rest (partial write).
	Timeseries []TimeSeries
	// Metadata holds RW 1.0 per-family metadata entries. Always empty for 2.0,
	// whose metadata lives in TimeSeries.Metadata.
	Metadata []Metadata
	// Symbols is the RW 2.0 symbol table. Always empty for 1.0.
	Symbols []string

	// exemplarOnly counts valid series that carry exemplars but neither samples
	// nor histograms. Prometheus senders emit exemplars that way, so the writer
	// must pair them with a sibling series; the count lets it skip that work
	// for the (usual) request without any.
	exemplarOnly int

	// Arenas. Each series' slices are contiguous sub-slices of these; the
	// arenas keep their capacity between requests, which is what makes a
	// pooled Request allocation-free in the steady state.
	labels     []Label
	exLabels   []Label
	samples    []Sample
	histograms []Histogram
	exemplars  []Exemplar
	spans      []BucketSpan
	ints       []int64
	floats     []float64

	// Per-message scratch, see decodeHistogram and the 2.0 label refs.
	hs       histScratch
	refs     []uint32
	exRefs   []uint32
	symValid []bool

	// Memory accounting, see charge.
	mem, memLimit, memCheck int64
	// grow, if set, is told the decoded size every growStep bytes and can
	// abort decoding with its error; the handler charges its in-flight
	// budget through it.
	grow func(total int64) error
}

// TimeSeries is one decoded series.
type TimeSeries struct {
	// Labels sorted by name, without empty-valued labels (which PromQL treats
	// as absent). Always includes __name__ when Err is nil.
	Labels     []Label
	Samples    []Sample
	Histograms []Histogram
	Exemplars  []Exemplar
	// Metadata is the RW 2.0 per-series metadata. For 1.0 it is zero and the
	// writer resolves it from Request.Metadata by family name.
	Metadata Metadata
	// Err is non-nil when the series must not be written: invalid labels,
	// unresolvable 2.0 symbol references, or a structure the spec forbids.
	Err error

	name string // value of __name__, cached for metadata lookups
}

// MetricName returns the value of the __name__ label ("" if absent).
func (ts *TimeSeries) MetricName() string { return ts.name }

// Label is a name/value pair. It is Prometheus' own type so that a decoded
// label set converts to labels.Labels (labels.New) without copying it first.
type Label = labels.Label

// Sample is a float sample. StartTimestamp is RW 2.0's start (created)
// timestamp; 0 means unset.
type Sample struct {
	Value          float64
	Timestamp      int64
	StartTimestamp int64
}

// Exemplar is an exemplar with its labels resolved (2.0 refs included),
// sorted by name and without empty-valued labels.
type Exemplar struct {
	Labels    []Label
	Value     float64
	Timestamp int64
	// Err is non-nil when the exemplar's labels are invalid or unresolvable.
	Err error
}

// Metadata describes a metric family.
type Metadata struct {
	// FamilyName is set for RW 1.0 metadata entries only.
	FamilyName string
	Type       model.MetricType
	Help       string
	Unit       string
}

// IsEmpty reports whether m carries no information worth storing.
func (m Metadata) IsEmpty() bool {
	return (m.Type == "" || m.Type == model.MetricTypeUnknown) && m.Help == "" && m.Unit == ""
}

// BucketSpan is a native histogram span as on the wire.
type BucketSpan struct {
	Offset int32
	Length uint32
}

// Histogram is a native histogram sample as on the wire. Exactly one of the
// integer (CountInt, ZeroCountInt, *Deltas) or float (CountFloat,
// ZeroCountFloat, *Counts) encodings is in use, as reported by IsFloat.
type Histogram struct {
	CountInt       uint64
	CountFloat     float64
	ZeroCountInt   uint64
	ZeroCountFloat float64
	Sum            float64
	Schema         int32
	ZeroThreshold  float64
	ResetHint      int32
	Timestamp      int64
	StartTimestamp int64
	NegativeSpans  []BucketSpan
	NegativeDeltas []int64
	NegativeCounts []float64
	PositiveSpans  []BucketSpan
	PositiveDeltas []int64
	PositiveCounts []float64
	CustomValues   []float64
	// IsFloat is true when the count oneof held count_float. Like Prometheus,
	// a histogram without any count field is an integer histogram.
	IsFloat bool
	// Err is non-nil when integer and float encodings are mixed; such a
	// histogram has no single meaning and must not be written.
	Err error
}

// ToIntHistogram returns an owned copy of an integer histogram (nil if h is a
// float histogram). The copy shares nothing with the Request, because storages
// keep the latest histogram of a series beyond the Append call.
func (h *Histogram) ToIntHistogram() *histogram.Histogram {
	if h.IsFloat {
		return nil
	}
	nn, np := len(h.NegativeSpans), len(h.PositiveSpans)
	nb, pb := len(h.NegativeDeltas), len(h.PositiveDeltas)
	spans := make([]histogram.Span, nn+np)
	copySpans(spans, h.NegativeSpans)
	copySpans(spans[nn:], h.PositiveSpans)
	buckets := make([]int64, nb+pb)
	copy(buckets, h.NegativeDeltas)
	copy(buckets[nb:], h.PositiveDeltas)
	return &histogram.Histogram{
		CounterResetHint: histogram.CounterResetHint(h.ResetHint),
		Schema:           h.Schema,
		ZeroThreshold:    h.ZeroThreshold,
		ZeroCount:        h.ZeroCountInt,
		Count:            h.CountInt,
		Sum:              h.Sum,
		// Full slice expressions: an append by the storage to one side must
		// reallocate instead of overwriting the other side.
		NegativeSpans:   nilIfEmpty(spans[:nn:nn]),
		PositiveSpans:   nilIfEmpty(spans[nn:]),
		NegativeBuckets: nilIfEmpty(buckets[:nb:nb]),
		PositiveBuckets: nilIfEmpty(buckets[nb:]),
		CustomValues:    cloneFloats(h.CustomValues),
	}
}

// ToFloatHistogram returns an owned copy of a float histogram (nil if h is an
// integer histogram), see ToIntHistogram.
func (h *Histogram) ToFloatHistogram() *histogram.FloatHistogram {
	if !h.IsFloat {
		return nil
	}
	nn, np := len(h.NegativeSpans), len(h.PositiveSpans)
	nb, pb := len(h.NegativeCounts), len(h.PositiveCounts)
	spans := make([]histogram.Span, nn+np)
	copySpans(spans, h.NegativeSpans)
	copySpans(spans[nn:], h.PositiveSpans)
	buckets := make([]float64, nb+pb)
	copy(buckets, h.NegativeCounts)
	copy(buckets[nb:], h.PositiveCounts)
	return &histogram.FloatHistogram{
		CounterResetHint: histogram.CounterResetHint(h.ResetHint),
		Schema:           h.Schema,
		ZeroThreshold:    h.ZeroThreshold,
		ZeroCount:        h.ZeroCountFloat,
		Count:            h.CountFloat,
		Sum:              h.Sum,
		NegativeSpans:    nilIfEmpty(spans[:nn:nn]),
		PositiveSpans:    nilIfEmpty(spans[nn:]),
		NegativeBuckets:  nilIfEmpty(buckets[:nb:nb]),
		PositiveBuckets:  nilIfEmpty(buckets[nb:]),
		CustomValues:     cloneFloats(h.CustomValues),
	}
}

func copySpans(dst []histogram.Span, src []BucketSpan) {
	for i, s := range src {
		dst[i] = histogram.Span{Offset: s.Offset, Length: s.Length}
	}
}

// nilIfEmpty keeps "no buckets" as nil: histogram.Validate rejects a non-nil
// CustomValues on exponential schemas, and nil is what Prometheus' own
// decoders produce for absent fields.
func nilIfEmpty[T any](s []T) []T {
	if len(s) == 0 {
		return nil
	}
	return s
}

func cloneFloats(s []float64) []float64 {
	if len(s) == 0 {
		return nil
	}
	out := make([]float64, len(s))
	copy(out, s)
	return out
}

// metricTypes maps the wire enum (identical in 1.0 MetricMetadata and 2.0
// Metadata) to Prometheus' type names.
var metricTypes = [...]model.MetricType{
	model.MetricTypeUnknown,
	model.MetricTypeCounter,
	model.MetricTypeGauge,
	model.MetricTypeHistogram,
	model.MetricTypeGaugeHistogram,
	model.MetricTypeSummary,
	model.MetricTypeInfo,
	model.MetricTypeStateset,
}

func metricTypeFromWire(v int32) model.MetricType {
	if v < 0 || int(v) >= len(metricTypes) {
		return model.MetricTypeUnknown
	}
	return metricTypes[v]
}

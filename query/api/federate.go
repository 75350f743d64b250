package api

import (
	"context"
	"net/http"
	"slices"
	"strings"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/histogram"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/timestamp"
	"github.com/prometheus/prometheus/model/value"
	"github.com/prometheus/prometheus/promql"
	"github.com/prometheus/prometheus/storage"
	"github.com/prometheus/prometheus/tsdb/chunkenc"
	"github.com/valyala/fasthttp"
)

// federationFormats are the exposition formats /federate offers, in
// Prometheus's order of preference. Text is the fallback.
var federationFormats = []expfmt.Format{
	expfmt.NewFormat(expfmt.TypeProtoDelim),
	expfmt.NewFormat(expfmt.TypeProtoText),
	expfmt.NewFormat(expfmt.TypeProtoCompact),
	expfmt.NewFormat(expfmt.TypeTextPlain),
}

// federate serves the latest sample, within the lookback delta, of every
// series matching any match[] selector, in exposition format. As in
// Prometheus:
//   - series whose latest sample is a stale marker are left out, since the
//     exposition formats cannot carry staleness;
//   - output is sorted by metric name, one family per run of equal names
//     and sample kinds, typed untyped (floats) or (gauge) histogram;
//   - every series gets instance="" unless it has an instance label, which
//     stops the federating server from attaching its own target's instance;
//   - native histograms are only sent in protobuf formats (custom-bucket
//     ones are converted to classic histograms for every format).
func (a *API) federate(fctx *fasthttp.RequestCtx) {
	ctx, cancel := context.WithCancel(a.baseCtx)
	defer cancel()
	r := &request{fctx: fctx, ctx: ctx}
	if err := r.partialResponse(); err != nil {
		fctx.Error(err.Error(), fasthttp.StatusBadRequest)
		return
	}
	ctx = r.ctx

	matcherSets, err := a.parser.ParseMetricSelectors(r.formValues("match[]"))
	if err != nil {
		fctx.Error(err.Error(), fasthttp.StatusBadRequest)
		return
	}

	now := a.now()
	mint := timestamp.FromTime(now.Add(-a.cfg.LookbackDelta))
	maxt := timestamp.FromTime(now)

	q, err := a.deps.Queryable.Querier(mint, maxt)
	if err != nil {
		a.metrics.federationErrors.Inc()
		status := fasthttp.StatusInternalServerError
		if classifyError(err).typ == errorUnavailable {
			status = fasthttp.StatusServiceUnavailable
		}
		fctx.Error(err.Error(), status)
		return
	}
	defer func() { _ = q.Close() }()

	hints := &storage.SelectHints{Start: mint, End: maxt}
	sets := make([]storage.SeriesSet, 0, len(matcherSets))
	for _, ms := range matcherSets {
		sets = append(sets, q.Select(ctx, true, hints, ms...))
	}
	set := storage.NewMergeSeriesSet(sets, 0, storage.ChainedSeriesMerge)

	var (
		vec promql.Vector
		it  chunkenc.Iterator
	)
	for set.Next() {
		s := set.At()
		it = s.Iterator(it)
		if smpl, ok := latestSample(it, mint, maxt); ok {
			smpl.Metric = s.Labels()
			vec = append(vec, smpl)
		}
	}
	if ws := set.Warnings(); len(ws) > 0 {
		a.logger.Debug("federation select returned warnings", "warnings", ws)
		a.metrics.federationWarnings.Add(float64(len(ws)))
	}
	if err := set.Err(); err != nil {
		a.metrics.federationErrors.Inc()
		fctx.Error(err.Error(), fasthttp.StatusInternalServerError)
		return
	}

	// The merge yields series sorted by full label set; a stable sort by
	// name keeps that order within each metric.
	slices.SortStableFunc(vec, func(x, y promql.Sample) int {
		return strings.Compare(x.Metric.Get(model.MetricNameLabel), y.Metric.Get(model.MetricNameLabel))
	})

	format := expfmt.NegotiateAccept(http.Header{"Accept": {string(fctx.Request.Header.Peek(fasthttp.HeaderAccept))}}, federationFormats...)
	fctx.SetContentType(string(format))
	if err := encodeFederation(fctx.Response.BodyWriter(), format, vec); err != nil {
		a.metrics.federationErrors.Inc()
		a.logger.Error("federation failed", "err", err)
	}
}

// latestSample returns the last sample in [mint, maxt], unless it is a
// stale marker.
func latestSample(it chunkenc.Iterator, mint, maxt int64) (promql.Sample, bool) {
	var (
		s     promql.Sample
		found bool
	)
	for vt := it.Seek(mint); vt != chunkenc.ValNone; vt = it.Next() {
		if it.AtT() > maxt {
			break
		}
		found = true
		switch vt {
		case chunkenc.ValFloat:
			s.T, s.F = it.At()
			s.H = nil
		case chunkenc.ValHistogram, chunkenc.ValFloatHistogram:
			// Reusing s.H is safe: only the last histogram survives.
			var h *histogram.FloatHistogram
			if s.H != nil {
				h = s.H
			}
			s.T, s.H = it.AtFloatHistogram(h)
			s.F = 0
		}
	}
	if !found || it.Err() != nil {
		return s, false
	}
	if s.H == nil && value.IsStaleNaN(s.F) || s.H != nil && value.IsStaleNaN(s.H.Sum) {
		return s, false
	}
	return s, true
}

func isProtobuf(format expfmt.Format) bool {
	switch format.FormatType() {
	case expfmt.TypeProtoDelim, expfmt.TypeProtoText, expfmt.TypeProtoCompact:
		return true
	}
	return false
}

// encodeFederation groups the name-sorted samples into metric families and
// encodes them.
func encodeFederation(w interface{ Write([]byte) (int, error) }, format expfmt.Format, vec promql.Vector) error {
	enc := expfmt.NewEncoder(w, format)
	protobuf := isProtobuf(format)

	var (
		fam              *dto.MetricFamily
		lastName         string
		lastWasHist      bool
		lastWasGaugeHist bool
	)
	for _, s := range vec {
		isHist := s.H != nil
		if isHist && !protobuf && !s.H.UsesCustomBuckets() {
			continue
		}
		name := s.Metric.Get(model.MetricNameLabel)
		if name == "" {
			continue // nameless series cannot be exposed
		}
		isGaugeHist := isHist && s.H.CounterResetHint == histogram.GaugeType
		// A family holds one metric name and one sample kind; a change of
		// either starts a new family. Repeating a name is not strictly
		// valid exposition, but Prometheus accepts it and it is the only
		// way to federate a name that changed kind.
		if fam == nil || name != lastName || isHist != lastWasHist || (isHist && isGaugeHist != lastWasGaugeHist) {
			if fam != nil {
				if err := enc.Encode(fam); err != nil {
					return err
				}
			}
			typ := dto.MetricType_UNTYPED
			switch {
			case isGaugeHist:
				typ = dto.MetricType_GAUGE_HISTOGRAM
			case isHist:
				typ = dto.MetricType_HISTOGRAM
			}
			fam = &dto.MetricFamily{Name: ptr(name), Type: typ.Enum()}
			lastName, lastWasHist, lastWasGaugeHist = name, isHist, isGaugeHist
		}

		m := &dto.Metric{TimestampMs: ptr(s.T)}
		hasInstance := false
		s.Metric.Range(func(l labels.Label) {
			// Empty values mean "unset" and the name is the family's.
			if l.Value == "" || l.Name == model.MetricNameLabel {
				return
			}
			if l.Name == model.InstanceLabel {
				hasInstance = true
			}
			m.Label = append(m.Label, &dto.LabelPair{Name: ptr(l.Name), Value: ptr(l.Value)})
		})
		if !hasInstance {
			m.Label = append(m.Label, &dto.LabelPair{Name: ptr(model.InstanceLabel), Value: ptr("")})
		}
		switch {
		case !isHist:
			m.Untyped = &dto.Untyped{Value: ptr(s.F)}
		case s.H.UsesCustomBuckets():
			m.Histogram = classicHistogram(s.H)
		default:
			m.Histogram = nativeHistogram(s.H)
		}
		fam.Metric = append(fam.Metric, m)
	}
	if fam != nil {
		return enc.Encode(fam)
	}
	return nil
}

// nativeHistogram converts an exponential-schema histogram.
func nativeHistogram(h *histogram.FloatHistogram) *dto.Histogram {
	return &dto.Histogram{
		SampleCountFloat: ptr(h.Count),
		SampleSum:        ptr(h.Sum),
		Schema:           ptr(h.Schema),
		ZeroThreshold:    ptr(h.ZeroThreshold),
		ZeroCountFloat:   ptr(h.ZeroCount),
		PositiveSpan:     dtoSpans(h.PositiveSpans),
		PositiveCount:    h.PositiveBuckets,
		NegativeSpan:     dtoSpans(h.NegativeSpans),
		NegativeCount:    h.NegativeBuckets,
	}
}

func dtoSpans(spans []histogram.Span) []*dto.BucketSpan {
	if len(spans) == 0 {
		return nil
	}
	out := make([]*dto.BucketSpan, len(spans))
	for i, sp := range spans {
		out[i] = &dto.BucketSpan{Offset: ptr(sp.Offset), Length: ptr(sp.Length)}
	}
	return out
}

// classicHistogram converts a custom-bucket (NHCB) histogram into classic
// cumulative buckets. The +Inf bucket is implied by the count, and the
// text encoder adds it.
func classicHistogram(h *histogram.FloatHistogram) *dto.Histogram {
	out := &dto.Histogram{
		SampleCountFloat: ptr(h.Count),
		SampleSum:        ptr(h.Sum),
		Bucket:           make([]*dto.Bucket, len(h.CustomValues)),
	}
	var cumulative float64
	it := h.PositiveBucketIterator()
	more := it.Next()
	for i, upper := range h.CustomValues {
		for more && int(it.At().Index) < i {
			more = it.Next()
		}
		if more && int(it.At().Index) == i {
			cumulative += it.At().Count
		}
		out.Bucket[i] = &dto.Bucket{UpperBound: ptr(upper), CumulativeCountFloat: ptr(cumulative)}
	}
	return out
}

func ptr[T any](v T) *T { return &v }

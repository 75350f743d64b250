package remotewrite

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/prometheus/prometheus/model/exemplar"
	"github.com/prometheus/prometheus/model/histogram"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/timestamp"
	"github.com/prometheus/prometheus/storage"
	"github.com/valyala/fasthttp"
)

// maxAheadTime: samples further in the future are refused as out of bounds,
// as Prometheus' receiver does; a clock that far off is a sender bug, and
// accepting the sample would block the series' real samples as out of order.
const maxAheadTime = 10 * time.Minute

// maxMessages bounds the examples quoted in a 400 response.
const maxMessages = 8

type pendingExemplar struct {
	target int32 // index of the sample (or histogram) it rides on
	ex     exemplar.Exemplar
}

// batchWriter appends one decoded request. The appender is created lazily, so
// metadata-only requests (how 1.0 senders ship metadata) never open one.
type batchWriter struct {
	ctx  context.Context
	h    *Handler
	p    protocol
	st   *state
	req  *Request
	app  storage.AppenderV2
	maxT int64

	written  writeStats
	rejected [numKinds][numReasons]int
	// badRequest: something was not written for a reason the sender must
	// hear about (400). Only 1.0 exemplar losses are exempt, see reject.
	badRequest bool
	messages   []string
	dropped    int // messages beyond maxMessages
}

func (h *Handler) write(ctx context.Context, p protocol, st *state) result {
	w := batchWriter{
		ctx:  ctx,
		h:    h,
		p:    p,
		st:   st,
		req:  &st.req,
		maxT: timestamp.FromTime(h.now().Add(maxAheadTime)),
	}
	st.md.reset(h.families)
	if p == protoV1 {
		st.md.addV1(w.req.Metadata)
	}
	if w.req.exemplarOnly > 0 {
		w.pairExemplarOnly()
	} else {
		st.attachHead = st.attachHead[:0]
	}

	for i := range w.req.Timeseries {
		if err := w.series(i); err != nil {
			// Not the sender's fault, and possibly transient: undo
			// everything so that the retry the 500 triggers cannot
			// duplicate samples (the storage is not idempotent).
			if rerr := w.app.Rollback(); rerr != nil {
				h.logger.Error("Remote write rollback failed", "err", rerr)
			}
			return result{code: fasthttp.StatusInternalServerError, msg: fmt.Sprintf("append to storage: %v", err)}
		}
	}
	if w.app != nil {
		if err := w.app.Commit(); err != nil && !w.committedExcept(err) {
			if w.unavailable(err) {
				return result{code: fasthttp.StatusServiceUnavailable, msg: fmt.Sprintf("commit to storage: %v", err)}
			}
			// Commit failing rolled everything back: nothing was written,
			// whatever the loop counted.
			return result{code: fasthttp.StatusInternalServerError, msg: fmt.Sprintf("commit to storage: %v", err)}
		}
	}

	w.report()
	if w.badRequest {
		return result{code: fasthttp.StatusBadRequest, msg: w.message(), stats: w.written}
	}
	return result{code: fasthttp.StatusNoContent, stats: w.written}
}

// Commit errors of a replicating storage (ingest/replicate) are recognised
// by their methods, so that ingest subpackages stay independent:
//
//   - Unavailable() bool: a write quorum was not reached; the sender must
//     retry (503 with Retry-After), which is safe because exact duplicates
//     are accepted idempotently.
//   - EachRejected(fn): everything was committed except these samples,
//     which replicas refused (e.g. a conflicting duplicate): a partial 400,
//     as for samples the storage refuses on Append.
type (
	unavailableError interface{ Unavailable() bool }
	rejectedError    interface {
		EachRejected(fn func(ls labels.Labels, t int64, histogram bool, exemplars int, err error))
	}
)

func (w *batchWriter) unavailable(err error) bool {
	var u unavailableError
	return errors.As(err, &u) && u.Unavailable()
}

// committedExcept reports whether err lists the only samples Commit did not
// write, and counts them as refused.
func (w *batchWriter) committedExcept(err error) bool {
	var rej rejectedError
	if !errors.As(err, &rej) {
		return false
	}
	rej.EachRejected(func(ls labels.Labels, t int64, hist bool, nEx int, err error) {
		// Counted as written on Append; undo that.
		k := kindSample
		if hist {
			k = kindHistogram
			w.written.Histograms--
		} else {
			w.written.Samples--
		}
		w.written.Exemplars -= nEx
		w.refuse(k, reasonOf(err), err, ls, t, nEx)
	})
	return true
}

// reasonOf classifies a refusal reported by a replica.
func reasonOf(err error) reason {
	var herr histogram.Error
	switch {
	case errors.Is(err, storage.ErrOutOfOrderSample):
		return reasonOutOfOrder
	case errors.Is(err, storage.ErrOutOfBounds):
		return reasonOutOfBounds
	case errors.Is(err, storage.ErrTooOldSample):
		return reasonTooOld
	case errors.Is(err, storage.ErrDuplicateSampleForTimestamp):
		return reasonDuplicate
	case errors.As(err, &herr):
		return reasonInvalidHistogram
	}
	return reasonInvalidSeries
}

func (w *batchWriter) appender() storage.AppenderV2 {
	if w.app == nil {
		w.app = w.h.app.AppenderV2(w.ctx)
	}
	return w.app
}

// series appends the samples or histograms of series i.
func (w *batchWriter) series(i int) error {
	ts := &w.req.Timeseries[i]
	if ts.Err != nil {
		w.rejectSeries(ts)
		return nil
	}
	if len(ts.Samples) == 0 && len(ts.Histograms) == 0 {
		// Exemplar-only series were paired (or rejected) up front; an empty
		// 1.0 series carries nothing. (2.0 empty series have Err set.)
		return nil
	}

	st := w.st
	// One owned string per series: the storage keeps it for new series.
	// (labels.New sorts in place, a no-op on the decoder's sorted labels.)
	ls := labels.New(ts.Labels...)

	var opts storage.AppendV2Options
	if w.p == protoV1 {
		opts.MetricFamilyName, opts.Metadata = st.md.v1(ts.name)
	} else {
		opts.MetricFamilyName, opts.Metadata = st.md.v2(ts.name, ts.Metadata)
	}
	w.collectExemplars(i, ts)

	var (
		ref storage.SeriesRef
		exs int // next index into st.exemplars
		app = w.appender()
	)
	for j := range ts.Samples {
		s := &ts.Samples[j]
		opts.Exemplars, exs = w.exemplarsFor(j, exs)
		if s.Timestamp > w.maxT {
			w.refuse(kindSample, reasonTooFarInFuture, storage.ErrOutOfBounds, ls, s.Timestamp, len(opts.Exemplars))
			continue
		}
		r, err := app.Append(ref, ls, s.StartTimestamp, s.Timestamp, s.Value, nil, nil, opts)
		if err := w.outcome(kindSample, r, err, &ref, ls, s.Timestamp, len(opts.Exemplars)); err != nil {
			return err
		}
	}
	for j := range ts.Histograms {
		hp := &ts.Histograms[j]
		opts.Exemplars, exs = w.exemplarsFor(j, exs)
		if hp.Err != nil {
			w.refuse(kindHistogram, reasonInvalidHistogram, hp.Err, ls, hp.Timestamp, len(opts.Exemplars))
			continue
		}
		if hp.Timestamp > w.maxT {
			w.refuse(kindHistogram, reasonTooFarInFuture, storage.ErrOutOfBounds, ls, hp.Timestamp, len(opts.Exemplars))
			continue
		}
		ih, fh, err := convertHistogram(hp)
		if err != nil {
			w.refuse(kindHistogram, reasonInvalidHistogram, err, ls, hp.Timestamp, len(opts.Exemplars))
			continue
		}
		r, err := app.Append(ref, ls, hp.StartTimestamp, hp.Timestamp, 0, ih, fh, opts)
		if err := w.outcome(kindHistogram, r, err, &ref, ls, hp.Timestamp, len(opts.Exemplars)); err != nil {
			return err
		}
	}
	return nil
}

// convertHistogram makes an owned, validated storage histogram. Schemas above
// the supported maximum (up to the reserved 52) are reduced rather than
// refused, as Prometheus' receiver does, since the reduction is lossless in
// meaning. Validation happens here rather than being left to the storage so
// that an invalid histogram is a 400 whatever the storage checks.
func convertHistogram(hp *Histogram) (*histogram.Histogram, *histogram.FloatHistogram, error) {
	reduce := histogram.IsExponentialSchemaReserved(hp.Schema) && hp.Schema > histogram.ExponentialSchemaMax
	if hp.IsFloat {
		fh := hp.ToFloatHistogram()
		if reduce {
			if err := fh.ReduceResolution(histogram.ExponentialSchemaMax); err != nil {
				return nil, nil, err
			}
		}
		return nil, fh, fh.Validate()
	}
	ih := hp.ToIntHistogram()
	if reduce {
		if err := ih.ReduceResolution(histogram.ExponentialSchemaMax); err != nil {
			return nil, nil, err
		}
	}
	return ih, nil, ih.Validate()
}

// outcome classifies the result of an Append. It returns an error only for
// failures that must abort the request (500); the rest are counted.
func (w *batchWriter) outcome(k kind, r storage.SeriesRef, err error, ref *storage.SeriesRef, ls labels.Labels, t int64, nEx int) error {
	if err == nil {
		*ref = r
		w.count(k, nEx)
		return nil
	}
	return w.failed(k, r, err, ref, ls, t, nEx)
}

// failed is outcome's error path, split out because errors.As makes its
// target escape: in outcome that would cost an allocation per sample.
func (w *batchWriter) failed(k kind, r storage.SeriesRef, err error, ref *storage.SeriesRef, ls labels.Labels, t int64, nEx int) error {
	var partial *storage.AppendPartialError
	if errors.As(err, &partial) {
		// The sample is in; some exemplars are not.
		*ref = r
		failed := min(len(partial.ExemplarErrors), nEx)
		w.count(k, nEx-failed)
		if failed > 0 {
			w.reject(kindExemplar, reasonStorage, failed, errors.Join(partial.ExemplarErrors...), ls, t)
		}
		return nil
	}
	var reason reason
	var herr histogram.Error
	switch {
	case errors.Is(err, storage.ErrOutOfOrderSample):
		reason = reasonOutOfOrder
	case errors.Is(err, storage.ErrOutOfBounds):
		reason = reasonOutOfBounds
	case errors.Is(err, storage.ErrTooOldSample):
		reason = reasonTooOld
	case errors.Is(err, storage.ErrDuplicateSampleForTimestamp):
		reason = reasonDuplicate
	case errors.As(err, &herr):
		reason = reasonInvalidHistogram
	default:
		return fmt.Errorf("series %s: %w", ls.String(), err)
	}
	w.refuse(k, reason, err, ls, t, nEx)
	return nil
}

func (w *batchWriter) count(k kind, nEx int) {
	if k == kindSample {
		w.written.Samples++
	} else {
		w.written.Histograms++
	}
	w.written.Exemplars += nEx
}

// refuse records a sample or histogram that was not written, together with
// the exemplars that rode on it.
func (w *batchWriter) refuse(k kind, r reason, err error, ls labels.Labels, t int64, nEx int) {
	w.reject(k, r, 1, err, ls, t)
	if nEx > 0 {
		w.reject(kindExemplar, reasonSampleRejected, nEx, err, ls, t)
	}
}

// reject counts n items of kind k not written for reason r. ls and t, when
// set, identify the series for the message; decode errors carry their own.
func (w *batchWriter) reject(k kind, r reason, n int, err error, ls labels.Labels, t int64) {
	w.rejected[k][r] += n
	if k == kindExemplar && w.p == protoV1 {
		// Prometheus' 1.0 receiver never fails a request over exemplars
		// ("exemplar storage is still experimental"), and 1.0 senders count
		// a 400 as the whole batch failing. Counted in metrics only.
		return
	}
	w.badRequest = true
	if len(w.messages) >= maxMessages {
		w.dropped++
		return
	}
	var msg string
	switch {
	case ls.IsEmpty():
		msg = err.Error()
	case n == 1:
		msg = fmt.Sprintf("%s for series %s at timestamp %d: %v", k, ls.String(), t, err)
	default:
		msg = fmt.Sprintf("%d %ss for series %s at timestamp %d: %v", n, k, ls.String(), t, err)
	}
	w.messages = append(w.messages, msg)
}

// rejectSeries records everything in an invalid series.
func (w *batchWriter) rejectSeries(ts *TimeSeries) {
	r := reasonInvalidSeries
	if errors.Is(ts.Err, ErrInvalidLabels) {
		r = reasonInvalidLabels
	}
	empty := labels.EmptyLabels()
	w.rejected[kindSample][r] += len(ts.Samples)
	w.rejected[kindHistogram][r] += len(ts.Histograms)
	w.rejected[kindExemplar][r] += len(ts.Exemplars)
	// The series itself is one message and always a 400, even when it holds
	// only exemplars or nothing at all: the sender sent something invalid.
	w.reject(kindSample, r, 0, ts.Err, empty, 0)
}

// report updates the written/rejected metrics.
func (w *batchWriter) report() {
	m := w.h.metrics
	m.written[kindSample].Add(float64(w.written.Samples))
	m.written[kindHistogram].Add(float64(w.written.Histograms))
	m.written[kindExemplar].Add(float64(w.written.Exemplars))
	for k := range numKinds {
		for r := range numReasons {
			if n := w.rejected[k][r]; n > 0 {
				m.rejected.WithLabelValues(k.String(), r.String()).Add(float64(n))
			}
		}
	}
}

// message is the 400 response body.
func (w *batchWriter) message() string {
	var sb strings.Builder
	var s, h, e int
	for r := range numReasons {
		s += w.rejected[kindSample][r]
		h += w.rejected[kindHistogram][r]
		e += w.rejected[kindExemplar][r]
	}
	fmt.Fprintf(&sb, "remote write partially failed: %d samples, %d histograms and %d exemplars not written (%d, %d and %d written)",
		s, h, e, w.written.Samples, w.written.Histograms, w.written.Exemplars)
	for _, msg := range w.messages {
		sb.WriteString("; ")
		sb.WriteString(msg)
	}
	if w.dropped > 0 {
		fmt.Fprintf(&sb, "; and %d more errors", w.dropped)
	}
	return sb.String()
}

// collectExemplars gathers the valid exemplars of series i (its own and
// those of paired exemplar-only series), assigns each to a sample and sorts
// them by (sample, timestamp), since AppendV2Options needs them per sample
// and sorted by time.
//
// An exemplar rides on the latest sample at or before its timestamp (the
// one it was observed with, in a scrape), or on the first sample if it is
// older than all of them.
func (w *batchWriter) collectExemplars(i int, ts *TimeSeries) {
	st := w.st
	st.pending = st.pending[:0]
	w.addExemplars(ts, ts.Exemplars)
	if len(st.attachHead) > 0 {
		for e := st.attachHead[i]; e >= 0; e = st.attachNext[e] {
			w.addExemplars(ts, w.req.Timeseries[e].Exemplars)
		}
	}
	st.exemplars, st.targets = st.exemplars[:0], st.targets[:0]
	if len(st.pending) == 0 {
		return
	}
	slices.SortStableFunc(st.pending, func(a, b pendingExemplar) int {
		if c := cmp.Compare(a.target, b.target); c != 0 {
			return c
		}
		return cmp.Compare(a.ex.Ts, b.ex.Ts)
	})
	for _, p := range st.pending {
		st.exemplars = append(st.exemplars, p.ex)
		st.targets = append(st.targets, p.target)
	}
}

func (w *batchWriter) addExemplars(ts *TimeSeries, exs []Exemplar) {
	st := w.st
	n := max(len(ts.Samples), len(ts.Histograms))
	at := func(k int) int64 {
		if len(ts.Samples) > 0 {
			return ts.Samples[k].Timestamp
		}
		return ts.Histograms[k].Timestamp
	}
	for k := range exs {
		e := &exs[k]
		if e.Err != nil {
			w.reject(kindExemplar, reasonInvalidExemplar, 1, e.Err, labels.EmptyLabels(), 0)
			continue
		}
		// Samples are sorted by time (the spec requires it); if a sender
		// breaks that, the search still lands on some sample of the series.
		target := sort.Search(n, func(k int) bool { return at(k) > e.Timestamp }) - 1
		st.pending = append(st.pending, pendingExemplar{
			target: int32(max(target, 0)),
			ex: exemplar.Exemplar{
				Labels: labels.New(e.Labels...),
				Value:  e.Value,
				Ts:     e.Timestamp,
				HasTs:  e.Timestamp != 0,
			},
		})
	}
}

// exemplarsFor returns the exemplars of sample j, starting the scan at from,
// and the index after them.
func (w *batchWriter) exemplarsFor(j, from int) ([]exemplar.Exemplar, int) {
	st := w.st
	to := from
	for to < len(st.targets) && st.targets[to] == int32(j) {
		to++
	}
	if to == from {
		return nil, from
	}
	return st.exemplars[from:to], to
}

// pairExemplarOnly attaches exemplar-only series to the series with the same
// labels that carries samples in this request. Prometheus' queue manager
// sends exemplars that way (their own TimeSeries entry, in 1.0 and 2.0),
// while AppenderV2 only takes exemplars together with a sample.
// Exemplars with no such sibling cannot be written.
func (w *batchWriter) pairExemplarOnly() {
	st, req := w.st, w.req
	n := len(req.Timeseries)
	st.attachHead = slices.Grow(st.attachHead[:0], n)[:n]
	st.attachNext = slices.Grow(st.attachNext[:0], n)[:n]
	for i := range n {
		st.attachHead[i], st.attachNext[i] = -1, -1
	}
	if st.seriesByKey == nil {
		st.seriesByKey = make(map[string]int32)
	}
	clear(st.seriesByKey)

	// Keys of the (few) exemplar-only series first, so that the scan of
	// all series below looks keys up without allocating any.
	for i := range req.Timeseries {
		if ts := &req.Timeseries[i]; isExemplarOnly(ts) {
			st.seriesByKey[string(w.key(ts.Labels))] = -1
		}
	}
	for i := range req.Timeseries {
		ts := &req.Timeseries[i]
		if ts.Err != nil || (len(ts.Samples) == 0 && len(ts.Histograms) == 0) {
			continue
		}
		k := w.key(ts.Labels)
		if t, ok := st.seriesByKey[string(k)]; ok && t < 0 {
			st.seriesByKey[string(k)] = int32(i)
		}
	}
	for i := range req.Timeseries {
		ts := &req.Timeseries[i]
		if !isExemplarOnly(ts) {
			continue
		}
		if t := st.seriesByKey[string(w.key(ts.Labels))]; t >= 0 {
			st.attachNext[i] = st.attachHead[t]
			st.attachHead[t] = int32(i)
			continue
		}
		orphans := 0
		for k := range ts.Exemplars {
			if e := &ts.Exemplars[k]; e.Err != nil {
				w.reject(kindExemplar, reasonInvalidExemplar, 1, e.Err, labels.EmptyLabels(), 0)
			} else {
				orphans++
			}
		}
		if orphans > 0 {
			w.reject(kindExemplar, reasonNoSample, orphans, errNoSample, labels.New(ts.Labels...), 0)
		}
	}
}

var errNoSample = errors.New("exemplar has no sample of its series in the request to ride on")

func isExemplarOnly(ts *TimeSeries) bool {
	return ts.Err == nil && len(ts.Samples) == 0 && len(ts.Histograms) == 0 && len(ts.Exemplars) > 0
}

// key encodes a sorted label set unambiguously: 0xff cannot occur in valid
// UTF-8, and invalid label sets never get here.
func (w *batchWriter) key(ls []Label) []byte {
	b := w.st.keyBuf[:0]
	for _, l := range ls {
		b = append(b, l.Name...)
		b = append(b, 0xff)
		b = append(b, l.Value...)
		b = append(b, 0xff)
	}
	w.st.keyBuf = b
	return b
}

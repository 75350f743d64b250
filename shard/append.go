package shard

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/exemplar"
	"github.com/prometheus/prometheus/model/histogram"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/metadata"
	"github.com/prometheus/prometheus/storage"
	"github.com/prometheus/prometheus/tsdb/chunks"
	"github.com/prometheus/prometheus/tsdb/record"
)

// ErrInvalidLabels is returned for a series with no labels or with duplicate
// label names.
var ErrInvalidLabels = errors.New("invalid labels")

// appender is the transactional appender behind both Prometheus appender
// interfaces. Samples are validated on Append, made durable as one
// write-ahead record on Commit, and only then applied to memory.
type appender struct {
	db      *DB
	ctx     context.Context
	samples []record.RefSample
	hists   []record.RefHistogramSample
	fhists  []record.RefFloatHistogramSample
	// series by position: sseries[i] is the series of samples[i], etc.
	sseries, hseries, fhseries []*memSeries
	touched                    map[*memSeries]struct{} // series whose record may not be durable yet
	meta                       map[string]metadata.Metadata
	exemplars                  []pendingExemplar
	scratch                    []byte // a write-ahead record being encoded
	walBuf                     []byte // the commit's write-ahead values
	frames                     []byte // the commit's framed segment records
	cellAdds                   []cellAdd
	// minT is the retention cutoff when the transaction began: reading the
	// clock per sample was a twentieth of a peer's CPU.
	minT int64
	// hasST is set once a sample carries a start timestamp: until then
	// the write-ahead record is the V1 form, which has no ST column to
	// encode (a third cheaper).
	hasST bool
	done  bool
}

type pendingExemplar struct {
	lset labels.Labels
	e    exemplar.Exemplar
}

// Appender implements storage.Appendable.
func (db *DB) Appender(ctx context.Context) storage.Appender {
	return &appenderV1{appender: db.newAppender(ctx)}
}

// AppenderV2 implements storage.AppendableV2.
func (db *DB) AppenderV2(ctx context.Context) storage.AppenderV2 {
	return &appenderV2{appender: db.newAppender(ctx)}
}

func (db *DB) newAppender(ctx context.Context) *appender {
	a := &appender{db: db, ctx: ctx, minT: db.minValidTime()}
	if b, ok := db.appendBufs.Get().(*appendBufs); ok {
		a.samples, a.sseries, a.scratch, a.walBuf, a.frames, a.cellAdds = b.samples, b.sseries, b.scratch, b.walBuf, b.frames, b.cellAdds
	}
	return a
}

// appendBufs are an appender's float buffers, reused by the next appender:
// growing them sample by sample was a fifth of the CPU of an append.
type appendBufs struct {
	samples  []record.RefSample
	sseries  []*memSeries
	scratch  []byte
	walBuf   []byte
	frames   []byte
	cellAdds []cellAdd
}

// recycle hands the buffers to the next appender once a commit or rollback
// has finished with them (the write-ahead segment write has returned).
func (a *appender) recycle() {
	if cap(a.samples) > 1<<20 || cap(a.frames) > 16<<20 || cap(a.walBuf) > 16<<20 || cap(a.cellAdds) > 1<<20 {
		return // an outsized request does not pin its memory
	}
	clear(a.sseries) // drop the series pointers
	a.db.appendBufs.Put(&appendBufs{samples: a.samples[:0], sseries: a.sseries[:0], scratch: a.scratch[:0], walBuf: a.walBuf[:0], frames: a.frames[:0], cellAdds: a.cellAdds[:0]})
	a.samples, a.sseries, a.scratch, a.walBuf, a.frames, a.cellAdds = nil, nil, nil, nil, nil, nil
}

// series resolves ref or labels to a series, creating it when new. hash is
// labels.StableHash(ls) when hashed.
func (a *appender) series(ref storage.SeriesRef, ls labels.Labels, hash uint64, hashed bool) (*memSeries, error) {
	if ref != 0 {
		if s, trusted := a.db.seriesByExtRef(ref); s != nil && (trusted || labels.Equal(s.lset, ls)) {
			a.touch(s)
			return s, nil
		}
	}
	s, err := a.db.getOrCreate(ls, hash, hashed)
	if err != nil {
		return nil, err
	}
	a.touch(s)
	return s, nil
}

func (a *appender) touch(s *memSeries) {
	if s.saved.Load() {
		return
	}
	if a.touched == nil {
		a.touched = map[*memSeries]struct{}{}
	}
	a.touched[s] = struct{}{}
}

// add validates and buffers one sample. It returns the series ref.
func (a *appender) add(ref storage.SeriesRef, ls labels.Labels, sm sample) (storage.SeriesRef, error) {
	return a.addHashed(ref, ls, 0, false, sm)
}

// addHashed is add with hash = labels.StableHash(ls) when hashed.
func (a *appender) addHashed(ref storage.SeriesRef, ls labels.Labels, hash uint64, hashed bool, sm sample) (storage.SeriesRef, error) {
	if a.done {
		return 0, errAppenderClosed
	}
	if sm.t < a.minT {
		a.db.metrics.rejected.WithLabelValues("out_of_bounds").Inc()
		return 0, storage.ErrOutOfBounds
	}
	s, err := a.series(ref, ls, hash, hashed)
	if err != nil {
		return 0, err
	}
	s.mu.Lock()
	err = s.check(sm)
	s.mu.Unlock()
	if errors.Is(err, errDup) {
		a.db.metrics.duplicates.Inc()
		return a.db.extRef(s), nil
	}
	if err != nil {
		a.db.metrics.rejected.WithLabelValues("duplicate_timestamp").Inc()
		return a.db.extRef(s), err
	}
	hr := chunks.HeadSeriesRef(s.ref)
	a.hasST = a.hasST || sm.st != 0
	switch {
	case sm.h != nil:
		a.hists = append(a.hists, record.RefHistogramSample{Ref: hr, ST: sm.st, T: sm.t, H: sm.h})
		a.hseries = append(a.hseries, s)
	case sm.fh != nil:
		a.fhists = append(a.fhists, record.RefFloatHistogramSample{Ref: hr, ST: sm.st, T: sm.t, FH: sm.fh})
		a.fhseries = append(a.fhseries, s)
	default:
		a.samples = append(a.samples, record.RefSample{Ref: hr, ST: sm.st, T: sm.t, V: sm.f})
		a.sseries = append(a.sseries, s)
	}
	return a.db.extRef(s), nil
}

var errAppenderClosed = errors.New("appender already committed or rolled back")

func (a *appender) setMetadata(family string, m metadata.Metadata) {
	if family == "" || (m.Type == "" && m.Help == "" && m.Unit == "") {
		return
	}
	if cur, ok := a.db.meta.get(family); ok && cur == m {
		return
	}
	if a.meta == nil {
		a.meta = map[string]metadata.Metadata{}
	}
	a.meta[family] = m
}

func (a *appender) Commit() error {
	if a.done {
		return errAppenderClosed
	}
	a.done = true
	err := a.db.commit(a)
	a.recycle()
	return err
}

func (a *appender) Rollback() error {
	if a.done {
		return errAppenderClosed
	}
	a.done = true
	a.recycle()
	return nil
}

func (a *appender) empty() bool {
	return len(a.samples) == 0 && len(a.hists) == 0 && len(a.fhists) == 0 && len(a.touched) == 0 && len(a.meta) == 0
}

// appenderV2 adapts appender to storage.AppenderV2.
type appenderV2 struct{ *appender }

func (a *appenderV2) Append(ref storage.SeriesRef, ls labels.Labels, st, t int64, v float64, h *histogram.Histogram, fh *histogram.FloatHistogram, opts storage.AppendV2Options) (storage.SeriesRef, error) {
	return a.append(ref, ls, 0, false, st, t, v, h, fh, opts)
}

// HashedAppender is implemented by the shard's AppenderV2s: a caller that
// has already hashed the labels (to route them) saves the shard hashing
// them again.
type HashedAppender interface {
	// AppendHashed is Append of labels without empty values whose
	// labels.StableHash is hash.
	AppendHashed(ref storage.SeriesRef, ls labels.Labels, hash uint64, st, t int64, v float64, h *histogram.Histogram, fh *histogram.FloatHistogram, opts storage.AppendV2Options) (storage.SeriesRef, error)
}

// AppendHashed implements HashedAppender.
func (a *appenderV2) AppendHashed(ref storage.SeriesRef, ls labels.Labels, hash uint64, st, t int64, v float64, h *histogram.Histogram, fh *histogram.FloatHistogram, opts storage.AppendV2Options) (storage.SeriesRef, error) {
	return a.append(ref, ls, hash, true, st, t, v, h, fh, opts)
}

func (a *appenderV2) append(ref storage.SeriesRef, ls labels.Labels, hash uint64, hashed bool, st, t int64, v float64, h *histogram.Histogram, fh *histogram.FloatHistogram, opts storage.AppendV2Options) (storage.SeriesRef, error) {
	r, err := a.addHashed(ref, ls, hash, hashed, sample{st: st, t: t, f: v, h: h, fh: fh})
	if err != nil {
		return r, err
	}
	if opts.Metadata != (metadata.Metadata{}) {
		family := opts.MetricFamilyName
		if family == "" {
			family = ls.Get(model.MetricNameLabel)
		}
		a.setMetadata(family, opts.Metadata)
	}
	for _, e := range opts.Exemplars {
		a.exemplars = append(a.exemplars, pendingExemplar{lset: ls, e: e})
	}
	return r, nil
}

// appenderV1 adapts appender to storage.Appender.
type appenderV1 struct{ *appender }

func (a *appenderV1) Append(ref storage.SeriesRef, ls labels.Labels, t int64, v float64) (storage.SeriesRef, error) {
	return a.add(ref, ls, sample{t: t, f: v})
}

func (*appenderV1) SetOptions(*storage.AppendOptions) {}

func (a *appenderV1) AppendExemplar(ref storage.SeriesRef, ls labels.Labels, e exemplar.Exemplar) (storage.SeriesRef, error) {
	if s, _ := a.db.seriesByExtRef(ref); s != nil {
		ls = s.lset
	}
	a.exemplars = append(a.exemplars, pendingExemplar{lset: ls, e: e})
	return ref, nil
}

func (a *appenderV1) AppendHistogram(ref storage.SeriesRef, ls labels.Labels, t int64, h *histogram.Histogram, fh *histogram.FloatHistogram) (storage.SeriesRef, error) {
	return a.add(ref, ls, sample{t: t, h: h, fh: fh})
}

func (a *appenderV1) AppendHistogramSTZeroSample(ref storage.SeriesRef, ls labels.Labels, t, st int64, h *histogram.Histogram, fh *histogram.FloatHistogram) (storage.SeriesRef, error) {
	if st >= t {
		return ref, storage.ErrSTNewerThanSample
	}
	switch {
	case h != nil:
		return a.add(ref, ls, sample{t: st, h: &histogram.Histogram{Schema: h.Schema, ZeroThreshold: h.ZeroThreshold, CustomValues: h.CustomValues, CounterResetHint: histogram.CounterReset}})
	case fh != nil:
		return a.add(ref, ls, sample{t: st, fh: &histogram.FloatHistogram{Schema: fh.Schema, ZeroThreshold: fh.ZeroThreshold, CustomValues: fh.CustomValues, CounterResetHint: histogram.CounterReset}})
	}
	return ref, nil
}

func (a *appenderV1) UpdateMetadata(ref storage.SeriesRef, ls labels.Labels, m metadata.Metadata) (storage.SeriesRef, error) {
	a.setMetadata(familyName(ls.Get(model.MetricNameLabel), m), m)
	return ref, nil
}

func (a *appenderV1) AppendSTZeroSample(ref storage.SeriesRef, ls labels.Labels, t, st int64) (storage.SeriesRef, error) {
	if st >= t {
		return ref, storage.ErrSTNewerThanSample
	}
	return a.add(ref, ls, sample{t: st})
}

// familyName strips the series suffixes of classic histograms and summaries
// so metadata is keyed by metric family, as Prometheus's metadata API is.
func familyName(name string, m metadata.Metadata) string {
	switch m.Type {
	case "histogram", "gaugehistogram", "summary":
		for _, suf := range []string{"_bucket", "_count", "_sum", "_created"} {
			if len(name) > len(suf) && name[len(name)-len(suf):] == suf {
				return name[:len(name)-len(suf)]
			}
		}
	case "counter":
		if len(name) > 8 && name[len(name)-8:] == "_created" {
			return name[:len(name)-8]
		}
	}
	return name
}

// encodeWAL encodes the appender's samples as write-ahead values: each a
// version byte, then uvarint-length-prefixed Prometheus WAL records. Large
// batches are split so a value stays small (replay holds one at a time, and
// legacy badger W values had to fit badger's value limit). The values share
// the appender's reused buffer (a fresh one per commit was a tenth of its
// CPU): they are valid until the next encodeWAL or recycle.
func (a *appender) encodeWAL() [][]byte {
	enc := record.Encoder{EnableSTStorage: a.hasST}
	out := a.walBuf[:0]
	var bounds []int // start and end of each value in out
	start := -1
	put := func(rec []byte) {
		if start < 0 {
			start = len(out)
			out = append(out, walVersion)
		}
		out = appendUvarint(out, uint64(len(rec)))
		out = append(out, rec...)
		if len(out)-start > walValueTarget {
			bounds = append(bounds, start, len(out))
			start = -1
		}
	}
	for ss := a.samples; len(ss) > 0; {
		n := min(len(ss), walSamplesPerRecord)
		a.scratch = enc.Samples(ss[:n], a.scratch[:0])
		put(a.scratch)
		ss = ss[n:]
	}
	for hs := a.hists; len(hs) > 0; {
		n := min(len(hs), walHistogramsPerRecord)
		rec, custom := enc.HistogramSamples(hs[:n], nil)
		put(rec)
		if len(custom) > 0 {
			put(enc.CustomBucketsHistogramSamples(custom, nil))
		}
		hs = hs[n:]
	}
	for hs := a.fhists; len(hs) > 0; {
		n := min(len(hs), walHistogramsPerRecord)
		rec, custom := enc.FloatHistogramSamples(hs[:n], nil)
		put(rec)
		if len(custom) > 0 {
			put(enc.CustomBucketsFloatHistogramSamples(custom, nil))
		}
		hs = hs[n:]
	}
	if start >= 0 {
		bounds = append(bounds, start, len(out))
	}
	a.walBuf = out
	vals := make([][]byte, 0, len(bounds)/2)
	for i := 0; i < len(bounds); i += 2 {
		vals = append(vals, out[bounds[i]:bounds[i+1]:bounds[i+1]])
	}
	return vals
}

// A float sample takes at most ~30 bytes in a record, a histogram a few
// hundred: these keep values well under walValueTarget*2 (< 512 KiB).
const (
	walValueTarget         = 256 << 10
	walSamplesPerRecord    = 4096
	walHistogramsPerRecord = 128
)

const walVersion = 1

func appendUvarint(b []byte, v uint64) []byte {
	for v >= 0x80 {
		b = append(b, byte(v)|0x80)
		v >>= 7
	}
	return append(b, byte(v))
}

var errWALRecord = fmt.Errorf("malformed write-ahead record: %w", ErrCorrupt)

// decodeWAL calls fn for every sample in a write-ahead value.
func decodeWAL(val []byte, fn func(ref uint64, sm sample)) error {
	if len(val) == 0 || val[0] != walVersion {
		return fmt.Errorf("version: %w", errWALRecord)
	}
	val = val[1:]
	dec := record.NewDecoder(nil, slog.New(slog.DiscardHandler))
	var (
		samples []record.RefSample
		hists   []record.RefHistogramSample
		fhists  []record.RefFloatHistogramSample
		err     error
	)
	for len(val) > 0 {
		n, k := uvarint(val)
		if k <= 0 || n > uint64(len(val)-k) {
			return fmt.Errorf("length: %w", errWALRecord)
		}
		rec := val[k : k+int(n)]
		val = val[k+int(n):]
		switch dec.Type(rec) {
		case record.Samples, record.SamplesV2:
			if samples, err = dec.Samples(rec, samples[:0]); err != nil {
				return err
			}
			for _, s := range samples {
				fn(uint64(s.Ref), sample{st: s.ST, t: s.T, f: s.V})
			}
		case record.HistogramSamples, record.CustomBucketsHistogramSamples, record.HistogramSamplesV2:
			if hists, err = dec.HistogramSamples(rec, hists[:0]); err != nil {
				return err
			}
			for _, s := range hists {
				fn(uint64(s.Ref), sample{st: s.ST, t: s.T, h: s.H})
			}
		case record.FloatHistogramSamples, record.CustomBucketsFloatHistogramSamples, record.FloatHistogramSamplesV2:
			if fhists, err = dec.FloatHistogramSamples(rec, fhists[:0]); err != nil {
				return err
			}
			for _, s := range fhists {
				fn(uint64(s.Ref), sample{st: s.ST, t: s.T, fh: s.FH})
			}
		default:
			return fmt.Errorf("record type %v: %w", dec.Type(rec), errWALRecord)
		}
	}
	return nil
}

func uvarint(b []byte) (uint64, int) {
	var x uint64
	var s uint
	for i, c := range b {
		if i == 10 {
			return 0, -1
		}
		if c < 0x80 {
			return x | uint64(c)<<s, i + 1
		}
		x |= uint64(c&0x7f) << s
		s += 7
	}
	return 0, 0
}

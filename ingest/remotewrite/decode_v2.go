package remotewrite

import (
	"fmt"
	"unicode/utf8"
)

// DecodeV2 decodes an io.prometheus.write.v2.Request (Remote-Write 2.0) from
// the uncompressed protobuf in buf into into, replacing its previous content.
// Label, exemplar and metadata references are resolved against the symbol
// table, so the result has the same shape as DecodeV1's.
//
// The result aliases buf: buf must stay unmodified while into is in use.
// A non-nil error (ErrMalformed, ErrWrongMessage, ErrInvalidSymbols,
// ErrTooLarge) means the whole body is unusable; per-series problems,
// including references outside the symbol table, are reported in
// TimeSeries.Err instead.
func DecodeV2(buf []byte, into *Request) error {
	const msg = "Request"
	r := into
	r.reset(len(buf))

	// Pass 1: the symbol table. Protobuf allows it anywhere, even after or
	// between the series that reference it, so series are decoded in a
	// second pass; skipping them here costs one length read per series.
	for i := 0; i < len(buf); {
		f, wt, j := tag(buf, i)
		if j < 0 || wt == wtEnd || f <= 0 {
			return checkTag(msg, f, wt, j)
		}
		i = j
		switch f {
		case 1, 2, 3:
			// Reserved in 2.0 precisely because they are 1.0's fields.
			return fmt.Errorf("%w: body has prometheus.WriteRequest fields but Content-Type selects io.prometheus.write.v2.Request", ErrWrongMessage)
		case 4, 5:
			if wt != wtBytes {
				return wrongType(msg, f, wt)
			}
			s, e := delimited(buf, i)
			if s < 0 {
				return truncated(msg, f)
			}
			if f == 4 {
				if err := r.charge(sizeSymbol); err != nil {
					return err
				}
				sym := unsafeString(buf[s:e])
				r.Symbols = append(r.Symbols, sym)
				// Symbols are deduplicated, so checking each once here is
				// cheaper than checking every label that uses it.
				r.symValid = append(r.symValid, utf8.ValidString(sym))
			}
			i = e
		default:
			if i = skip(buf, i, wt); i < 0 {
				return truncated(msg, f)
			}
		}
	}
	if len(r.Symbols) > 0 && r.Symbols[0] != "" {
		return fmt.Errorf("%w: first symbol must be the empty string, got %q", ErrInvalidSymbols, r.Symbols[0])
	}

	// Pass 2: the series. Pass 1 validated the top-level framing.
	for i := 0; i < len(buf); {
		f, wt, j := tag(buf, i)
		i = j
		if f != 5 {
			i = skip(buf, i, wt)
			continue
		}
		s, e := delimited(buf, i)
		if err := r.decodeV2Series(buf[s:e]); err != nil {
			return err
		}
		i = e
	}
	return nil
}

// v2Meta is a series' Metadata message before its refs are resolved.
type v2Meta struct {
	typ              int32
	helpRef, unitRef uint32
}

func (r *Request) decodeV2Series(b []byte) error {
	const msg = "TimeSeries"
	s0, e0, h0 := len(r.samples), len(r.exemplars), len(r.histograms)
	r.refs = r.refs[:0]
	var (
		meta v2Meta
		err  error
	)
	for i := 0; i < len(b); {
		f, wt, j := tag(b, i)
		if j < 0 || wt == wtEnd || f <= 0 {
			return checkTag(msg, f, wt, j)
		}
		i = j
		if f == 1 {
			if r.refs, i, err = appendUint32s(r, r.refs, b, i, wt, msg, f); err != nil {
				return err
			}
			continue
		}
		if f > 5 {
			if i = skip(b, i, wt); i < 0 {
				return truncated(msg, f)
			}
			continue
		}
		if wt != wtBytes {
			return wrongType(msg, f, wt)
		}
		s, e := delimited(b, i)
		if s < 0 {
			return truncated(msg, f)
		}
		i = e
		switch f {
		case 2:
			var smp Sample
			if err = r.charge(sizeSample); err != nil {
				return err
			}
			if smp, err = decodeSample(b[s:e], true); err == nil {
				r.samples = append(r.samples, smp)
			}
		case 3:
			err = r.decodeHistogram(b[s:e], true)
		case 4:
			if err = r.charge(sizeExemplar); err != nil {
				return err
			}
			err = r.decodeV2Exemplar(b[s:e])
		case 5:
			// A repeated embedded message merges, so decode into the
			// same value.
			err = decodeV2Metadata(b[s:e], &meta)
		}
		if err != nil {
			return err
		}
	}

	// One label per two refs, charged when the refs were.
	if err := r.charge(sizeTimeSeries + sizeLabel*(len(r.refs)/2)); err != nil {
		return err
	}
	ts := TimeSeries{
		Samples:    sub(r.samples, s0),
		Exemplars:  sub(r.exemplars, e0),
		Histograms: sub(r.histograms, h0),
	}
	l0 := len(r.labels)
	r.labels, ts.Err = r.resolveLabels(r.labels, r.refs)
	ts.Labels = sub(r.labels, l0)
	if ts.Err != nil {
		ts.Err = fmt.Errorf("%w: %w (label refs %s)", ErrInvalidLabels, ts.Err, formatRefs(r.refs))
	} else if name, err := checkLabels(ts.Labels); err != nil {
		ts.Err = seriesLabelsError(ts.Labels, err)
	} else if name == "" {
		ts.Err = fmt.Errorf("%w: missing __name__ in %s", ErrInvalidLabels, formatLabels(ts.Labels))
	} else {
		ts.name = name
		ts.Err = r.resolveMetadata(&ts, meta)
	}
	if ts.Err == nil {
		switch {
		case len(ts.Samples) > 0 && len(ts.Histograms) > 0:
			ts.Err = fmt.Errorf("%w: series %s has both samples and histograms", ErrInvalidSeries, formatLabels(ts.Labels))
		case len(ts.Samples) == 0 && len(ts.Histograms) == 0 && len(ts.Exemplars) > 0:
			r.exemplarOnly++
		case len(ts.Samples) == 0 && len(ts.Histograms) == 0:
			ts.Err = fmt.Errorf("%w: series %s has no samples or histograms", ErrInvalidSeries, formatLabels(ts.Labels))
		}
	}
	r.Timeseries = append(r.Timeseries, ts)
	return nil
}

// resolveLabels appends the labels named by refs (name, value pairs) to dst,
// dropping empty values. On error, dst may hold a partial set.
func (r *Request) resolveLabels(dst []Label, refs []uint32) ([]Label, error) {
	if len(refs)%2 != 0 {
		return dst, fmt.Errorf("odd number of label refs (%d)", len(refs))
	}
	syms, valid := r.Symbols, r.symValid
	for k := 0; k < len(refs); k += 2 {
		nr, vr := refs[k], refs[k+1]
		if int64(nr) >= int64(len(syms)) || int64(vr) >= int64(len(syms)) {
			return dst, fmt.Errorf("label refs %d=%d outside of symbols table (size %d)", nr, vr, len(syms))
		}
		if syms[vr] == "" {
			continue
		}
		if !valid[nr] || !valid[vr] {
			return dst, fmt.Errorf("label %q is not valid UTF-8", syms[nr])
		}
		dst = append(dst, Label{Name: syms[nr], Value: syms[vr]})
	}
	return dst, nil
}

func (r *Request) resolveMetadata(ts *TimeSeries, m v2Meta) error {
	n := int64(len(r.Symbols))
	if int64(m.helpRef) >= n || int64(m.unitRef) >= n {
		return fmt.Errorf("%w: metadata help_ref %d / unit_ref %d outside of symbols table (size %d) for %s",
			ErrInvalidSeries, m.helpRef, m.unitRef, n, formatLabels(ts.Labels))
	}
	ts.Metadata = Metadata{
		Type: metricTypeFromWire(m.typ),
		Help: r.Symbols[m.helpRef],
		Unit: r.Symbols[m.unitRef],
	}
	return nil
}

func decodeV2Metadata(b []byte, m *v2Meta) error {
	const msg = "Metadata"
	for i := 0; i < len(b); {
		f, wt, j := tag(b, i)
		if j < 0 || wt == wtEnd || f <= 0 {
			return checkTag(msg, f, wt, j)
		}
		i = j
		switch f {
		case 1, 3, 4:
			if wt != wtVarint {
				return wrongType(msg, f, wt)
			}
			var v uint64
			if v, i = uvarint(b, i); i < 0 {
				return truncated(msg, f)
			}
			switch f {
			case 1:
				m.typ = int32(v)
			case 3:
				m.helpRef = uint32(v)
			case 4:
				m.unitRef = uint32(v)
			}
		default:
			if i = skip(b, i, wt); i < 0 {
				return truncated(msg, f)
			}
		}
	}
	return nil
}

func (r *Request) decodeV2Exemplar(b []byte) error {
	const msg = "Exemplar"
	var (
		ex  Exemplar
		err error
	)
	r.exRefs = r.exRefs[:0]
	for i := 0; i < len(b); {
		f, wt, j := tag(b, i)
		if j < 0 || wt == wtEnd || f <= 0 {
			return checkTag(msg, f, wt, j)
		}
		i = j
		switch f {
		case 1:
			if r.exRefs, i, err = appendUint32s(r, r.exRefs, b, i, wt, msg, f); err != nil {
				return err
			}
		case 2:
			if wt != wtFixed64 {
				return wrongType(msg, f, wt)
			}
			if ex.Value, i = float64At(b, i); i < 0 {
				return truncated(msg, f)
			}
		case 3:
			if wt != wtVarint {
				return wrongType(msg, f, wt)
			}
			var v uint64
			if v, i = uvarint(b, i); i < 0 {
				return truncated(msg, f)
			}
			ex.Timestamp = int64(v)
		default:
			if i = skip(b, i, wt); i < 0 {
				return truncated(msg, f)
			}
		}
	}
	if err := r.charge(sizeLabel * (len(r.exRefs) / 2)); err != nil {
		return err
	}
	l0 := len(r.exLabels)
	r.exLabels, err = r.resolveLabels(r.exLabels, r.exRefs)
	ex.Labels = sub(r.exLabels, l0)
	if err != nil {
		ex.Err = fmt.Errorf("%w: %w (label refs %s)", ErrInvalidExemplar, err, formatRefs(r.exRefs))
	} else {
		ex.Err = exemplarLabelsError(ex.Labels, nil)
	}
	r.exemplars = append(r.exemplars, ex)
	return nil
}

// formatRefs renders label refs for error messages, truncated.
func formatRefs(refs []uint32) string {
	const maxRefs = 32
	if len(refs) > maxRefs {
		return fmt.Sprint(refs[:maxRefs]) + "…"
	}
	return fmt.Sprint(refs)
}

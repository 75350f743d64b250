package remotewrite

import (
	"fmt"
)

// DecodeV1 decodes a prometheus.WriteRequest (Remote-Write 1.0) from the
// uncompressed protobuf in buf into into, replacing its previous content.
//
// The result aliases buf: buf must stay unmodified while into is in use.
// A non-nil error (ErrMalformed, ErrWrongMessage, ErrTooLarge) means the
// whole body is unusable; per-series problems are reported in
// TimeSeries.Err instead.
func DecodeV1(buf []byte, into *Request) error {
	const msg = "WriteRequest"
	r := into
	r.reset(len(buf))
	for i := 0; i < len(buf); {
		f, wt, j := tag(buf, i)
		if j < 0 || wt == wtEnd || f <= 0 {
			return checkTag(msg, f, wt, j)
		}
		i = j
		switch f {
		case 1, 3:
			if wt != wtBytes {
				return wrongType(msg, f, wt)
			}
			s, e := delimited(buf, i)
			if s < 0 {
				return truncated(msg, f)
			}
			var err error
			if f == 1 {
				err = r.decodeV1Series(buf[s:e])
			} else {
				err = r.decodeV1Metadata(buf[s:e])
			}
			if err != nil {
				return err
			}
			i = e
		case 4, 5:
			// symbols and timeseries of io.prometheus.write.v2.Request.
			// prometheus.WriteRequest is frozen (deprecated by 2.0), so these
			// numbers can never become legitimate 1.0 fields.
			if wt == wtBytes {
				return fmt.Errorf("%w: body has io.prometheus.write.v2.Request fields but Content-Type selects prometheus.WriteRequest", ErrWrongMessage)
			}
			fallthrough
		default:
			if i = skip(buf, i, wt); i < 0 {
				return truncated(msg, f)
			}
		}
	}
	return nil
}

// v1FieldSize is what each TimeSeries field (by number) decodes into.
var v1FieldSize = [...]int{1: sizeLabel, 2: sizeSample, 3: sizeExemplar, 4: 0}

func (r *Request) decodeV1Series(b []byte) error {
	const msg = "TimeSeries"
	l0, s0, e0, h0 := len(r.labels), len(r.samples), len(r.exemplars), len(r.histograms)
	// Byte range of the label fields, for the ASCII fast path below.
	lStart, lEnd, contiguous := -1, -1, true
	for i := 0; i < len(b); {
		t0 := i
		f, wt, j := tag(b, i)
		if j < 0 || wt == wtEnd || f <= 0 {
			return checkTag(msg, f, wt, j)
		}
		i = j
		if f < 1 || f > 4 {
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
		// Charge the struct each field becomes before decoding it (an
		// exemplar's labels and a histogram's buckets charge themselves).
		err := r.charge(v1FieldSize[f])
		if err != nil {
			return err
		}
		switch f {
		case 1:
			var l Label
			if l, err = decodeV1Label(b[s:e]); err == nil && l.Value != "" {
				r.labels = append(r.labels, l)
			}
			if lStart < 0 {
				lStart = t0
			} else if t0 != lEnd {
				contiguous = false
			}
			lEnd = e
		case 2:
			var smp Sample
			if smp, err = decodeSample(b[s:e], false); err == nil {
				r.samples = append(r.samples, smp)
			}
		case 3:
			err = r.decodeV1Exemplar(b[s:e])
		case 4:
			err = r.decodeHistogram(b[s:e], false)
		}
		if err != nil {
			return err
		}
	}

	if err := r.charge(sizeTimeSeries); err != nil {
		return err
	}
	ts := TimeSeries{
		Labels:     sub(r.labels, l0),
		Samples:    sub(r.samples, s0),
		Exemplars:  sub(r.exemplars, e0),
		Histograms: sub(r.histograms, h0),
	}
	// Labels are valid UTF-8 if their whole encoding is ASCII, the common
	// case: one word-at-a-time scan per series instead of two
	// utf8.ValidString calls per label (which was 15% of the handler's time).
	var utf8Err error
	if lStart >= 0 && (!contiguous || !isASCII(b[lStart:lEnd])) {
		utf8Err = validUTF8Labels(ts.Labels)
	}
	if utf8Err != nil {
		ts.Err = fmt.Errorf("%w: %w in %s", ErrInvalidLabels, utf8Err, formatLabels(ts.Labels))
	} else if name, err := checkLabels(ts.Labels); err != nil {
		ts.Err = seriesLabelsError(ts.Labels, err)
	} else if name == "" {
		ts.Err = fmt.Errorf("%w: missing __name__ in %s", ErrInvalidLabels, formatLabels(ts.Labels))
	} else {
		ts.name = name
		if len(ts.Samples) == 0 && len(ts.Histograms) == 0 && len(ts.Exemplars) > 0 {
			r.exemplarOnly++
		}
	}
	r.Timeseries = append(r.Timeseries, ts)
	return nil
}

// decodeV1Label decodes a prometheus.Label. The common encoding (name then
// value, each present once with a one-byte length) takes a fast path.
func decodeV1Label(b []byte) (Label, error) {
	if n := len(b); n >= 4 && b[0] == 0x0a && b[1] < 0x80 {
		ne := 2 + int(b[1])
		if ne+2 <= n && b[ne] == 0x12 && b[ne+1] < 0x80 && ne+2+int(b[ne+1]) == n {
			return Label{Name: unsafeString(b[2:ne]), Value: unsafeString(b[ne+2:])}, nil
		}
	}
	const msg = "Label"
	var l Label
	for i := 0; i < len(b); {
		f, wt, j := tag(b, i)
		if j < 0 || wt == wtEnd || f <= 0 {
			return l, checkTag(msg, f, wt, j)
		}
		i = j
		switch f {
		case 1, 2:
			if wt != wtBytes {
				return l, wrongType(msg, f, wt)
			}
			s, e := delimited(b, i)
			if s < 0 {
				return l, truncated(msg, f)
			}
			if f == 1 {
				l.Name = unsafeString(b[s:e])
			} else {
				l.Value = unsafeString(b[s:e])
			}
			i = e
		default:
			if i = skip(b, i, wt); i < 0 {
				return l, truncated(msg, f)
			}
		}
	}
	return l, nil
}

func (r *Request) decodeV1Exemplar(b []byte) error {
	const msg = "Exemplar"
	var ex Exemplar
	l0 := len(r.exLabels)
	for i := 0; i < len(b); {
		f, wt, j := tag(b, i)
		if j < 0 || wt == wtEnd || f <= 0 {
			return checkTag(msg, f, wt, j)
		}
		i = j
		switch f {
		case 1:
			if wt != wtBytes {
				return wrongType(msg, f, wt)
			}
			s, e := delimited(b, i)
			if s < 0 {
				return truncated(msg, f)
			}
			l, err := decodeV1Label(b[s:e])
			if err != nil {
				return err
			}
			if err := r.charge(sizeLabel); err != nil {
				return err
			}
			if l.Value != "" {
				r.exLabels = append(r.exLabels, l)
			}
			i = e
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
	ex.Labels = sub(r.exLabels, l0)
	ex.Err = exemplarLabelsError(ex.Labels, validUTF8Labels(ex.Labels))
	r.exemplars = append(r.exemplars, ex)
	return nil
}

// exemplarLabelsError validates exemplar labels (sorting them if needed) and
// returns nil or an ErrInvalidExemplar. utf8Err is the caller's UTF-8 verdict.
func exemplarLabelsError(ls []Label, utf8Err error) error {
	if utf8Err != nil {
		return fmt.Errorf("%w: %w in %s", ErrInvalidExemplar, utf8Err, formatLabels(ls))
	}
	if _, err := checkLabels(ls); err != nil {
		return fmt.Errorf("%w: %w in %s", ErrInvalidExemplar, err, formatLabels(ls))
	}
	return nil
}

func (r *Request) decodeV1Metadata(b []byte) error {
	const msg = "MetricMetadata"
	if err := r.charge(sizeMetadata); err != nil {
		return err
	}
	md := Metadata{Type: metricTypeFromWire(0)}
	for i := 0; i < len(b); {
		f, wt, j := tag(b, i)
		if j < 0 || wt == wtEnd || f <= 0 {
			return checkTag(msg, f, wt, j)
		}
		i = j
		switch f {
		case 1:
			if wt != wtVarint {
				return wrongType(msg, f, wt)
			}
			var v uint64
			if v, i = uvarint(b, i); i < 0 {
				return truncated(msg, f)
			}
			md.Type = metricTypeFromWire(int32(v))
		case 2, 4, 5:
			if wt != wtBytes {
				return wrongType(msg, f, wt)
			}
			s, e := delimited(b, i)
			if s < 0 {
				return truncated(msg, f)
			}
			v := unsafeString(b[s:e])
			switch f {
			case 2:
				md.FamilyName = v
			case 4:
				md.Help = v
			case 5:
				md.Unit = v
			}
			i = e
		default:
			if i = skip(b, i, wt); i < 0 {
				return truncated(msg, f)
			}
		}
	}
	r.Metadata = append(r.Metadata, md)
	return nil
}

package remotewrite

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"
	"unsafe"

	"github.com/prometheus/common/model"
)

// Validation errors. They are never returned by DecodeV1/DecodeV2 themselves:
// they mark individual series (TimeSeries.Err), histograms or exemplars, so
// that the rest of the batch can still be written (spec: partial write).
var (
	// ErrInvalidLabels: empty or non-UTF-8 label names, non-UTF-8 values,
	// duplicate names, a missing __name__, or unresolvable 2.0 label refs.
	ErrInvalidLabels = errors.New("invalid labels")
	// ErrInvalidSeries: a series whose structure the spec forbids, e.g. a 2.0
	// series with no samples or with both samples and histograms, or with
	// unresolvable metadata refs.
	ErrInvalidSeries = errors.New("invalid series")
	// ErrInvalidHistogram: a histogram mixing integer and float counts.
	ErrInvalidHistogram = errors.New("invalid native histogram")
	// ErrInvalidExemplar: an exemplar with invalid or unresolvable labels.
	ErrInvalidExemplar = errors.New("invalid exemplar")
)

// ErrTooLarge reports a body whose decoded form would exceed
// maxAmplification× the body's size.
var ErrTooLarge = errors.New("request too large once decoded")

// Memory accounting. The decoded form of a body can be much larger than the
// body: a 2-byte empty TimeSeries message becomes a 192-byte struct. Every
// decoded element is charged before it is allocated, which bounds a request
// at maxAmplification× its decompressed size and lets the handler count the
// decoded form against its in-flight budget as it grows.
const (
	// maxAmplification is decoded bytes allowed per body byte. Realistic
	// requests stay near or below 10 (TestAmplificationRealistic): 1.0 is
	// ~1.5×, and the smallest useful 2.0 series, two labels and one sample,
	// is ~29 bytes on the wire and ~300 decoded. Streams of empty messages
	// would reach ~130.
	maxAmplification = 32
	// amplificationSlack admits tiny bodies whatever their ratio.
	amplificationSlack = 64 << 10
	// growStep is how often (in charged bytes) Request.grow is consulted.
	growStep = 1 << 20

	sizeLabel      = int(unsafe.Sizeof(Label{}))
	sizeSample     = int(unsafe.Sizeof(Sample{}))
	sizeExemplar   = int(unsafe.Sizeof(Exemplar{}))
	sizeHistogram  = int(unsafe.Sizeof(Histogram{}))
	sizeSpan       = int(unsafe.Sizeof(BucketSpan{}))
	sizeTimeSeries = int(unsafe.Sizeof(TimeSeries{}))
	sizeMetadata   = int(unsafe.Sizeof(Metadata{}))
	sizeSymbol     = int(unsafe.Sizeof("")) + 1 // string header and its validity flag
)

// charge accounts n bytes of decoded structures. Inlined on the hot path;
// only every growStep bytes does it do more than add and compare.
func (r *Request) charge(n int) error {
	r.mem += int64(n)
	if r.mem <= r.memCheck {
		return nil
	}
	return r.chargeSlow()
}

func (r *Request) chargeSlow() error {
	if r.mem > r.memLimit {
		return fmt.Errorf("%w: decoded structures exceed %d bytes (%d× the body)", ErrTooLarge, r.memLimit, maxAmplification)
	}
	if r.grow != nil {
		if err := r.grow(r.mem); err != nil {
			return err
		}
	}
	r.memCheck = min(r.memLimit, r.mem+growStep)
	return nil
}

// reset empties r for decoding a body of bodyLen bytes, keeping every
// arena's capacity.
func (r *Request) reset(bodyLen int) {
	r.mem = 0
	r.memLimit = int64(bodyLen)*maxAmplification + amplificationSlack
	r.memCheck = min(r.memLimit, growStep)
	r.Timeseries = r.Timeseries[:0]
	r.Metadata = r.Metadata[:0]
	r.Symbols = r.Symbols[:0]
	r.exemplarOnly = 0
	r.labels = r.labels[:0]
	r.exLabels = r.exLabels[:0]
	r.samples = r.samples[:0]
	r.histograms = r.histograms[:0]
	r.exemplars = r.exemplars[:0]
	r.spans = r.spans[:0]
	r.ints = r.ints[:0]
	r.floats = r.floats[:0]
	r.refs = r.refs[:0]
	r.exRefs = r.exRefs[:0]
	r.symValid = r.symValid[:0]
}

// sub returns arena[start:] with its capacity clipped, so that nothing
// appended through the returned slice can overwrite the arena's next entry.
func sub[T any](arena []T, start int) []T {
	if start == len(arena) {
		return nil
	}
	return arena[start:len(arena):len(arena)]
}

// appendArena copies src to the end of *arena and returns the copy.
func appendArena[T any](arena *[]T, src []T) []T {
	if len(src) == 0 {
		return nil
	}
	start := len(*arena)
	*arena = append(*arena, src...)
	return sub(*arena, start)
}

// decodeSample decodes a 1.0 or 2.0 Sample; 1.0 has no field 3.
func decodeSample(b []byte, v2 bool) (Sample, error) {
	const msg = "Sample"
	var s Sample
	for i := 0; i < len(b); {
		f, wt, j := tag(b, i)
		if j < 0 || wt == wtEnd || f <= 0 {
			return s, checkTag(msg, f, wt, j)
		}
		i = j
		switch {
		case f == 1:
			if wt != wtFixed64 {
				return s, wrongType(msg, f, wt)
			}
			if s.Value, i = float64At(b, i); i < 0 {
				return s, truncated(msg, f)
			}
		case f == 2 || (f == 3 && v2):
			if wt != wtVarint {
				return s, wrongType(msg, f, wt)
			}
			var v uint64
			if v, i = uvarint(b, i); i < 0 {
				return s, truncated(msg, f)
			}
			if f == 2 {
				s.Timestamp = int64(v)
			} else {
				s.StartTimestamp = int64(v)
			}
		default:
			if i = skip(b, i, wt); i < 0 {
				return s, truncated(msg, f)
			}
		}
	}
	return s, nil
}

// histScratch collects a histogram's repeated fields before they are copied
// into the Request arenas. Collecting first keeps every field contiguous
// even when a sender interleaves unpacked elements of different fields, with
// linear cost (relocating in place would be quadratic on hostile input).
type histScratch struct {
	negSpans, posSpans   []BucketSpan
	negDeltas, posDeltas []int64
	negCounts, posCounts []float64
	custom               []float64
}

func (s *histScratch) reset() {
	s.negSpans, s.posSpans = s.negSpans[:0], s.posSpans[:0]
	s.negDeltas, s.posDeltas = s.negDeltas[:0], s.posDeltas[:0]
	s.negCounts, s.posCounts = s.negCounts[:0], s.posCounts[:0]
	s.custom = s.custom[:0]
}

// decodeHistogram decodes a 1.0 or 2.0 Histogram (2.0 adds field 17) and
// appends it to r.histograms.
func (r *Request) decodeHistogram(b []byte, v2 bool) error {
	const msg = "Histogram"
	var (
		h  Histogram
		hs = &r.hs
		// Presence of each oneof member, to detect int/float mixing that a
		// last-wins oneof decode would silently resolve.
		countInt, countFloat, zeroInt, zeroFloat bool
		err                                      error
	)
	hs.reset()
	for i := 0; i < len(b); {
		f, wt, j := tag(b, i)
		if j < 0 || wt == wtEnd || f <= 0 {
			return checkTag(msg, f, wt, j)
		}
		i = j
		switch f {
		case 1, 4, 6, 14, 15, 17:
			if f == 17 && !v2 {
				if i = skip(b, i, wt); i < 0 {
					return truncated(msg, f)
				}
				continue
			}
			if wt != wtVarint {
				return wrongType(msg, f, wt)
			}
			var v uint64
			if v, i = uvarint(b, i); i < 0 {
				return truncated(msg, f)
			}
			switch f {
			case 1:
				h.CountInt, h.IsFloat, countInt = v, false, true
			case 4:
				h.Schema = zigzag32(v)
			case 6:
				h.ZeroCountInt, zeroInt = v, true
			case 14:
				h.ResetHint = int32(v)
			case 15:
				h.Timestamp = int64(v)
			case 17:
				h.StartTimestamp = int64(v)
			}
		case 2, 3, 5, 7:
			if wt != wtFixed64 {
				return wrongType(msg, f, wt)
			}
			var v float64
			if v, i = float64At(b, i); i < 0 {
				return truncated(msg, f)
			}
			switch f {
			case 2:
				h.CountFloat, h.IsFloat, countFloat = v, true, true
			case 3:
				h.Sum = v
			case 5:
				h.ZeroThreshold = v
			case 7:
				h.ZeroCountFloat, zeroFloat = v, true
			}
		case 8, 11:
			if wt != wtBytes {
				return wrongType(msg, f, wt)
			}
			s, e := delimited(b, i)
			if s < 0 {
				return truncated(msg, f)
			}
			span, err := decodeSpan(b[s:e])
			if err != nil {
				return err
			}
			if err := r.charge(sizeSpan); err != nil {
				return err
			}
			if f == 8 {
				hs.negSpans = append(hs.negSpans, span)
			} else {
				hs.posSpans = append(hs.posSpans, span)
			}
			i = e
		case 9:
			hs.negDeltas, i, err = appendSint64s(r, hs.negDeltas, b, i, wt, msg, f)
		case 12:
			hs.posDeltas, i, err = appendSint64s(r, hs.posDeltas, b, i, wt, msg, f)
		case 10:
			hs.negCounts, i, err = appendDoubles(r, hs.negCounts, b, i, wt, msg, f)
		case 13:
			hs.posCounts, i, err = appendDoubles(r, hs.posCounts, b, i, wt, msg, f)
		case 16:
			hs.custom, i, err = appendDoubles(r, hs.custom, b, i, wt, msg, f)
		default:
			if i = skip(b, i, wt); i < 0 {
				return truncated(msg, f)
			}
		}
		if err != nil {
			return err
		}
	}
	// The arena copies double what the scratch holds.
	if err := r.charge(sizeHistogram + sizeSpan*(len(hs.negSpans)+len(hs.posSpans)) +
		8*(len(hs.negDeltas)+len(hs.posDeltas)+len(hs.negCounts)+len(hs.posCounts)+len(hs.custom))); err != nil {
		return err
	}
	h.NegativeSpans = appendArena(&r.spans, hs.negSpans)
	h.PositiveSpans = appendArena(&r.spans, hs.posSpans)
	h.NegativeDeltas = appendArena(&r.ints, hs.negDeltas)
	h.PositiveDeltas = appendArena(&r.ints, hs.posDeltas)
	h.NegativeCounts = appendArena(&r.floats, hs.negCounts)
	h.PositiveCounts = appendArena(&r.floats, hs.posCounts)
	h.CustomValues = appendArena(&r.floats, hs.custom)

	intParts := zeroInt || len(h.NegativeDeltas) > 0 || len(h.PositiveDeltas) > 0
	floatParts := zeroFloat || len(h.NegativeCounts) > 0 || len(h.PositiveCounts) > 0
	if (countInt && countFloat) || (h.IsFloat && intParts) || (!h.IsFloat && floatParts) {
		h.Err = fmt.Errorf("%w: mixes integer and float counts", ErrInvalidHistogram)
	}
	r.histograms = append(r.histograms, h)
	return nil
}

func decodeSpan(b []byte) (BucketSpan, error) {
	const msg = "BucketSpan"
	var s BucketSpan
	for i := 0; i < len(b); {
		f, wt, j := tag(b, i)
		if j < 0 || wt == wtEnd || f <= 0 {
			return s, checkTag(msg, f, wt, j)
		}
		i = j
		switch f {
		case 1, 2:
			if wt != wtVarint {
				return s, wrongType(msg, f, wt)
			}
			var v uint64
			if v, i = uvarint(b, i); i < 0 {
				return s, truncated(msg, f)
			}
			if f == 1 {
				s.Offset = zigzag32(v)
			} else {
				s.Length = uint32(v)
			}
		default:
			if i = skip(b, i, wt); i < 0 {
				return s, truncated(msg, f)
			}
		}
	}
	return s, nil
}

// checkLabels validates a label set whose empty-valued labels were already
// dropped, sorting it in place if the sender did not. UTF-8 validity is
// checked by the caller, which knows whether it can be cached (2.0 symbols).
// It returns the __name__ value.
//
// Prometheus sorts as well (ScratchBuilder.Sort in its decoders) rather than
// rejecting unsorted sets, so Kiln accepts them too; sorted is the common case
// and costs one comparison per label.
func checkLabels(ls []Label) (string, error) {
	name, err := scanLabels(ls)
	if errors.Is(err, errUnsorted) {
		slices.SortFunc(ls, func(a, b Label) int { return strings.Compare(a.Name, b.Name) })
		name, err = scanLabels(ls)
	}
	return name, err
}

var (
	errUnsorted  = errors.New("labels not sorted")
	errDuplicate = errors.New("duplicate label name")
	errEmptyName = errors.New("empty label name")
)

func scanLabels(ls []Label) (string, error) {
	var name string
	for k := range ls {
		if ls[k].Name == "" {
			return "", errEmptyName
		}
		if k > 0 {
			switch c := compareNames(ls[k-1].Name, ls[k].Name); {
			case c > 0:
				return "", errUnsorted
			case c == 0:
				return "", errDuplicate
			}
		}
		if ls[k].Name == model.MetricNameLabel {
			name = ls[k].Value
		}
	}
	return name, nil
}

// compareNames is strings.Compare with the first byte compared inline:
// adjacent label names usually differ there, which saves a runtime call per
// label (the sortedness check was 18% of 1.0 decode time).
func compareNames(a, b string) int {
	if len(a) > 0 && len(b) > 0 && a[0] != b[0] {
		if a[0] < b[0] {
			return -1
		}
		return 1
	}
	return strings.Compare(a, b)
}

// seriesLabelsError wraps a label problem with the series it belongs to.
func seriesLabelsError(ls []Label, err error) error {
	if errors.Is(err, errDuplicate) {
		for k := 1; k < len(ls); k++ {
			if ls[k-1].Name == ls[k].Name {
				return fmt.Errorf("%w: duplicate label name %q in %s", ErrInvalidLabels, ls[k].Name, formatLabels(ls))
			}
		}
	}
	return fmt.Errorf("%w: %w in %s", ErrInvalidLabels, err, formatLabels(ls))
}

// validUTF8Labels reports the first label with invalid UTF-8, for 1.0 where
// every string is checked where it is used.
func validUTF8Labels(ls []Label) error {
	for _, l := range ls {
		if !utf8.ValidString(l.Name) {
			return fmt.Errorf("label name %q is not valid UTF-8", l.Name)
		}
		if !utf8.ValidString(l.Value) {
			return fmt.Errorf("value of label %q is not valid UTF-8", l.Name)
		}
	}
	return nil
}

// maxFormattedLabels bounds label sets quoted in error messages, which go to
// the sender and to logs.
const maxFormattedLabels = 512

// formatLabels renders ls like labels.Labels.String, truncated. Error path only.
func formatLabels(ls []Label) string {
	var sb strings.Builder
	sb.WriteByte('{')
	for k, l := range ls {
		if k > 0 {
			sb.WriteString(", ")
		}
		sb.WriteString(l.Name)
		sb.WriteByte('=')
		sb.WriteString(strconv.Quote(l.Value))
		if sb.Len() > maxFormattedLabels {
			sb.WriteString(", …")
			break
		}
	}
	sb.WriteByte('}')
	return sb.String()
}

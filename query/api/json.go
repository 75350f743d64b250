package api

import (
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"strconv"
	"unicode/utf8"

	"github.com/prometheus/prometheus/model/exemplar"
	"github.com/prometheus/prometheus/model/histogram"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql"
	"github.com/prometheus/prometheus/promql/parser"
	"github.com/prometheus/prometheus/util/annotations"
	"github.com/prometheus/prometheus/util/stats"
	"github.com/valyala/fasthttp"
)

// The response encoder writes JSON by hand for the hot types (vectors,
// matrices, label sets, string lists) straight into fasthttp's pooled
// response buffer, and falls back to encoding/json for the small status
// structs. Output matches Prometheus byte for byte, including its two
// string-escaping flavours: label names and values inside results are
// written without HTML escaping (jsoniter's Stream.WriteString), everything
// else with it (encoding/json compatible).

// queryData is the "data" of /query and /query_range.
type queryData struct {
	ResultType parser.ValueType
	Result     parser.Value
	Stats      stats.QueryStats // nil unless the stats parameter is set
}

// maxAnnotations caps warnings and infos, each, as Prometheus does.
const maxAnnotations = 10

func (a *API) respond(ctx *fasthttp.RequestCtx, data any, warnings annotations.Annotations, query string) {
	warn, info := annotationStrings(warnings, query)

	// Borrow the response's own pooled body buffer rather than keeping a
	// second pool and copying: SwapBody hands the slice over and back.
	b := ctx.Response.SwapBody(nil)[:0]
	b = append(b, `{"status":"success","data":`...)
	b, err := appendData(b, data)
	if err != nil {
		ctx.Response.SwapBody(b[:0])
		a.logger.Error("error marshaling response", "url", string(ctx.RequestURI()), "err", err)
		ctx.Error(err.Error(), fasthttp.StatusInternalServerError)
		return
	}
	if len(warn) > 0 {
		b = append(b, `,"warnings":`...)
		b = appendStringList(b, warn)
	}
	if len(info) > 0 {
		b = append(b, `,"infos":`...)
		b = appendStringList(b, info)
	}
	b = append(b, '}')
	ctx.Response.SwapBody(b)
	ctx.SetContentType("application/json")
	ctx.SetStatusCode(fasthttp.StatusOK)
}

func (a *API) respondError(ctx *fasthttp.RequestCtx, apiErr *apiError, data any) {
	b := ctx.Response.SwapBody(nil)[:0]
	b = append(b, `{"status":"error"`...)
	if data != nil {
		var err error
		b = append(b, `,"data":`...)
		if b, err = appendData(b, data); err != nil {
			ctx.Response.SwapBody(b[:0])
			a.logger.Error("error marshaling json response", "err", err)
			ctx.Error(err.Error(), fasthttp.StatusInternalServerError)
			return
		}
	}
	b = append(b, `,"errorType":`...)
	b = appendString(b, string(apiErr.typ), true)
	b = append(b, `,"error":`...)
	b = appendString(b, apiErr.err.Error(), true)
	b = append(b, '}')
	ctx.Response.SwapBody(b)
	ctx.SetContentType("application/json")
	ctx.SetStatusCode(apiErr.typ.httpStatus())
}

// annotationStrings splits annotations into warnings and infos, each capped
// at maxAnnotations plus a "N more ... omitted" line, as Prometheus does.
// Unlike Prometheus (which walks a map) it sorts first, so the output and
// the choice of what is omitted are deterministic.
func annotationStrings(as annotations.Annotations, query string) (warnings, infos []string) {
	if len(as) == 0 {
		return nil, nil
	}
	warnings, infos = as.AsStrings(query, 0, 0)
	return capAnnotations(warnings, "warning"), capAnnotations(infos, "info")
}

func capAnnotations(ss []string, kind string) []string {
	slices.Sort(ss)
	if len(ss) <= maxAnnotations {
		return ss
	}
	omitted := len(ss) - maxAnnotations
	return append(ss[:maxAnnotations], fmt.Sprintf("%d more %s annotations omitted", omitted, kind))
}

// appendData encodes a handler's result.
func appendData(b []byte, data any) ([]byte, error) {
	switch v := data.(type) {
	case *queryData:
		b = append(b, `{"resultType":`...)
		b = appendString(b, string(v.ResultType), true)
		b = append(b, `,"result":`...)
		var err error
		if b, err = appendData(b, v.Result); err != nil {
			return b, err
		}
		if v.Stats != nil {
			b = append(b, `,"stats":`...)
			if b, err = appendStd(b, v.Stats); err != nil {
				return b, err
			}
		}
		return append(b, '}'), nil
	case promql.Vector:
		return appendVector(b, v), nil
	case promql.Matrix:
		return appendMatrix(b, v), nil
	case promql.Scalar:
		// Prometheus encodes scalars through Scalar.MarshalJSON: the time
		// as an encoding/json float, the value with 'f' formatting.
		b = append(b, '[')
		b = appendStdFloat(b, float64(v.T)/1000)
		b = append(b, ',', '"')
		b = strconv.AppendFloat(b, v.V, 'f', -1, 64)
		return append(b, '"', ']'), nil
	case promql.String:
		b = append(b, '[')
		b = appendStdFloat(b, float64(v.T)/1000)
		b = append(b, ',')
		b = appendString(b, v.V, true)
		return append(b, ']'), nil
	case []labels.Labels:
		b = append(b, '[')
		for i, l := range v {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendLabels(b, l)
		}
		return append(b, ']'), nil
	case []exemplar.QueryResult:
		return appendExemplarResults(b, v), nil
	case []string:
		return appendStringList(b, v), nil
	case string:
		return appendString(b, v, true), nil
	default:
		return appendStd(b, v)
	}
}

// appendStd encodes v with encoding/json, which HTML-escapes and sorts map
// keys exactly like the jsoniter configuration Prometheus uses.
func appendStd(b []byte, v any) ([]byte, error) {
	enc, err := json.Marshal(v)
	if err != nil {
		return b, err
	}
	return append(b, enc...), nil
}

func appendVector(b []byte, v promql.Vector) []byte {
	b = append(b, '[')
	for i := range v {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendSample(b, &v[i])
	}
	return append(b, ']')
}

// appendSample writes {"metric":{...},"value":[t,"v"]} or, for a native
// histogram, {"metric":{...},"histogram":[t,{...}]}.
func appendSample(b []byte, s *promql.Sample) []byte {
	b = append(b, `{"metric":`...)
	b = appendLabels(b, s.Metric)
	if s.H == nil {
		b = append(b, `,"value":[`...)
		b = appendTimestamp(b, s.T)
		b = append(b, ',')
		b = appendSampleValue(b, s.F)
	} else {
		b = append(b, `,"histogram":[`...)
		b = appendTimestamp(b, s.T)
		b = append(b, ',')
		b = appendHistogram(b, s.H)
	}
	return append(b, ']', '}')
}

func appendMatrix(b []byte, m promql.Matrix) []byte {
	b = append(b, '[')
	for i := range m {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendSeries(b, &m[i])
	}
	return append(b, ']')
}

// appendSeries writes {"metric":{...},"values":[...],"histograms":[...]},
// leaving out whichever of the two point lists is empty.
func appendSeries(b []byte, s *promql.Series) []byte {
	b = append(b, `{"metric":`...)
	b = appendLabels(b, s.Metric)
	if len(s.Floats) > 0 {
		b = append(b, `,"values":[`...)
		for i, p := range s.Floats {
			if i > 0 {
				b = append(b, ',')
			}
			b = append(b, '[')
			b = appendTimestamp(b, p.T)
			b = append(b, ',')
			b = appendSampleValue(b, p.F)
			b = append(b, ']')
		}
		b = append(b, ']')
	}
	if len(s.Histograms) > 0 {
		b = append(b, `,"histograms":[`...)
		for i, p := range s.Histograms {
			if i > 0 {
				b = append(b, ',')
			}
			b = append(b, '[')
			b = appendTimestamp(b, p.T)
			b = append(b, ',')
			b = appendHistogram(b, p.H)
			b = append(b, ']')
		}
		b = append(b, ']')
	}
	return append(b, '}')
}

// appendHistogram writes {"count":"c","sum":"s","buckets":[[b,"lo","hi","n"],...]}
// where b encodes which bounds are inclusive (0: upper only, 1: lower
// only, 2: neither, 3: both). Empty buckets are skipped, and "buckets" is
// left out when none remain.
func appendHistogram(b []byte, h *histogram.FloatHistogram) []byte {
	b = append(b, `{"count":`...)
	b = appendSampleValue(b, h.Count)
	b = append(b, `,"sum":`...)
	b = appendSampleValue(b, h.Sum)
	first := true
	it := h.AllBucketIterator()
	for it.Next() {
		bucket := it.At()
		if bucket.Count == 0 {
			continue
		}
		if first {
			b = append(b, `,"buckets":[`...)
			first = false
		} else {
			b = append(b, ',')
		}
		var bounds byte
		switch {
		case bucket.LowerInclusive && bucket.UpperInclusive:
			bounds = '3'
		case bucket.LowerInclusive:
			bounds = '1'
		case bucket.UpperInclusive:
			bounds = '0'
		default:
			bounds = '2'
		}
		b = append(b, '[', bounds, ',')
		b = appendSampleValue(b, bucket.Lower)
		b = append(b, ',')
		b = appendSampleValue(b, bucket.Upper)
		b = append(b, ',')
		b = appendSampleValue(b, bucket.Count)
		b = append(b, ']')
	}
	if !first {
		b = append(b, ']')
	}
	return append(b, '}')
}

func appendExemplarResults(b []byte, rs []exemplar.QueryResult) []byte {
	b = append(b, '[')
	for i, r := range rs {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, `{"seriesLabels":`...)
		b = appendLabels(b, r.SeriesLabels)
		b = append(b, `,"exemplars":`...)
		if r.Exemplars == nil {
			b = append(b, "null"...)
		} else {
			b = append(b, '[')
			for j, e := range r.Exemplars {
				if j > 0 {
					b = append(b, ',')
				}
				b = append(b, `{"labels":`...)
				b = appendLabels(b, e.Labels)
				b = append(b, `,"value":`...)
				b = appendSampleValue(b, e.Value)
				b = append(b, `,"timestamp":`...)
				b = appendTimestamp(b, e.Ts)
				b = append(b, '}')
			}
			b = append(b, ']')
		}
		b = append(b, '}')
	}
	return append(b, ']')
}

// appendLabels writes a label set as a JSON object in label order.
func appendLabels(b []byte, ls labels.Labels) []byte {
	b = append(b, '{')
	first := true
	ls.Range(func(l labels.Label) {
		if !first {
			b = append(b, ',')
		}
		first = false
		b = appendString(b, l.Name, false)
		b = append(b, ':')
		b = appendString(b, l.Value, false)
	})
	return append(b, '}')
}

func appendStringList(b []byte, ss []string) []byte {
	b = append(b, '[')
	for i, s := range ss {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendString(b, s, true)
	}
	return append(b, ']')
}

// appendTimestamp writes milliseconds as seconds with exactly the digits
// needed: 1500 -> 1.500, 2000 -> 2, 5 -> 0.005. Integer arithmetic keeps it
// exact and avoids float formatting on the hottest path.
func appendTimestamp(b []byte, t int64) []byte {
	if t < 0 {
		b = append(b, '-')
		t = -t
	}
	b = strconv.AppendInt(b, t/1000, 10)
	if frac := t % 1000; frac != 0 {
		b = append(b, '.')
		if frac < 100 {
			b = append(b, '0')
		}
		if frac < 10 {
			b = append(b, '0')
		}
		b = strconv.AppendInt(b, frac, 10)
	}
	return b
}

// appendSampleValue writes a quoted sample value. Like Prometheus it uses
// exponent notation only for magnitudes below 1e-6 or from 1e21 up, and
// strconv's spelling of the specials: "NaN", "+Inf", "-Inf".
func appendSampleValue(b []byte, f float64) []byte {
	b = append(b, '"')
	// Most samples are counters and gauges holding whole numbers, which
	// AppendInt writes about 3x faster than AppendFloat with the same
	// digits. Below 2^53 every such float is an exact integer; -0 keeps
	// its sign through AppendFloat.
	if f == math.Trunc(f) && math.Abs(f) < 1<<53 && (f != 0 || !math.Signbit(f)) {
		b = strconv.AppendInt(b, int64(f), 10)
		return append(b, '"')
	}
	format := byte('f')
	if abs := math.Abs(f); abs != 0 && (abs < 1e-6 || abs >= 1e21) {
		format = 'e'
	}
	b = strconv.AppendFloat(b, f, format, -1, 64)
	return append(b, '"')
}

// appendStdFloat writes an unquoted float exactly as encoding/json does
// (exponent form outside [1e-6, 1e21), with "e-07" shortened to "e-7").
func appendStdFloat(b []byte, f float64) []byte {
	format := byte('f')
	if abs := math.Abs(f); abs != 0 && (abs < 1e-6 || abs >= 1e21) {
		format = 'e'
	}
	b = strconv.AppendFloat(b, f, format, -1, 64)
	if format == 'e' {
		n := len(b)
		if n >= 4 && b[n-4] == 'e' && b[n-3] == '-' && b[n-2] == '0' {
			b[n-2] = b[n-1]
			b = b[:n-1]
		}
	}
	return b
}

const hexDigits = "0123456789abcdef"

// appendString writes s as a JSON string. With html set it behaves like
// encoding/json (escapes <, >, &, U+2028, U+2029 and replaces invalid UTF-8
// with U+FFFD); without, like jsoniter's WriteString, which Prometheus uses
// for labels: only quotes, backslashes and control characters are escaped
// and other bytes pass through untouched.
func appendString(b []byte, s string, html bool) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' && (!html || (c != '<' && c != '>' && c != '&')) {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xF])
			}
			i++
			start = i
			continue
		}
		if !html {
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i++
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hexDigits[r&0xF])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

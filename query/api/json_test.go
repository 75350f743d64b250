package api

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"testing"

	jsoniter "github.com/json-iterator/go"
	"github.com/prometheus/prometheus/model/histogram"
	"github.com/prometheus/prometheus/promql"
	"github.com/prometheus/prometheus/util/annotations"
	"github.com/prometheus/prometheus/util/jsonutil"
	"github.com/stretchr/testify/require"
)

// The encoder is checked differentially against the functions Prometheus's
// API itself writes with (util/jsonutil over a jsoniter stream), so any
// drift in float, timestamp, histogram or string formatting shows up here.

func jsoniterOut(write func(*jsoniter.Stream)) string {
	s := jsoniter.ConfigCompatibleWithStandardLibrary.BorrowStream(nil)
	defer jsoniter.ConfigCompatibleWithStandardLibrary.ReturnStream(s)
	write(s)
	return string(s.Buffer())
}

func interestingFloats(r *rand.Rand) []float64 {
	fs := []float64{
		0, math.Copysign(0, -1), 1, -1, 0.1, 1.5, 1e-6, 9.99e-7, 1e-7, 1e21, 9.99e20, 1e20, 123456789012345678,
		math.MaxFloat64, math.SmallestNonzeroFloat64, -math.MaxFloat64,
		math.Inf(1), math.Inf(-1), math.NaN(), 1.0 / 3, 2.0 / 3, 0.000123, 1e300, -1e-300,
	}
	for range 2000 {
		fs = append(fs, math.Float64frombits(r.Uint64()), r.NormFloat64()*math.Pow(10, float64(r.IntN(50)-25)), float64(r.Int64N(1e12)))
	}
	return fs
}

func TestSampleValueMatchesPrometheus(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for _, f := range interestingFloats(r) {
		want := jsoniterOut(func(s *jsoniter.Stream) { jsonutil.MarshalFloat(f, s) })
		require.Equal(t, want, string(appendSampleValue(nil, f)), "%v (%x)", f, math.Float64bits(f))
	}
}

func TestTimestampMatchesPrometheus(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	ts := []int64{0, 1, 5, 10, 99, 100, 999, 1000, 1001, 1500, -1, -1500, -999, math.MaxInt64, math.MinInt64 + 1, 1700000000123}
	for range 2000 {
		ts = append(ts, r.Int64()-math.MaxInt64/2, r.Int64N(1e13))
	}
	for _, v := range ts {
		want := jsoniterOut(func(s *jsoniter.Stream) { jsonutil.MarshalTimestamp(v, s) })
		require.Equal(t, want, string(appendTimestamp(nil, v)), "%d", v)
	}
}

func TestStdFloatMatchesEncodingJSON(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	for _, f := range interestingFloats(r) {
		want, err := json.Marshal(f)
		if err != nil { // NaN and Inf: not JSON, never a timestamp
			continue
		}
		require.Equal(t, string(want), string(appendStdFloat(nil, f)), "%v", f)
	}
}

func TestHistogramMatchesPrometheus(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 8))
	hs := []*histogram.FloatHistogram{
		fixtureHistogram(0).ToFloat(nil),
		fixtureNHCB().ToFloat(nil),
		{Schema: 3, Count: 0, Sum: 0}, // no buckets at all
		{ // negative buckets, a zero bucket and an empty bucket to skip
			Schema: 1, Count: 17.5, Sum: -3.25, ZeroThreshold: 1e-9, ZeroCount: 2,
			PositiveSpans: []histogram.Span{{Offset: -2, Length: 3}, {Offset: 4, Length: 1}}, PositiveBuckets: []float64{1, 0, 2.5, 3},
			NegativeSpans: []histogram.Span{{Offset: 1, Length: 2}}, NegativeBuckets: []float64{4, 5},
		},
	}
	for range 200 {
		n := 1 + r.IntN(6)
		h := &histogram.FloatHistogram{
			Schema: int32(r.IntN(9) - 4), ZeroThreshold: r.Float64(), ZeroCount: float64(r.IntN(3)),
			Sum: r.NormFloat64() * 1e3, PositiveSpans: []histogram.Span{{Offset: int32(r.IntN(20) - 10), Length: uint32(n)}},
		}
		for range n {
			h.PositiveBuckets = append(h.PositiveBuckets, float64(r.IntN(4))*r.Float64())
			h.Count += h.PositiveBuckets[len(h.PositiveBuckets)-1]
		}
		hs = append(hs, h)
	}
	for _, h := range hs {
		want := jsoniterOut(func(s *jsoniter.Stream) { jsonutil.MarshalHistogram(h, s) })
		require.Equal(t, want, string(appendHistogram(nil, h)), "%v", h)
	}
}

var tricky = []string{
	"", "plain", `quote"back\slash`, "nl\ncr\rtab\t", "ctl\x00\x01\x1f\x7f", "html<>&'", "utf8 ünïcödé 日本",
	"invalid\xff\xfeutf8", "sep\u2028\u2029", "\b\f", "emoji 🔥", strings.Repeat("long", 100),
}

func TestLabelStringMatchesJsoniter(t *testing.T) {
	// Labels: jsoniter Stream.WriteString, no HTML escaping.
	for _, s := range tricky {
		want := jsoniterOut(func(st *jsoniter.Stream) { st.WriteString(s) })
		require.Equal(t, want, string(appendString(nil, s, false)), "%q", s)
	}
}

func TestHTMLStringMatchesJsoniterStd(t *testing.T) {
	// Everything else: jsoniter's standard-library-compatible mode.
	for _, s := range tricky {
		want, err := jsoniter.ConfigCompatibleWithStandardLibrary.Marshal(s)
		require.NoError(t, err)
		require.Equal(t, string(want), string(appendString(nil, s, true)), "%q", s)
	}
}

func FuzzAppendString(f *testing.F) {
	for _, s := range tricky {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		want := jsoniterOut(func(st *jsoniter.Stream) { st.WriteString(s) })
		require.Equal(t, want, string(appendString(nil, s, false)))
		wantStd, err := jsoniter.ConfigCompatibleWithStandardLibrary.Marshal(s)
		require.NoError(t, err)
		require.Equal(t, string(wantStd), string(appendString(nil, s, true)))
	})
}

func TestScalarAndStringMatchMarshalJSON(t *testing.T) {
	// Prometheus encodes these through their own MarshalJSON methods.
	for _, v := range []any{
		promql.Scalar{T: 300500, V: 1.5},
		promql.Scalar{T: 0, V: 1e-7},
		promql.Scalar{T: -1500, V: 1e22},
		promql.Scalar{T: 1700000000123, V: -0.25},
		promql.String{T: 1, V: "a<b>&\"c\"\n"},
	} {
		want, err := json.Marshal(v)
		require.NoError(t, err)
		got, err := appendData(nil, v)
		require.NoError(t, err)
		require.Equal(t, string(want), string(got))
	}
}

func TestAnnotationStrings(t *testing.T) {
	var as annotations.Annotations
	warns, infos := annotationStrings(as, "")
	require.Nil(t, warns)
	require.Nil(t, infos)

	// Twelve warnings (added in scrambled order) and one info: sorted,
	// capped at ten, and the rest counted.
	for _, c := range "lkjihgfedcba" {
		as.Add(errors.New(string(c)))
	}
	as.Add(fmt.Errorf("%w: something to know", annotations.PromQLInfo))
	warns, infos = annotationStrings(as, "")
	require.Equal(t, []string{"a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "2 more warning annotations omitted"}, warns)
	require.Equal(t, []string{"PromQL info: something to know"}, infos)
}

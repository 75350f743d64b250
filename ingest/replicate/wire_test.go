package replicate

import (
	"fmt"
	"math"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/exemplar"
	"github.com/prometheus/prometheus/model/histogram"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/metadata"
	"github.com/stretchr/testify/require"
)

func codecs(tb testing.TB) (*zstd.Encoder, *zstd.Decoder) {
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedDefault), zstd.WithEncoderConcurrency(1))
	require.NoError(tb, err)
	dec, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(maxPayload))
	require.NoError(tb, err)
	tb.Cleanup(dec.Close)
	return enc, dec
}

// sampleBatch holds floats (integral, fractional, NaN, -0, far from base),
// int and float histograms, exemplars, start timestamps and metadata.
func sampleBatch() *batch {
	b := &batch{}
	add := func(ls labels.Labels, st, t int64, v float64, h *histogram.Histogram, fh *histogram.FloatHistogram, ex []exemplar.Exemplar, meta metadata.Metadata) {
		s := b.seriesIndex(ls, labels.StableHash(ls), ls.Get("__name__"), meta)
		if h == nil && fh == nil {
			b.floats = append(b.floats, fsample{sidx: s, st: st, t: t, v: v, ex: ex})
			b.series[s].nf++
		} else {
			b.hists = append(b.hists, hsample{sidx: s, st: st, t: t, h: h, fh: fh, ex: ex})
			b.series[s].nh++
		}
	}
	c := labels.FromStrings("__name__", "c_total", "job", "x")
	g := labels.FromStrings("__name__", "g", "job", "x")
	hs := labels.FromStrings("__name__", "h", "job", "x")
	meta := metadata.Metadata{Type: model.MetricTypeCounter, Help: "a counter", Unit: "s"}
	ex := []exemplar.Exemplar{{Labels: labels.FromStrings("trace_id", "abc"), Value: 1.5, Ts: 990, HasTs: true}}
	add(c, 500, 1000, 123456789, nil, nil, ex, meta)
	add(g, 0, 1000, 0.25, nil, nil, nil, metadata.Metadata{})
	add(c, 500, 2000, 123456789+5e6, nil, nil, nil, meta) // far from the base
	add(g, 0, 2000, math.Copysign(0, -1), nil, nil, nil, metadata.Metadata{})
	add(g, 0, 3000, math.Float64frombits(0x7ff8000000000bad), nil, nil, nil, metadata.Metadata{})
	add(g, 0, 900, -42, nil, nil, nil, metadata.Metadata{}) // out of order within the series
	ih := &histogram.Histogram{Schema: 1, Count: 5, Sum: 12.5, ZeroCount: 1, ZeroThreshold: 0.001,
		PositiveSpans: []histogram.Span{{Offset: -1, Length: 2}}, PositiveBuckets: []int64{2, -1},
		NegativeSpans: []histogram.Span{{Offset: 0, Length: 1}}, NegativeBuckets: []int64{1}, CounterResetHint: histogram.NotCounterReset}
	fh := &histogram.FloatHistogram{Schema: histogram.CustomBucketsSchema, Count: 3, Sum: 1.5,
		PositiveSpans: []histogram.Span{{Offset: 0, Length: 2}}, PositiveBuckets: []float64{1, 2}, CustomValues: []float64{0.5, 1}}
	add(hs, 100, 1000, 0, ih, nil, ex, metadata.Metadata{Type: model.MetricTypeHistogram})
	add(hs, 100, 2000, 0, nil, fh, nil, metadata.Metadata{Type: model.MetricTypeHistogram})
	return b
}

// decoded is what a receiver appends, in canonical order.
type appended struct {
	ls     labels.Labels
	st, t  int64
	vbits  uint64
	h      *histogram.Histogram
	fh     *histogram.FloatHistogram
	family string
	meta   metadata.Metadata
	ex     []exemplar.Exemplar
}

func flatten(t *testing.T, req *request, defs []*rdef) []appended {
	var out []appended
	fi, hi := 0, 0
	exFor := func(idx int) []exemplar.Exemplar {
		var xs []exemplar.Exemplar
		for _, x := range req.exemplars {
			if x.idx == idx {
				xs = append(xs, x.ex)
			}
		}
		return xs
	}
	for si, s := range req.series {
		a := appended{ls: defs[si].ls}
		if s.meta >= 0 {
			a.family, a.meta = req.metas[s.meta].family, req.metas[s.meta].meta
		}
		for range s.nf {
			f := req.floats[fi]
			a.st, a.t, a.vbits, a.ex = f.st, f.t, math.Float64bits(f.v), exFor(fi) // resolved
			out = append(out, a)
			fi++
		}
		for range s.nh {
			h := req.hists[hi]
			x := a
			x.st, x.t, x.h, x.fh, x.ex, x.vbits = h.st, h.t, h.h, h.fh, exFor(len(req.floats)+hi), 0
			out = append(out, x)
			hi++
		}
	}
	return out
}

func expected(b *batch) []appended {
	var out []appended
	for si, s := range b.series {
		a := appended{ls: s.ls, family: s.family, meta: s.meta}
		if s.meta == (metadata.Metadata{}) {
			a.family = ""
		}
		for _, f := range b.floats {
			if int(f.sidx) == si {
				x := a
				x.st, x.t, x.vbits, x.ex = f.st, f.t, math.Float64bits(f.v), f.ex
				out = append(out, x)
			}
		}
		_ = si
	}
	for si, s := range b.series {
		a := appended{ls: s.ls, family: s.family, meta: s.meta}
		for _, h := range b.hists {
			if int(h.sidx) == si {
				x := a
				x.st, x.t, x.h, x.fh, x.ex = h.st, h.t, h.h, h.fh, h.ex
				out = append(out, x)
			}
		}
	}
	return out
}

func TestWireRoundTrip(t *testing.T) {
	enc, dec := codecs(t)
	b := sampleBatch()
	var pc peerCache
	var ts tables
	for round, cache := range []*peerCache{nil, &pc, &pc} {
		t.Run(fmt.Sprint(round), func(t *testing.T) {
			e := encode(enc, "sender", b, cache)
			req, err := decodeRequest(dec, e.body)
			require.NoError(t, err)
			require.Equal(t, cache == nil, req.full)
			require.Equal(t, "sender", req.sender)
			if round == 2 {
				require.Empty(t, req.defs, "acknowledged series are referenced, not redefined")
			}
			defs, err := ts.resolve(req)
			require.NoError(t, err)
			got := flatten(t, req, defs)
			// Canonical order is floats of every series, then histograms.
			var floats, hists []appended
			for _, g := range got {
				if g.h != nil || g.fh != nil {
					hists = append(hists, g)
				} else {
					floats = append(floats, g)
				}
			}
			require.Equal(t, expected(b), append(floats, hists...))
			if cache != nil {
				cache.ack(&e)
			}
		})
	}
}

func TestResponseRoundTrip(t *testing.T) {
	rs := []rejection{{idx: 3, reason: reasonDuplicate, msg: "duplicate sample for timestamp"}, {idx: 70000, reason: reasonOther, msg: ""}}
	got, err := decodeResponse(encodeResponse(rs))
	require.NoError(t, err)
	require.Equal(t, rs, got)
	_, err = decodeResponse([]byte{wireVersion, 5})
	require.ErrorIs(t, err, errMalformed)
}

func TestDecodeRejectsGarbage(t *testing.T) {
	_, dec := codecs(t)
	enc, _ := codecs(t)
	body := encode(enc, "s", sampleBatch(), nil).body
	for _, bad := range [][]byte{nil, {2}, body[:len(body)-3], append(append([]byte{}, body[:4]...), 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01)} {
		_, err := decodeRequest(dec, bad)
		require.Error(t, err)
	}
}

func FuzzDecodeRequest(f *testing.F) {
	enc, dec := codecs(f)
	f.Add(encode(enc, "s", sampleBatch(), nil).body)
	var pc peerCache
	f.Add(encode(enc, "s", sampleBatch(), &pc).body)
	f.Add([]byte{wireVersion, 0, 0})
	f.Fuzz(func(t *testing.T, body []byte) {
		req, err := decodeRequest(dec, body)
		if err != nil {
			return
		}
		var ts tables
		defs, err := ts.resolve(req)
		if err != nil {
			return
		}
		// Every index the receiver will use must be in range.
		flatten(t, req, defs)
		for _, h := range req.hists {
			if h.h != nil {
				_ = h.h.Validate()
			} else {
				_ = h.fh.Validate()
			}
		}
	})
}

func FuzzDecodePayload(f *testing.F) {
	enc, dec := codecs(f)
	body := encode(enc, "s", sampleBatch(), nil).body
	h, err := parseHeader(body)
	require.NoError(f, err)
	p, err := dec.DecodeAll(h.rest, nil)
	require.NoError(f, err)
	f.Add(p)
	var pc peerCache
	for range 2 { // the second one chains values from the first
		e := encode(enc, "s", sampleBatch(), &pc)
		pc.ack(&e)
		h, err := parseHeader(e.body)
		require.NoError(f, err)
		p, err := dec.DecodeAll(h.rest, nil)
		require.NoError(f, err)
		f.Add(p)
	}
	f.Fuzz(func(t *testing.T, p []byte) {
		req, err := decodePayload(p, wireVersion)
		if err != nil {
			return
		}
		for _, full := range []bool{true, false} {
			req.full, req.sender, req.gen = full, "s", 1
			var ts tables
			if defs, err := ts.resolve(req); err == nil {
				flatten(t, req, defs)
			}
		}
	})
}

func FuzzDecodeResponse(f *testing.F) {
	f.Add(encodeResponse([]rejection{{idx: 1, reason: 1, msg: "x"}}))
	f.Fuzz(func(t *testing.T, b []byte) {
		rs, err := decodeResponse(b)
		if err == nil {
			got, err := decodeResponse(encodeResponse(rs))
			require.NoError(t, err)
			require.Equal(t, rs, got)
		}
	})
}

// TestWireValuesExact sends awkward values through every encoding (integral
// deltas near and far from the base, decimals, raw) over rounds with the
// series cache, rebases included: every value arrives bit for bit.
func TestWireValuesExact(t *testing.T) {
	enc, dec := codecs(t)
	vals := []float64{
		0, math.Copysign(0, -1), 1, -1, 0.1, 0.2, 0.1 + 0.2, 1234.56, -0.001, 1e-7, 1e-9, 1.5e-9,
		123456789.123456, 9007199254740991, -9007199254740991, 9007199254740992, 1e300, -1e-300,
		math.Inf(1), math.Inf(-1), math.NaN(), math.Float64frombits(0x7ff0000000000002), // StaleNaN
		5e8, 5e8 + 1e8, 5e10, 3.14159265358979, 2.5e15 + 0.5, 0.123456789, 0.1234567891,
	}
	var pc peerCache
	var ts tables
	for round := range 12 {
		b := &batch{}
		for i := range len(vals) + 3 {
			ls := labels.FromStrings("__name__", "v", "i", fmt.Sprint(i))
			s := b.seriesIndex(ls, labels.StableHash(ls), "", metadata.Metadata{})
			var v float64
			switch {
			case i < len(vals):
				v = vals[(i+round)%len(vals)] // every series sees every kind
			case i == len(vals):
				v = float64(round) * 3e6 // a counter drifting past maxDelta: rebased
			case i == len(vals)+1:
				v = float64(round%2) * 4e8 // a gauge swinging wide: kept
			default:
				v = 1e6 + float64(round)*0.37 // a decimal counter
			}
			b.floats = append(b.floats, fsample{sidx: s, t: int64(round), v: v})
			b.series[s].nf++
		}
		for _, cache := range []*peerCache{nil, &pc} {
			e := encode(enc, "s", b, cache)
			req, err := decodeRequest(dec, e.body)
			require.NoError(t, err)
			defs, err := ts.resolve(req)
			require.NoError(t, err)
			require.Equal(t, expected(b), flatten(t, req, defs), "round %d, cache %v", round, cache != nil)
			if cache != nil {
				cache.ack(&e)
			}
		}
	}
}

// TestChainedValuesInFlightAndFailed follows values chained from the
// previous one through what the network does to requests: two in flight
// for the same series, answers in the other order, a request lost after it
// was sent and delivered late, one never sent. Every request the receiver
// accepts decodes to the exact values sent; the others are refused with a
// resync, never decoded against the wrong reference.
func TestChainedValuesInFlightAndFailed(t *testing.T) {
	enc, dec := codecs(t)
	var pc peerCache
	var ts tables
	round := 0
	next := func() *batch {
		b := &batch{}
		for i := range 20 {
			ls := labels.FromStrings("__name__", "c", "i", fmt.Sprint(i))
			s := b.seriesIndex(ls, labels.StableHash(ls), "", metadata.Metadata{})
			for j := range 2 { // two samples: chained inside the request too
				r := round*2 + j
				v := float64(i*1000+r*7) * 0.01 // a decimal counter
				if i%4 == 0 {
					v = float64(i*100000 + r*r) // an integral one
				}
				b.floats = append(b.floats, fsample{sidx: s, t: int64(r), v: v})
				b.series[s].nf++
			}
		}
		round++
		return b
	}
	type sent struct {
		b *batch
		e encoded
	}
	send := func() sent {
		b := next()
		return sent{b, encode(enc, "s", b, &pc)}
	}
	deliver := func(s sent) error {
		req, err := decodeRequest(dec, s.e.body)
		require.NoError(t, err)
		defs, err := ts.resolve(req)
		if err != nil {
			return err
		}
		require.Equal(t, expected(s.b), flatten(t, req, defs))
		return nil
	}
	chained := func(s sent) int { return len(s.e.owned) }
	// chainedRound sends a request that chains every series, delivers it
	// and acknowledges it.
	chainedRound := func() {
		r := send()
		require.Equal(t, 20, chained(r))
		require.NoError(t, deliver(r))
		pc.ack(&r.e)
	}

	r0 := send()
	require.Equal(t, 20, chained(r0), "a new series sets its ref")
	require.NoError(t, deliver(r0))
	pc.ack(&r0.e)

	// Two in flight: only the first chains; the second goes from the base
	// (and as version 2, having nothing chained). Answered in reverse.
	r1, r2 := send(), send()
	require.Equal(t, 20, chained(r1))
	require.Zero(t, chained(r2))
	require.Equal(t, byte(2), r2.e.body[0])
	require.NoError(t, deliver(r2))
	require.NoError(t, deliver(r1))
	pc.ack(&r2.e)
	pc.ack(&r1.e)

	chainedRound()

	// Never sent: the next request chains from the last one acknowledged
	// as if it never existed.
	r4 := send()
	pc.failed(&r4.e, false)
	chainedRound()

	// Sent, no answer: a new generation; the lost request arriving late
	// is refused, and so is what follows until the sender resyncs.
	r6 := send()
	pc.failed(&r6.e, true)
	r7 := send()
	require.NotEqual(t, r6.e.gen, r7.e.gen)
	require.Len(t, r7.e.defined, 20, "the new generation defines every series again")
	require.NoError(t, deliver(r7))
	pc.ack(&r7.e)
	require.ErrorIs(t, deliver(r6), errResync)
	r8 := send()
	require.ErrorIs(t, deliver(r8), errResync)
	pc.reset()
	r9 := send()
	require.NoError(t, deliver(r9))
	pc.ack(&r9.e)
	chainedRound()
}

// Working buffers reused across requests of other shapes (the forward
// path's pool) give the same requests as fresh ones.
func TestEncodeReusedBuffersSelfContained(t *testing.T) {
	enc, dec := codecs(t)
	var bf encodeBufs
	batches := []*batch{sampleBatch(), loadgenBatch(0), sampleBatch(), loadgenBatch(1), sampleBatch()}
	for i, b := range batches {
		for _, pc := range []*peerCache{nil, {}} {
			got := encodeWith(enc, &bf, "s", b, pc)
			req, err := decodeRequest(dec, got.body)
			require.NoError(t, err, "batch %d", i)
			var ts tables
			defs, err := ts.resolve(req)
			require.NoError(t, err, "batch %d", i)
			require.Equal(t, expected(b), flatten(t, req, defs), "batch %d", i)
		}
	}
}

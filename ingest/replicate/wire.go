package replicate

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"strings"
	"sync/atomic"
	"unsafe"

	"github.com/klauspost/compress/zstd"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/exemplar"
	"github.com/prometheus/prometheus/model/histogram"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/metadata"
)

// The request layout is documented in WIRE.md; keep the two in step.
const (
	// wireVersion 2 added decimal values (tag 2); a version 1 request is
	// a version 2 one without them, so hints written before still replay.
	// Version 3 adds the series mode column (values chained from the
	// previous one); a request whose series all use mode 0 is sent as
	// version 2, so hints and self-contained requests replay on nodes of
	// either version.
	wireVersion = 3
	// responseVersion is the response body's version byte.
	responseVersion = 2
	flagFull        = 1 // self-contained: defines every series it uses

	// Series modes (version 3): how a series' float values are sent.
	// modeBase: every value relative to the series' base (versions 1, 2).
	// modeRef: the first value relative to the last value of this series
	// that the receiver decoded from this sender (its ref), each next one
	// relative to the one before; the last becomes the ref.
	// modeSetRef: as modeRef but the first value is relative to the base.
	modeBase   = 0
	modeRef    = 1
	modeSetRef = 2

	// maxPayload bounds a decompressed request (and so the decoder's memory).
	maxPayload = 256 << 20
	// maxSeriesIDs bounds a sender's series cache generation, on both sides.
	maxSeriesIDs = 1 << 21
	// maxDelta: a series drifting further than this from its base (in the
	// units of its deltas) is defined afresh with a new base, so deltas
	// stay at most 3 varint bytes before compression. Values that jump
	// around (wide gauges) keep their base: a new one would not stay near.
	maxDelta = 1 << 20
	// maxDecimals is the most decimal digits of a value sent as a decimal.
	maxDecimals = 9
)

// pow10 are exact powers of ten.
var pow10 = [maxDecimals + 1]float64{1, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9}

// scaledBase is base in units of 10^-k, or 0 where that is not an exact
// integer below 2^53 (reported by ok). Sender and receiver compute it alike.
func scaledBase(base float64, k int) (int64, bool) {
	b := base * pow10[k]
	if !(math.Abs(b) < 1<<53) || b != math.Trunc(b) {
		return 0, false
	}
	return int64(b), true
}

// scaledRef is scaledBase for a value chained from the previous one (modes
// ref and set-ref): a decimal such as 12.34 is not exact in binary, so
// ref*100 may miss 1234 by an ulp; the nearest integer m is taken when
// m/10^k gives ref's exact bits, as decimalOf made sure when ref was sent.
func scaledRef(ref float64, k int) (int64, bool) {
	m := math.Round(ref * pow10[k])
	if !(math.Abs(m) < 1<<53) || math.Float64bits(m/pow10[k]) != math.Float64bits(ref) {
		return scaledBase(ref, k)
	}
	return int64(m), true
}

// scaler is scaledBase or scaledRef.
type scaler func(float64, int) (int64, bool)

// decimalOf finds decimal digits k (1..maxDecimals) with which v is
// exactly m / 10^k for an integer m below 2^53, and returns k and m's
// delta from the scaled base: the fewest digits with which the base scales
// exactly too (a small delta), else the fewest. Counters of seconds or
// bytes scaled by 0.01 or 0.001 are like this; sent raw they cost 8 bytes
// each. The receiver computes the value from any such k alike.
func decimalOf(v, base float64, scale scaler) (k int, d int64, ok bool) {
	if v == 0 || math.IsNaN(v) || math.IsInf(v, 0) {
		return 0, 0, false
	}
	fk, fd := 0, int64(0) // the fewest digits, if the base scales with none
	for k := 1; k <= maxDecimals; k++ {
		m := math.Round(v * pow10[k])
		if !(math.Abs(m) < 1<<53) {
			break
		}
		if math.Float64bits(m/pow10[k]) == math.Float64bits(v) {
			sb, exact := scale(base, k)
			if exact {
				return k, int64(m) - sb, true
			}
			if fk == 0 {
				fk, fd = k, int64(m)-sb
			}
		}
	}
	return fk, fd, fk != 0
}

// valueOfDecimal inverts decimalOf.
func valueOfDecimal(base float64, k int, d int64, scale scaler) float64 {
	sb, _ := scale(base, k)
	return float64(sb+d) / pow10[k]
}

// deltaUnits is how far v is from base in the units it would be sent in,
// and whether it would be sent as a delta at all.
func deltaUnits(v, base float64) (float64, bool) {
	if integral(v) {
		return math.Abs(v - base), true
	}
	if k, _, ok := decimalOf(v, base, scaledBase); ok {
		return math.Abs(v-base) * pow10[k], true
	}
	return 0, false
}

var errMalformed = errors.New("malformed replication request")

// --- sender side ------------------------------------------------------------

// fsample and hsample are buffered samples for one peer; sidx indexes
// batch.series.
type fsample struct {
	sidx  int32
	st, t int64
	v     float64
	ex    []exemplar.Exemplar
}

type hsample struct {
	sidx  int32
	st, t int64
	h     *histogram.Histogram
	fh    *histogram.FloatHistogram
	ex    []exemplar.Exemplar
}

type bseries struct {
	ls     labels.Labels
	hash   uint64
	family string
	meta   metadata.Metadata
	nf, nh int32
}

// batch is what one peer gets from one Commit.
type batch struct {
	series []bseries
	// slots is an open-addressing table of series positions + 1 (0 is
	// empty) by hash, a power of two at least twice len(series): a Go map
	// here was a tenth of the coordinator's CPU, mostly its allocation.
	slots  []int32
	floats []fsample
	hists  []hsample
	hasEx  bool // some sample has exemplars
	// refs counts the batch's holders (the Commit, each forward still
	// running): the last one hands it back for reuse, since filling fresh
	// memory was most of the cost of buffering a sample.
	refs atomic.Int32
}

// reset empties b for reuse, dropping what it points to.
func (b *batch) reset() {
	clear(b.series)
	clear(b.slots)
	clear(b.hists)
	if b.hasEx {
		clear(b.floats)
	}
	b.series, b.floats, b.hists, b.hasEx = b.series[:0], b.floats[:0], b.hists[:0], false
}

func (b *batch) seriesIndex(ls labels.Labels, hash uint64, family string, meta metadata.Metadata) int32 {
	// Remote-write requests carry a series' samples together.
	if n := len(b.series); n > 0 && b.series[n-1].hash == hash && labels.Equal(b.series[n-1].ls, ls) {
		return b.sameSeries(int32(n-1), family, meta)
	}
	if 2*(len(b.series)+1) > len(b.slots) {
		b.grow()
	}
	mask := uint64(len(b.slots) - 1)
	j := hash & mask
	for ; b.slots[j] != 0; j = (j + 1) & mask {
		i := b.slots[j] - 1
		if b.series[i].hash == hash && labels.Equal(b.series[i].ls, ls) {
			return b.sameSeries(i, family, meta)
		}
	}
	n := int32(len(b.series))
	b.series = append(b.series, bseries{ls: ls, hash: hash, family: strings.Clone(family), meta: meta})
	b.slots[j] = n + 1
	return n
}

// sameSeries returns i, taking the newest metadata given for it.
func (b *batch) sameSeries(i int32, family string, meta metadata.Metadata) int32 {
	if meta != (metadata.Metadata{}) {
		s := &b.series[i]
		s.meta = meta
		s.family = strings.Clone(family)
	}
	return i
}

// grow doubles the slot table (at least 64 slots) and reinserts every series.
func (b *batch) grow() {
	n := max(64, 2*len(b.slots))
	for n < 2*(len(b.series)+1) {
		n *= 2
	}
	b.slots = make([]int32, n)
	mask := uint64(n - 1)
	for i := range b.series {
		j := b.series[i].hash & mask
		for b.slots[j] != 0 {
			j = (j + 1) & mask
		}
		b.slots[j] = int32(i) + 1
	}
}

func (b *batch) empty() bool { return len(b.floats) == 0 && len(b.hists) == 0 }

// samples counts floats and histograms.
func (b *batch) samples() int { return len(b.floats) + len(b.hists) }

// ownedRef is a series sent in mode ref or set-ref and the value its ref
// takes once the request is acknowledged.
type ownedRef struct {
	cs   *cachedSeries
	last float64
}

// encoded is one request body and what the sender needs to interpret the
// answer.
type encoded struct {
	body    []byte
	defined []*cachedSeries // definitions to mark acknowledged on success
	owned   []ownedRef      // series whose ref this request sets
	forder  []int32         // canonical float index -> batch.floats index
	horder  []int32         // canonical histogram index -> batch.hists index
	gen     uint64          // cache generation encoded against
	cache   *peerCache      // nil when self-contained
}

type symbols struct {
	idx  map[string]uint32
	list []string
}

func (s *symbols) ref(v string) uint64 {
	if i, ok := s.idx[v]; ok {
		return uint64(i)
	}
	i := uint32(len(s.list))
	s.idx[v] = i
	s.list = append(s.list, v)
	return uint64(i)
}

func (s *symbols) labels(b []byte, ls labels.Labels) []byte {
	b = binary.AppendUvarint(b, uint64(ls.Len()))
	ls.Range(func(l labels.Label) {
		b = binary.AppendUvarint(b, s.ref(l.Name))
		b = binary.AppendUvarint(b, s.ref(l.Value))
	})
	return b
}

// integral reports whether v is an integer a float64 holds exactly.
// -0 is not: it would come back as +0, and replicas must hold the same
// bits.
func integral(v float64) bool {
	return v == math.Trunc(v) && math.Abs(v) < 1<<53 && (v != 0 || !math.Signbit(v))
}

// baseFor picks the base of a newly defined series: its first integral
// float value in the batch, else the integer part of its first decimal
// one, else 0.
func baseFor(b *batch, order []int32, from, to int32) float64 {
	for _, k := range order[from:to] {
		v := b.floats[k].v
		if integral(v) {
			return v
		}
		if _, _, ok := decimalOf(v, 0, scaledBase); ok {
			return math.Trunc(v)
		}
	}
	return 0
}

// encode builds the request carrying b. With pc nil the request is
// self-contained (hints, resync); otherwise series are referenced through
// the peer's cache and only unacknowledged ones are defined.
func encode(enc *zstd.Encoder, sender string, b *batch, pc *peerCache) encoded {
	return encodeWith(enc, &encodeBufs{}, sender, b, pc)
}

// encodeBufs are encode's working buffers, none of which the result keeps:
// reused across requests, since allocating them was a seventh of encode.
type encodeBufs struct {
	fstart, hstart, fpos, hpos []int32
	ids                        []uint32
	bases, refs                []float64
	modes, defs, metas, cols   []byte
	ints, scales, raws, exs, p []byte
	syms                       map[string]uint32
	list                       []string
}

// zeroed returns s resized to n zero elements, reusing its array.
func zeroed[T any](s []T, n int) []T {
	if cap(s) < n {
		return make([]T, n)
	}
	s = s[:n]
	clear(s)
	return s
}

// encodeWith is encode with working buffers bf.
func encodeWith(enc *zstd.Encoder, bf *encodeBufs, sender string, b *batch, pc *peerCache) encoded {
	e := encoded{cache: pc}
	// Canonical order: series in batch order, samples of a series in append
	// order (a counting sort, stable).
	fstart := zeroed(bf.fstart, len(b.series)+1)
	hstart := zeroed(bf.hstart, len(b.series)+1)
	bf.fstart, bf.hstart = fstart, hstart
	for i := range b.series {
		fstart[i+1] = fstart[i] + b.series[i].nf
		hstart[i+1] = hstart[i] + b.series[i].nh
	}
	e.forder = make([]int32, len(b.floats))
	e.horder = make([]int32, len(b.hists))
	{
		fpos := append(bf.fpos[:0], fstart[:len(b.series)]...)
		for k := range b.floats {
			s := b.floats[k].sidx
			e.forder[fpos[s]] = int32(k)
			fpos[s]++
		}
		hpos := append(bf.hpos[:0], hstart[:len(b.series)]...)
		for k := range b.hists {
			s := b.hists[k].sidx
			e.horder[hpos[s]] = int32(k)
			hpos[s]++
		}
		bf.fpos, bf.hpos = fpos, hpos
	}

	if bf.syms == nil {
		bf.syms = make(map[string]uint32, 64)
	}
	clear(bf.syms)
	syms := symbols{idx: bf.syms, list: bf.list[:0]}
	ids := zeroed(bf.ids, len(b.series))
	bases := zeroed(bf.bases, len(b.series))
	modes := zeroed(bf.modes, len(b.series))
	refs := zeroed(bf.refs, len(b.series)) // first reference of a chained series
	bf.ids, bf.bases, bf.modes, bf.refs = ids, bases, modes, refs
	chained := false
	defs := bf.defs[:0]
	ndefs := 0
	define := func(id uint32, ls labels.Labels, base float64) {
		ndefs++
		defs = binary.AppendUvarint(defs, uint64(id))
		defs = syms.labels(defs, ls)
		defs = binary.LittleEndian.AppendUint64(defs, math.Float64bits(base))
	}
	if pc != nil {
		e.owned = make([]ownedRef, 0, len(b.series))
		pc.mu.Lock()
		pc.reserveLocked(len(b.series)) // no reset midway through a request
		e.gen = pc.gen
	}
	for i := range b.series {
		s := &b.series[i]
		base := baseFor(b, e.forder, fstart[i], fstart[i+1])
		if pc == nil {
			ids[i], bases[i] = uint32(i), base
			define(ids[i], s.ls, base)
			continue
		}
		cs := pc.lookup(s.ls, s.hash)
		order := e.forder[fstart[i]:fstart[i+1]]
		// A series no other request in flight sets the ref of is chained
		// from its ref; only the others are sent from the base and may
		// need a new one.
		chain := cs != nil && !cs.inflight && len(order) > 0
		if cs != nil && !chain && rebase(b, order, cs) {
			cs = nil // a new id, so ids stay immutable
		}
		if cs == nil {
			cs = pc.add(s.ls, s.hash, base)
			chain = len(order) > 0
		}
		if len(order) > 0 {
			last := b.floats[order[len(order)-1]].v
			cs.prev, cs.hasPrev = last, true
			if chain {
				modes[i], refs[i] = modeSetRef, cs.base
				if cs.hasRef {
					modes[i], refs[i] = modeRef, cs.ref
				}
				chained = true
				cs.inflight = true
				e.owned = append(e.owned, ownedRef{cs: cs, last: last})
			}
		}
		ids[i], bases[i] = cs.id, cs.base
		if !cs.acked {
			define(cs.id, s.ls, cs.base)
			e.defined = append(e.defined, cs)
		}
	}
	if pc != nil {
		pc.mu.Unlock()
	}

	// Metadata table, deduplicated per request.
	metas := bf.metas[:0]
	nmetas := 0
	var metaIdx map[[4]string]uint64
	cols := bf.cols[:0]
	cols = binary.AppendUvarint(cols, uint64(len(b.series)))
	prev := int64(0)
	for i := range b.series {
		cols = binary.AppendVarint(cols, int64(ids[i])-prev)
		prev = int64(ids[i])
	}
	for i := range b.series {
		s := &b.series[i]
		if s.meta == (metadata.Metadata{}) {
			cols = append(cols, 0)
			continue
		}
		k := [4]string{s.family, string(s.meta.Type), s.meta.Help, s.meta.Unit}
		if metaIdx == nil {
			metaIdx = make(map[[4]string]uint64)
		}
		m, ok := metaIdx[k]
		if !ok {
			nmetas++
			m = uint64(nmetas)
			metaIdx[k] = m
			for _, v := range k {
				metas = binary.AppendUvarint(metas, syms.ref(v))
			}
		}
		cols = binary.AppendUvarint(cols, m)
	}
	for i := range b.series {
		cols = binary.AppendUvarint(cols, uint64(b.series[i].nf))
	}
	for i := range b.series {
		cols = binary.AppendUvarint(cols, uint64(b.series[i].nh))
	}
	if chained {
		cols = append(cols, modes...)
	}
	// Float columns: t (delta), st (delta), tag, int deltas, raw values.
	pt := int64(0)
	for _, k := range e.forder {
		t := b.floats[k].t
		cols = binary.AppendVarint(cols, t-pt)
		pt = t
	}
	pt = 0
	for _, k := range e.forder {
		st := b.floats[k].st
		cols = binary.AppendVarint(cols, st-pt)
		pt = st
	}
	ints, scales, raws := bf.ints[:0], bf.scales[:0], bf.raws[:0]
	cur, ref, scale := int32(-1), 0.0, scaler(scaledBase)
	for _, k := range e.forder {
		f := &b.floats[k]
		if f.sidx != cur {
			cur, ref, scale = f.sidx, bases[f.sidx], scaledBase
			if modes[cur] != modeBase {
				ref, scale = refs[cur], scaledRef
			}
		}
		base := ref
		if modes[cur] != modeBase {
			ref = f.v
		}
		if integral(f.v) && integral(base) {
			cols = append(cols, 0)
			ints = binary.AppendVarint(ints, int64(f.v)-int64(base))
		} else if k, d, ok := decimalOf(f.v, base, scale); ok {
			cols = append(cols, 2)
			ints = binary.AppendVarint(ints, d)
			scales = append(scales, byte(k))
		} else {
			cols = append(cols, 1)
			raws = binary.LittleEndian.AppendUint64(raws, math.Float64bits(f.v))
		}
	}
	cols = append(cols, ints...)
	cols = append(cols, scales...)
	cols = append(cols, raws...)
	// Histograms, row by row: they are rare and large.
	pt = 0
	for _, k := range e.horder {
		h := &b.hists[k]
		cols = binary.AppendVarint(cols, h.t-pt)
		pt = h.t
		cols = binary.AppendVarint(cols, h.st)
		cols = appendHistogram(cols, h.h, h.fh)
	}
	// Exemplars, by canonical sample index.
	nex := 0
	exs := bf.exs[:0]
	addEx := func(idx int, list []exemplar.Exemplar) {
		for _, x := range list {
			nex++
			exs = binary.AppendUvarint(exs, uint64(idx))
			exs = syms.labels(exs, x.Labels)
			exs = binary.LittleEndian.AppendUint64(exs, math.Float64bits(x.Value))
			exs = binary.AppendVarint(exs, x.Ts)
			if x.HasTs {
				exs = append(exs, 1)
			} else {
				exs = append(exs, 0)
			}
		}
	}
	for c, k := range e.forder {
		addEx(c, b.floats[k].ex)
	}
	for c, k := range e.horder {
		addEx(len(e.forder)+c, b.hists[k].ex)
	}

	// Assemble: symbols, defs, metas, columns, exemplars.
	n := 16 + len(defs) + len(metas) + len(cols) + len(exs)
	for _, s := range syms.list {
		n += len(s) + 2
	}
	p := bf.p[:0]
	if cap(p) < n {
		p = make([]byte, 0, n)
	}
	p = binary.AppendUvarint(p, uint64(len(syms.list)))
	for _, s := range syms.list {
		p = binary.AppendUvarint(p, uint64(len(s)))
		p = append(p, s...)
	}
	p = binary.AppendUvarint(p, uint64(ndefs))
	p = append(p, defs...)
	p = binary.AppendUvarint(p, uint64(nmetas))
	p = append(p, metas...)
	p = append(p, cols...)
	p = binary.AppendUvarint(p, uint64(nex))
	p = append(p, exs...)

	body := make([]byte, 0, 32+len(sender)+len(p)/2)
	if chained {
		body = append(body, wireVersion)
	} else {
		body = append(body, 2) // readable by nodes of version 2 too
	}
	if pc == nil {
		body = append(body, flagFull)
	} else {
		body = append(body, 0)
	}
	body = binary.AppendUvarint(body, uint64(len(sender)))
	body = append(body, sender...)
	body = binary.LittleEndian.AppendUint64(body, e.gen)
	body = binary.AppendUvarint(body, uint64(len(p)))
	e.body = enc.EncodeAll(p, body)
	clear(syms.list) // keep no label strings alive
	bf.list, bf.defs = syms.list[:0], defs[:0]
	bf.metas, bf.cols, bf.ints, bf.scales, bf.raws, bf.exs, bf.p = metas[:0], cols[:0], ints[:0], scales[:0], raws[:0], exs[:0], p[:0]
	return e
}

// rebase reports whether a cached series should be defined afresh: its
// first value sent as a delta is maxDelta or more from the base, and it
// drifted there (a counter: within maxDelta/16 of the previous value sent),
// so a new base keeps the following deltas small for a while. A gauge
// swinging wider than that keeps its base: its large deltas cost less than
// a definition in every request.
func rebase(b *batch, order []int32, cs *cachedSeries) bool {
	for _, k := range order {
		v := b.floats[k].v
		dist, ok := deltaUnits(v, cs.base)
		if !ok {
			continue
		}
		if dist < maxDelta {
			return false
		}
		if !cs.hasPrev {
			return true
		}
		step, _ := deltaUnits(v, cs.prev)
		return step < maxDelta/16
	}
	return false
}

func appendHistogram(b []byte, h *histogram.Histogram, fh *histogram.FloatHistogram) []byte {
	f64 := func(v float64) { b = binary.LittleEndian.AppendUint64(b, math.Float64bits(v)) }
	spans := func(ss []histogram.Span) {
		b = binary.AppendUvarint(b, uint64(len(ss)))
		for _, s := range ss {
			b = binary.AppendVarint(b, int64(s.Offset))
			b = binary.AppendUvarint(b, uint64(s.Length))
		}
	}
	floats := func(vs []float64) {
		b = binary.AppendUvarint(b, uint64(len(vs)))
		for _, v := range vs {
			f64(v)
		}
	}
	ints := func(vs []int64) {
		b = binary.AppendUvarint(b, uint64(len(vs)))
		for _, v := range vs {
			b = binary.AppendVarint(b, v)
		}
	}
	if h != nil {
		b = append(b, 0, byte(h.CounterResetHint))
		b = binary.AppendVarint(b, int64(h.Schema))
		f64(h.ZeroThreshold)
		b = binary.AppendUvarint(b, h.ZeroCount)
		b = binary.AppendUvarint(b, h.Count)
		f64(h.Sum)
		spans(h.PositiveSpans)
		spans(h.NegativeSpans)
		ints(h.PositiveBuckets)
		ints(h.NegativeBuckets)
		floats(h.CustomValues)
		return b
	}
	b = append(b, 1, byte(fh.CounterResetHint))
	b = binary.AppendVarint(b, int64(fh.Schema))
	f64(fh.ZeroThreshold)
	f64(fh.ZeroCount)
	f64(fh.Count)
	f64(fh.Sum)
	spans(fh.PositiveSpans)
	spans(fh.NegativeSpans)
	floats(fh.PositiveBuckets)
	floats(fh.NegativeBuckets)
	floats(fh.CustomValues)
	return b
}

// --- receiver side ----------------------------------------------------------

type wireDef struct {
	id   uint32
	ls   labels.Labels
	base float64
}

type wireMeta struct {
	family string
	meta   metadata.Metadata
}

type wireSeries struct {
	id     uint32
	meta   int // index into metas, -1 for none
	nf, nh int
	mode   byte
}

type wireFloat struct {
	st, t int64
	tag   byte    // 0: integral delta from the base, 1: raw, 2: decimal
	scale byte    // decimal digits (tag 2)
	d     int64   // the delta (tags 0 and 2)
	v     float64 // the raw value (tag 1)
}

// value is the sample's value given its series' base (or the value it is
// chained from, with scaledRef).
func (f *wireFloat) value(base float64, scale scaler) float64 {
	switch f.tag {
	case 0:
		return float64(int64(base) + f.d)
	case 2:
		return valueOfDecimal(base, int(f.scale), f.d, scale)
	}
	return f.v
}

type wireHist struct {
	st, t int64
	h     *histogram.Histogram
	fh    *histogram.FloatHistogram
}

type wireExemplar struct {
	idx int // canonical sample index: floats first, then histograms
	ex  exemplar.Exemplar
}

// request is a decoded replication request.
type request struct {
	full      bool
	sender    string
	gen       uint64
	defs      []wireDef
	metas     []wireMeta
	series    []wireSeries
	floats    []wireFloat
	hists     []wireHist
	exemplars []wireExemplar
}

// reader reads the payload; the first error sticks and zeroes every read.
type reader struct {
	b   []byte
	err error
}

func (r *reader) fail(what string) {
	if r.err == nil {
		r.err = fmt.Errorf("%s: %w", what, errMalformed)
	}
	r.b = nil
}

func (r *reader) uvarint() uint64 {
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.fail("uvarint")
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *reader) varint() int64 {
	v, n := binary.Varint(r.b)
	if n <= 0 {
		r.fail("varint")
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *reader) byte() byte {
	if len(r.b) < 1 {
		r.fail("byte")
		return 0
	}
	c := r.b[0]
	r.b = r.b[1:]
	return c
}

func (r *reader) f64() float64 {
	if len(r.b) < 8 {
		r.fail("float")
		return 0
	}
	v := math.Float64frombits(binary.LittleEndian.Uint64(r.b))
	r.b = r.b[8:]
	return v
}

// count reads a count of items that take at least minSize bytes each, so a
// hostile count cannot make the decoder allocate more than it was sent.
func (r *reader) count(minSize int) int {
	n := r.uvarint()
	if n > uint64(len(r.b)/minSize) {
		r.fail("count")
		return 0
	}
	return int(n)
}

func (r *reader) bytes(n uint64) []byte {
	if n > uint64(len(r.b)) {
		r.fail("length")
		return nil
	}
	v := r.b[:n]
	r.b = r.b[n:]
	return v
}

func (r *reader) sym(syms []string) string {
	i := r.uvarint()
	if i >= uint64(len(syms)) {
		r.fail("symbol")
		return ""
	}
	return syms[i]
}

func (r *reader) labels(syms []string, sb *labels.ScratchBuilder) labels.Labels {
	n := r.count(2)
	sb.Reset()
	for range n {
		name := r.sym(syms)
		sb.Add(name, r.sym(syms))
	}
	sb.Sort()
	return sb.Labels()
}

// header is the uncompressed prefix of a request.
type header struct {
	version byte
	full    bool
	sender  string
	gen     uint64
	size    uint64 // decompressed payload size
	rest    []byte // the zstd frame
}

func parseHeader(body []byte) (header, error) {
	var h header
	r := reader{b: body}
	h.version = r.byte()
	if r.err == nil && (h.version < 1 || h.version > wireVersion) {
		return h, fmt.Errorf("version %d: %w", h.version, errMalformed)
	}
	flags := r.byte()
	h.full = flags&flagFull != 0
	h.sender = string(r.bytes(r.uvarint()))
	if len(r.b) < 8 {
		r.fail("generation")
	} else {
		h.gen = binary.LittleEndian.Uint64(r.b)
		r.b = r.b[8:]
	}
	h.size = r.uvarint()
	if r.err == nil && h.size > maxPayload {
		r.fail("payload size")
	}
	h.rest = r.b
	return h, r.err
}

// decodeRequest decodes a request body (bytes from the network).
func decodeRequest(dec *zstd.Decoder, body []byte) (*request, error) {
	h, err := parseHeader(body)
	if err != nil {
		return nil, err
	}
	// The declared size is only trusted as far as the frame could expand
	// to; DecodeAll grows the buffer if it really is larger.
	p, err := dec.DecodeAll(h.rest, make([]byte, 0, min(h.size, 32*uint64(len(h.rest))+4096)))
	if err != nil {
		return nil, fmt.Errorf("zstd: %v: %w", err, errMalformed)
	}
	if uint64(len(p)) != h.size {
		return nil, fmt.Errorf("payload size: %w", errMalformed)
	}
	req, err := decodePayload(p, h.version)
	if err != nil {
		return nil, err
	}
	req.full, req.sender, req.gen = h.full, h.sender, h.gen
	return req, nil
}

func decodePayload(p []byte, version byte) (*request, error) {
	req := &request{}
	r := reader{b: p}
	// Symbols point into the payload, which is never reused: labels and
	// exemplars copy them (labels.ScratchBuilder), metadata is cloned.
	nsyms := r.count(1)
	syms := make([]string, nsyms)
	for i := range syms {
		b := r.bytes(r.uvarint())
		if len(b) > 0 {
			syms[i] = unsafe.String(&b[0], len(b))
		}
	}
	var sb labels.ScratchBuilder
	req.defs = make([]wireDef, r.count(3))
	for i := range req.defs {
		d := &req.defs[i]
		id := r.uvarint()
		if id >= maxSeriesIDs {
			r.fail("series id")
		}
		d.id = uint32(id)
		d.ls = r.labels(syms, &sb)
		d.base = r.f64()
	}
	req.metas = make([]wireMeta, r.count(4))
	for i := range req.metas {
		m := &req.metas[i]
		m.family = strings.Clone(r.sym(syms))
		m.meta.Type = mtype(strings.Clone(r.sym(syms)))
		m.meta.Help = strings.Clone(r.sym(syms))
		m.meta.Unit = strings.Clone(r.sym(syms))
	}
	req.series = make([]wireSeries, r.count(4))
	prev := int64(0)
	for i := range req.series {
		prev += r.varint()
		if prev < 0 || prev >= maxSeriesIDs {
			r.fail("series id")
		}
		req.series[i].id = uint32(prev)
	}
	for i := range req.series {
		m := r.uvarint()
		if m > uint64(len(req.metas)) {
			r.fail("metadata index")
		}
		req.series[i].meta = int(m) - 1
	}
	nf, nh := 0, 0
	for i := range req.series {
		n := r.uvarint()
		if n > uint64(len(r.b)) {
			r.fail("float count")
		}
		req.series[i].nf = int(n)
		nf += int(n)
	}
	for i := range req.series {
		n := r.uvarint()
		if n > uint64(len(r.b)) {
			r.fail("histogram count")
		}
		req.series[i].nh = int(n)
		nh += int(n)
	}
	if version >= 3 {
		for i := range req.series {
			m := r.byte()
			if m > modeSetRef {
				r.fail("series mode")
			}
			req.series[i].mode = m
		}
	}
	if r.err != nil || nf > len(r.b) || nh > len(r.b) {
		r.fail("sample count")
		return nil, r.err
	}
	req.floats = make([]wireFloat, nf)
	pt := int64(0)
	for i := range req.floats {
		pt += r.varint()
		req.floats[i].t = pt
	}
	pt = 0
	for i := range req.floats {
		pt += r.varint()
		req.floats[i].st = pt
	}
	for i := range req.floats {
		switch tag := r.byte(); tag {
		case 0, 1, 2:
			req.floats[i].tag = tag
		default:
			r.fail("value tag")
		}
	}
	for i := range req.floats {
		if f := &req.floats[i]; f.tag != 1 {
			f.d = r.varint()
		}
	}
	for i := range req.floats {
		if f := &req.floats[i]; f.tag == 2 {
			if f.scale = r.byte(); f.scale < 1 || f.scale > maxDecimals {
				r.fail("decimal digits")
			}
		}
	}
	for i := range req.floats {
		if f := &req.floats[i]; f.tag == 1 {
			f.v = r.f64()
		}
	}
	req.hists = make([]wireHist, nh)
	pt = 0
	for i := range req.hists {
		h := &req.hists[i]
		pt += r.varint()
		h.t = pt
		h.st = r.varint()
		h.h, h.fh = r.histogram()
		if r.err != nil {
			return nil, r.err
		}
	}
	req.exemplars = make([]wireExemplar, r.count(11))
	for i := range req.exemplars {
		x := &req.exemplars[i]
		idx := r.uvarint()
		if idx >= uint64(nf+nh) {
			r.fail("exemplar index")
		}
		x.idx = int(idx)
		x.ex.Labels = r.labels(syms, &sb)
		x.ex.Value = r.f64()
		x.ex.Ts = r.varint()
		x.ex.HasTs = r.byte() != 0
	}
	if r.err == nil && len(r.b) != 0 {
		r.fail("trailing bytes")
	}
	if r.err != nil {
		return nil, r.err
	}
	return req, nil
}

func mtype(s string) model.MetricType { return model.MetricType(s) }

func (r *reader) histogram() (*histogram.Histogram, *histogram.FloatHistogram) {
	kind := r.byte()
	hint := histogram.CounterResetHint(r.byte())
	schema := r.varint()
	if schema < math.MinInt32 || schema > math.MaxInt32 {
		r.fail("schema")
	}
	zt := r.f64()
	spans := func() []histogram.Span {
		n := r.count(2)
		if n == 0 {
			return nil
		}
		ss := make([]histogram.Span, n)
		for i := range ss {
			o := r.varint()
			l := r.uvarint()
			if o < math.MinInt32 || o > math.MaxInt32 || l > math.MaxUint32 {
				r.fail("span")
			}
			ss[i] = histogram.Span{Offset: int32(o), Length: uint32(l)}
		}
		return ss
	}
	floats := func() []float64 {
		n := r.count(8)
		if n == 0 {
			return nil
		}
		vs := make([]float64, n)
		for i := range vs {
			vs[i] = r.f64()
		}
		return vs
	}
	ints := func() []int64 {
		n := r.count(1)
		if n == 0 {
			return nil
		}
		vs := make([]int64, n)
		for i := range vs {
			vs[i] = r.varint()
		}
		return vs
	}
	switch kind {
	case 0:
		h := &histogram.Histogram{CounterResetHint: hint, Schema: int32(schema), ZeroThreshold: zt}
		h.ZeroCount = r.uvarint()
		h.Count = r.uvarint()
		h.Sum = r.f64()
		h.PositiveSpans = spans()
		h.NegativeSpans = spans()
		h.PositiveBuckets = ints()
		h.NegativeBuckets = ints()
		h.CustomValues = floats()
		return h, nil
	case 1:
		fh := &histogram.FloatHistogram{CounterResetHint: hint, Schema: int32(schema), ZeroThreshold: zt}
		fh.ZeroCount = r.f64()
		fh.Count = r.f64()
		fh.Sum = r.f64()
		fh.PositiveSpans = spans()
		fh.NegativeSpans = spans()
		fh.PositiveBuckets = floats()
		fh.NegativeBuckets = floats()
		fh.CustomValues = floats()
		return nil, fh
	}
	r.fail("histogram kind")
	return nil, nil
}

// --- response ---------------------------------------------------------------

// rejection is one refused sample in a response, by canonical index.
type rejection struct {
	idx    int
	reason byte
	msg    string
}

func encodeResponse(rs []rejection) []byte {
	b := []byte{responseVersion}
	b = binary.AppendUvarint(b, uint64(len(rs)))
	for _, r := range rs {
		b = binary.AppendUvarint(b, uint64(r.idx))
		b = append(b, r.reason)
		b = binary.AppendUvarint(b, uint64(len(r.msg)))
		b = append(b, r.msg...)
	}
	return b
}

func decodeResponse(b []byte) ([]rejection, error) {
	r := reader{b: b}
	if v := r.byte(); r.err == nil && v != 1 && v != responseVersion {
		return nil, fmt.Errorf("response version %d: %w", v, errMalformed)
	}
	rs := make([]rejection, r.count(3))
	for i := range rs {
		rs[i].idx = int(min(r.uvarint(), math.MaxInt32))
		rs[i].reason = r.byte()
		rs[i].msg = string(r.bytes(r.uvarint()))
	}
	if r.err == nil && len(r.b) != 0 {
		r.fail("trailing bytes")
	}
	return rs, r.err
}

package shard

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/prometheus/prometheus/model/histogram"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/storage"
	"github.com/prometheus/prometheus/tsdb/chunkenc"
)

// Chunk cutting. A longer chunk amortises the chunk header and the badger key
// over more samples (bytes on disk per sample), at the cost of decoding more
// samples a query does not need. 240 samples is one hour at a 15 s interval.
const (
	samplesPerChunk = 240
	maxChunkBytes   = 1500
	// maxChunkRange bounds how long a chunk spans, which bounds how far back a
	// disk scan that seeks by chunk end time must look.
	maxChunkRange = 2 * 3600 * 1000
	// oooFlushSamples is how many out-of-order samples a series buffers before
	// it encodes them into a chunk of their own.
	oooFlushSamples = 64
)

// sample is one sample of any type.
type sample struct {
	st, t int64
	f     float64
	h     *histogram.Histogram
	fh    *histogram.FloatHistogram
}

func (s sample) valueType() chunkenc.ValueType {
	switch {
	case s.h != nil:
		return chunkenc.ValHistogram
	case s.fh != nil:
		return chunkenc.ValFloatHistogram
	default:
		return chunkenc.ValFloat
	}
}

// memChunk is a chunk held in memory. Closed chunks are immutable and may be
// shared with readers; the open (last in-order) chunk is copied for readers.
type memChunk struct {
	chk        chunkenc.Chunk
	mint, maxt int64
	seq        uint64 // unique id: orders replicas of a timestamp (lower wins) and names the key
	savedKey   []byte // key the chunk was last persisted under; nil if never
	savedN     int    // samples it held when persisted
	cps        xor2Checkpoints
}

func encodingValueType(e chunkenc.Encoding) chunkenc.ValueType {
	switch e {
	case chunkenc.EncHistogram, chunkenc.EncHistogramST:
		return chunkenc.ValHistogram
	case chunkenc.EncFloatHistogram, chunkenc.EncFloatHistogramST:
		return chunkenc.ValFloatHistogram
	default:
		return chunkenc.ValFloat
	}
}

// memSeries is one series. All fields below mu are guarded by it.
type memSeries struct {
	// The fields an append reads come first, in the first two cache lines
	// (an append's cost over many series is mostly its cache misses).
	ref  uint64
	part uint16
	// saved is set once the series record is durable; until then every
	// commit that references the series writes the record too.
	saved atomic.Bool
	// stableHash is labels.StableHash(lset), the seed of cell digests.
	stableHash uint64

	mu         sync.Mutex
	lastT      int64 // newest in-order timestamp (math.MinInt64 when none)
	lastF      float64
	minT, maxT int64 // span of all data, for label queries and stats

	ooo []sample // pending out-of-order samples, sorted by t
	app chunkenc.Appender
	// The open chunk's first timestamp, value type, sample count (pending
	// included) and whether its bytes are full, valid while app is set:
	// deciding to cut from the chunk itself cost a cache miss per sample.
	headMint  int64
	headN     int32
	npend     uint8 // samples in pend
	headVT    chunkenc.ValueType
	headFull  bool
	lastKnown bool // lastF is the value at lastT (false after a restart)
	lastHist  bool // the sample at lastT is lastH or lastFH
	deleted   bool

	lset      labels.Labels
	chunks    []*memChunk // in-order chunks, oldest first; the last one is open
	oooChunks []*memChunk
	// diskMaxT is the newest timestamp held only by chunks on disk (evicted
	// from memory or written before a restart); math.MinInt64 when none.
	diskMaxT int64
	// lastH or lastFH is the sample at lastT when it is a histogram
	// (lastHist), so that a resent histogram is found a duplicate.
	lastH  *histogram.Histogram
	lastFH *histogram.FloatHistogram
	// pend holds in-order float samples not yet encoded into the open
	// chunk. Encoding them a few at a time touches the chunk's scattered
	// lines (appender, stream, header, tail) once per batch instead of once
	// per sample: those misses were a third of a commit. Every reader of
	// the open chunk settles it first; the write-ahead log already holds
	// the samples.
	pend [pendCap]pendSample
}

// pendCap is how many float samples a series buffers before encoding them
// into its open chunk.
const pendCap = 8

type pendSample struct {
	st, t int64
	v     float64
}

func newMemSeries(ref uint64, part uint16, ls labels.Labels, stableHash uint64) *memSeries {
	return &memSeries{
		ref: ref, part: part, lset: ls, stableHash: stableHash,
		lastT: math.MinInt64, diskMaxT: math.MinInt64,
		minT: math.MaxInt64, maxT: math.MinInt64,
	}
}

// check reports whether sm can be appended, without changing the series.
// nil, errDup (an exact duplicate, dropped) or a storage error.
func (s *memSeries) check(sm sample) error {
	if sm.t == s.lastT && s.lastKnown {
		last := sample{t: s.lastT, f: s.lastF}
		if s.lastHist {
			last.h, last.fh = s.lastH, s.lastFH
		}
		if err := sameTimestamp(sm, last); err != nil {
			return err
		}
	}
	if sm.t >= s.lastT || len(s.ooo) == 0 {
		return nil
	}
	i, found := slices.BinarySearchFunc(s.ooo, sm.t, func(a sample, t int64) int { return cmpInt64(a.t, t) })
	if found {
		return sameTimestamp(sm, s.ooo[i])
	}
	return nil
}

// sameTimestamp judges sm against the stored sample old of its timestamp:
// errDup for an exact duplicate, a duplicate-timestamp error for another
// value of the same type. Samples of different types are left to the
// reads, which pick one (nil).
func sameTimestamp(sm, old sample) error {
	switch {
	case sm.h == nil && sm.fh == nil && old.h == nil && old.fh == nil:
		if math.Float64bits(sm.f) == math.Float64bits(old.f) {
			return errDup
		}
		return storage.NewDuplicateFloatErr(sm.t, old.f, sm.f)
	case sm.h != nil && old.h != nil:
		if sm.h.Equals(old.h) {
			return errDup
		}
	case sm.fh != nil && old.fh != nil:
		if sm.fh.Equals(old.fh) {
			return errDup
		}
	default:
		return nil
	}
	return fmt.Errorf("%w %d: another histogram is stored there", storage.ErrDuplicateSampleForTimestamp, sm.t)
}

var errDup = errors.New("exact duplicate")

func cmpInt64(a, b int64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// append adds a committed sample. It returns false when the sample was
// dropped as a duplicate. newSeq allocates chunk ids.
func (s *memSeries) append(sm sample, newSeq func() uint64) (bool, error) {
	if err := s.check(sm); err != nil {
		if errors.Is(err, errDup) {
			return false, nil
		}
		return false, err
	}
	if sm.t < s.minT {
		s.minT = sm.t
	}
	if sm.t > s.maxT {
		s.maxT = sm.t
	}
	if sm.t <= s.lastT {
		s.insertOOO(sm)
		if len(s.ooo) >= oooFlushSamples {
			s.compactOOO(newSeq)
		}
		return true, nil
	}
	if err := s.appendInOrder(sm, newSeq); err != nil {
		return false, err
	}
	s.lastT, s.lastF, s.lastKnown = sm.t, sm.f, true
	if hist := sm.h != nil || sm.fh != nil; hist || s.lastHist {
		// lastH and lastFH live outside the lines a float append reads.
		s.lastH, s.lastFH, s.lastHist = sm.h, sm.fh, hist
	}
	return true, nil
}

func (s *memSeries) insertOOO(sm sample) {
	i, found := slices.BinarySearchFunc(s.ooo, sm.t, func(a sample, t int64) int { return cmpInt64(a.t, t) })
	if found {
		return // first write wins
	}
	s.ooo = slices.Insert(s.ooo, i, sm)
}

func (s *memSeries) head() *memChunk {
	if len(s.chunks) == 0 || s.app == nil {
		return nil
	}
	return s.chunks[len(s.chunks)-1]
}

func (s *memSeries) cut(vt chunkenc.ValueType, t int64, newSeq func() uint64) (*memChunk, error) {
	s.settle()
	if h := s.head(); h != nil {
		h.chk.Compact()
	}
	chk, err := vt.NewChunk(true, true)
	if err != nil {
		return nil, err
	}
	app, err := chk.Appender()
	if err != nil {
		return nil, err
	}
	c := &memChunk{chk: chk, mint: t, maxt: t, seq: newSeq()}
	s.chunks = append(s.chunks, c)
	s.app = app
	s.headVT, s.headMint, s.headN, s.headFull = vt, t, 0, false
	return c, nil
}

// settle encodes the pending samples into the open chunk. Caller holds mu.
func (s *memSeries) settle() {
	if s.npend == 0 {
		return
	}
	c := s.chunks[len(s.chunks)-1]
	for _, p := range s.pend[:s.npend] {
		s.app.Append(p.st, p.t, p.v)
	}
	c.maxt = s.pend[s.npend-1].t
	s.npend = 0
	s.headFull = len(c.chk.Bytes()) >= maxChunkBytes
}

func (s *memSeries) appendInOrder(sm sample, newSeq func() uint64) error {
	vt := sm.valueType()
	cont := s.app != nil && s.headVT == vt
	if vt == chunkenc.ValFloat {
		if !cont || s.headFull || int(s.headN) >= samplesPerChunk || sm.t-s.headMint >= maxChunkRange {
			if _, err := s.cut(vt, sm.t, newSeq); err != nil {
				return err
			}
		}
		s.pend[s.npend] = pendSample{st: sm.st, t: sm.t, v: sm.f}
		s.npend++
		s.headN++
		if s.npend == pendCap {
			s.settle()
		}
		return nil
	}
	var (
		c       *memChunk
		prevApp chunkenc.Appender
	)
	if cont {
		prevApp = s.app
		if !s.headFull && s.headN < samplesPerChunk && sm.t-s.headMint < maxChunkRange {
			c = s.chunks[len(s.chunks)-1]
		}
	}
	if c == nil {
		var err error
		if c, err = s.cut(vt, sm.t, newSeq); err != nil {
			return err
		}
	}
	var (
		newChk  chunkenc.Chunk
		recoded bool
		app     chunkenc.Appender
		err     error
	)
	if vt == chunkenc.ValHistogram {
		newChk, recoded, app, err = s.app.AppendHistogram(prevApp, sm.st, sm.t, sm.h, false)
	} else {
		newChk, recoded, app, err = s.app.AppendFloatHistogram(prevApp, sm.st, sm.t, sm.fh, false)
	}
	if err != nil {
		return err
	}
	s.app = app
	if newChk != nil {
		if recoded {
			c.chk = newChk
		} else {
			c.chk.Compact()
			c = &memChunk{chk: newChk, mint: sm.t, seq: newSeq()}
			s.chunks = append(s.chunks, c)
			s.headMint = sm.t
		}
	}
	c.maxt = sm.t
	s.headN = int32(c.chk.NumSamples())
	s.headFull = len(c.chk.Bytes()) >= maxChunkBytes
	return nil
}

// compactOOO encodes the pending out-of-order samples into chunks, one per
// run of a value type.
func (s *memSeries) compactOOO(newSeq func() uint64) {
	for len(s.ooo) > 0 {
		n := runLen(s.ooo)
		if c := encodeSamples(s.ooo[:n], newSeq()); c != nil {
			s.oooChunks = append(s.oooChunks, c)
		}
		s.ooo = s.ooo[n:]
	}
	s.ooo = nil
}

// encodeSamples encodes time-ordered samples of one value type into a chunk.
// A histogram that cannot join the chunk (a schema change, say) is dropped
// here only if the chunk library refuses it in recode mode too, which it does
// not for valid histograms.
func encodeSamples(ss []sample, seq uint64) *memChunk {
	vt := ss[0].valueType()
	chk, err := vt.NewChunk(true, true)
	if err != nil {
		return nil
	}
	app, _ := chk.Appender()
	c := &memChunk{chk: chk, mint: ss[0].t, maxt: ss[len(ss)-1].t, seq: seq}
	for _, sm := range ss {
		switch vt {
		case chunkenc.ValFloat:
			app.Append(sm.st, sm.t, sm.f)
		case chunkenc.ValHistogram:
			if nc, _, napp, err := app.AppendHistogram(nil, sm.st, sm.t, sm.h, false); err == nil {
				app = napp
				if nc != nil {
					c.chk = nc
				}
			}
		case chunkenc.ValFloatHistogram:
			if nc, _, napp, err := app.AppendFloatHistogram(nil, sm.st, sm.t, sm.fh, false); err == nil {
				app = napp
				if nc != nil {
					c.chk = nc
				}
			}
		}
	}
	c.chk.Compact()
	return c
}

// readChunk is a chunk handed to a reader: immutable bytes plus its span.
type readChunk struct {
	chk        chunkenc.Chunk
	mint, maxt int64
	seq        uint64
}

// snapshot returns the in-memory chunks overlapping [mint, maxt], the seqs of
// all in-memory chunks (to skip their persisted copies), and whether the disk
// must be read too.
func (s *memSeries) snapshot(mint, maxt int64, out []readChunk) ([]readChunk, map[uint64]struct{}, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.settle()
	var mem map[uint64]struct{}
	needDisk := mint <= s.diskMaxT
	if needDisk {
		mem = make(map[uint64]struct{}, len(s.chunks)+len(s.oooChunks))
	}
	add := func(c *memChunk, open bool) {
		if mem != nil {
			mem[c.seq] = struct{}{}
		}
		if c.maxt < mint || c.mint > maxt {
			return
		}
		chk := c.chk
		if chk.Encoding() == chunkenc.EncXOR2 {
			// Appends to the open chunk rewrite only the header and the
			// last byte, which the view copies; the rest is read in place
			// (see xor2.go).
			chk = viewXOR2Kept(chk.Bytes(), &c.cps)
		} else if open {
			// The open chunk's bytes change under appends; readers get a copy.
			b := slices.Clone(chk.Bytes())
			var err error
			if chk, err = chunkenc.FromData(chk.Encoding(), b); err != nil {
				return
			}
		}
		out = append(out, readChunk{chk: chk, mint: c.mint, maxt: c.maxt, seq: c.seq})
	}
	for i, c := range s.chunks {
		add(c, i == len(s.chunks)-1 && s.app != nil)
	}
	for _, c := range s.oooChunks {
		add(c, false)
	}
	if len(s.ooo) > 0 && s.ooo[0].t <= maxt && s.ooo[len(s.ooo)-1].t >= mint {
		if c := encodeSamplesRuns(s.ooo); len(c) > 0 {
			out = append(out, c...)
		}
	}
	return out, mem, needDisk
}

// encodeSamplesRuns encodes pending samples for a reader; they rank after
// every stored chunk.
func encodeSamplesRuns(ss []sample) []readChunk {
	var out []readChunk
	for len(ss) > 0 {
		n := runLen(ss)
		if c := encodeSamples(ss[:n], math.MaxUint64); c != nil {
			out = append(out, readChunk{chk: c.chk, mint: c.mint, maxt: c.maxt, seq: math.MaxUint64})
		}
		ss = ss[n:]
	}
	return out
}

// runLen returns how many leading samples fit one chunk: same value type,
// at most samplesPerChunk, spanning less than maxChunkRange.
func runLen(ss []sample) int {
	vt := ss[0].valueType()
	n := 1
	for n < len(ss) && n < samplesPerChunk && ss[n].valueType() == vt && ss[n].t-ss[0].t < maxChunkRange {
		n++
	}
	return n
}

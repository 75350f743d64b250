package shard

import (
	"encoding/binary"
	"errors"
	"math"
	"math/bits"
	"sync/atomic"

	"github.com/prometheus/prometheus/model/histogram"
	"github.com/prometheus/prometheus/model/value"
	"github.com/prometheus/prometheus/tsdb/chunkenc"
)

// A decoder of chunkenc's XOR2 float chunks, the encoding of every float
// chunk Kiln writes. It decodes the same bits as chunkenc's xor2Iterator
// (xor2_test.go checks the two agree sample by sample) and exists for two
// reasons measured in BenchmarkDashboard:
//
//   - Kiln's chunks hold up to 240 samples, and from sample 127 on (the
//     largest index the XOR2 header can name) chunkenc's appender writes a
//     start-timestamp delta after every sample, one zero bit when there is no
//     start timestamp. chunkenc decodes it through a bit-by-bit loop that was
//     a third of all decoding; here it is one peek.
//   - It reads the open chunk in place. Appends only OR bits into the last
//     byte, append bytes after it and rewrite the 3-byte header, so a reader
//     that copies the header and the last byte under the series lock can
//     decode the rest without copying the chunk, as Prometheus's head does.
//     Copying the open chunk was a tenth of an instant query.

const xor2HeaderSize = 3 // sample count u16, start-timestamp header byte

// xor2View is a read-only XOR2 chunk whose header and last byte were copied
// when it was taken; only b[xor2HeaderSize:len(b)-1] is read afterwards.
type xor2View struct {
	b     []byte
	n     uint16
	sthdr byte
	last  byte
	cps   *xor2Checkpoints // nil: none kept for this chunk
}

// xor2CheckpointEvery is how many samples apart decoder states are kept for
// in-memory chunks. An instant query seeks to the last few minutes of a
// 240-sample chunk; from a checkpoint it decodes at most 63 samples instead
// of ~220, which was most of an instant query's time. A kept state is 72
// bytes, at most 3 per chunk, and only for chunks a query sought into.
const xor2CheckpointEvery = 64

// xor2Checkpoints holds decoder states after every xor2CheckpointEvery
// samples of one in-memory chunk, in order. A state depends only on the
// samples before it, which appends never change, so the states of the open
// chunk stay valid as it grows. Readers that decode further publish longer
// lists; a lost race loses nothing but the work.
type xor2Checkpoints struct{ p atomic.Pointer[[]xor2State] }

// viewXOR2 takes a view of an XOR2 chunk's bytes. For the open chunk the
// caller must hold the lock its appender writes under.
func viewXOR2(b []byte) *xor2View {
	v := &xor2View{b: b}
	if len(b) >= xor2HeaderSize {
		v.n = binary.BigEndian.Uint16(b)
		v.sthdr = b[2]
		v.last = b[len(b)-1]
	}
	return v
}

// Bytes returns a consistent copy: the shared slice may change in its header
// and last byte.
func (v *xor2View) Bytes() []byte {
	return v.appendBytes(make([]byte, 0, len(v.b)))
}

// appendBytes appends what Bytes returns to dst.
func (v *xor2View) appendBytes(dst []byte) []byte {
	if len(v.b) < xor2HeaderSize {
		return append(dst, v.b...)
	}
	dst = binary.BigEndian.AppendUint16(dst, v.n)
	dst = append(dst, v.sthdr)
	if len(v.b) > xor2HeaderSize {
		dst = append(dst, v.b[xor2HeaderSize:len(v.b)-1]...)
		dst = append(dst, v.last)
	}
	return dst
}

func (*xor2View) Encoding() chunkenc.Encoding { return chunkenc.EncXOR2 }
func (*xor2View) Appender() (chunkenc.Appender, error) {
	return nil, errors.New("read-only chunk view")
}
func (v *xor2View) NumSamples() int { return int(v.n) }
func (*xor2View) Compact()          {}
func (v *xor2View) Reset(b []byte)  { *v = *viewXOR2(b) }

// viewXOR2Kept is viewXOR2 for an in-memory chunk whose checkpoints cps
// holds.
func viewXOR2Kept(b []byte, cps *xor2Checkpoints) *xor2View {
	v := viewXOR2(b)
	v.cps = cps
	return v
}

func (v *xor2View) Iterator(reuse chunkenc.Iterator) chunkenc.Iterator {
	it, ok := reuse.(*xor2Iterator)
	if !ok {
		it = &xor2Iterator{}
	}
	it.reset(v)
	return it
}

// chunkIterator returns an iterator over c, decoding XOR2 float chunks with
// xor2Iterator.
func chunkIterator(c chunkenc.Chunk, reuse chunkenc.Iterator) chunkenc.Iterator {
	if x, ok := c.(*chunkenc.XOR2Chunk); ok {
		// Closed and persisted chunks are immutable: read the header and
		// last byte in place.
		it, ok := reuse.(*xor2Iterator)
		if !ok {
			it = &xor2Iterator{}
		}
		v := viewXOR2(x.Bytes())
		it.reset(v)
		return it
	}
	return c.Iterator(reuse)
}

var errXOR2Short = errors.New("xor2 chunk: unexpected end of data")

// xor2Iterator decodes an xor2View. The decoding state is a plain value, so
// it can be saved and restored.
type xor2Iterator struct {
	b          []byte // the stream after the header
	last       byte   // b's last byte as of the view
	nbits      uint   // len(b)*8
	n          uint16
	stKnown    bool
	stChangeOn uint16
	xor2State
	err     error
	cps     *xor2Checkpoints
	pending []xor2State // checkpoints found by this Seek, to publish
}

type xor2State struct {
	pos               uint // next bit to read
	numRead           uint16
	leading, trailing uint8
	t, st             int64
	tDelta            uint64
	stDiff            int64
	val, baseline     float64
}

func (it *xor2Iterator) reset(v *xor2View) {
	*it = xor2Iterator{pending: it.pending[:0], cps: v.cps}
	if len(v.b) < xor2HeaderSize {
		it.err = errXOR2Short
		return
	}
	it.b = v.b[xor2HeaderSize:]
	it.last = v.last
	it.nbits = uint(len(it.b)) * 8
	it.n = v.n
	it.stKnown = v.sthdr&0x80 != 0
	it.stChangeOn = uint16(v.sthdr & 0x7f)
}

// byteAt returns stream byte i, the copied last byte for the final one.
func (it *xor2Iterator) byteAt(i int) byte {
	if i == len(it.b)-1 {
		return it.last
	}
	return it.b[i]
}

// word returns the 64 bits starting at byte i, zero past the end.
func (it *xor2Iterator) word(i int) uint64 {
	if i+8 < len(it.b) {
		return binary.BigEndian.Uint64(it.b[i:])
	}
	var w uint64
	for k := i; k < i+8; k++ {
		w <<= 8
		if k < len(it.b) {
			w |= uint64(it.byteAt(k))
		}
	}
	return w
}

// peek returns the next n <= 56 bits, zero-padded past the end.
func (it *xor2Iterator) peek(n uint) uint64 {
	i := int(it.pos >> 3)
	if i >= len(it.b) {
		return 0
	}
	return (it.word(i) << (it.pos & 7)) >> (64 - n)
}

func (it *xor2Iterator) skip(n uint) bool {
	if it.pos+n > it.nbits {
		it.err = errXOR2Short
		return false
	}
	it.pos += n
	return true
}

// readBits reads n <= 64 bits.
func (it *xor2Iterator) readBits(n uint) (uint64, bool) {
	if n == 0 {
		return 0, true
	}
	if n > 64 || it.pos+n > it.nbits {
		it.err = errXOR2Short
		return 0, false
	}
	i, off := int(it.pos>>3), it.pos&7
	w := it.word(i) << off
	if off+n > 64 {
		w |= uint64(it.byteAt(i+8)) >> (8 - off)
	}
	it.pos += n
	return w >> (64 - n), true
}

func (it *xor2Iterator) readUvarint() (uint64, bool) {
	var x uint64
	var s uint
	for range binary.MaxVarintLen64 {
		b, ok := it.readBits(8)
		if !ok {
			return 0, false
		}
		if b < 0x80 {
			return x | b<<s, true
		}
		x |= (b & 0x7f) << s
		s += 7
	}
	it.err = errXOR2Short
	return 0, false
}

func (it *xor2Iterator) readVarint() (int64, bool) {
	ux, ok := it.readUvarint()
	x := int64(ux >> 1)
	if ux&1 != 0 {
		x = ^x
	}
	return x, ok
}

// readVarbitInt reads chunkenc's putVarbitInt encoding: a unary bucket of up
// to 8 one bits, then that bucket's number of value bits.
func (it *xor2Iterator) readVarbitInt() (int64, bool) {
	ones := uint(bits.LeadingZeros8(^uint8(it.peek(8))))
	if ones == 0 {
		return 0, it.skip(1)
	}
	var sz uint
	switch ones {
	case 1:
		sz = 3
	case 2:
		sz = 6
	case 3:
		sz = 9
	case 4:
		sz = 12
	case 5:
		sz = 18
	case 6:
		sz = 25
	case 7:
		sz = 56
	default:
		if !it.skip(8) {
			return 0, false
		}
		v, ok := it.readBits(64)
		return int64(v), ok
	}
	if !it.skip(ones + 1) {
		return 0, false
	}
	v, ok := it.readBits(sz)
	if v > 1<<(sz-1) {
		v -= 1 << sz
	}
	return int64(v), ok
}

func (it *xor2Iterator) fail() chunkenc.ValueType {
	if it.err == nil {
		it.err = errXOR2Short
	}
	return chunkenc.ValNone
}

func (it *xor2Iterator) Next() chunkenc.ValueType {
	if it.err != nil || it.numRead == it.n {
		return chunkenc.ValNone
	}
	switch it.numRead {
	case 0:
		t, ok := it.readVarint()
		if !ok {
			return it.fail()
		}
		v, ok := it.readBits(64)
		if !ok {
			return it.fail()
		}
		it.t, it.val = t, math.Float64frombits(v)
		if !value.IsStaleNaN(it.val) {
			it.baseline = it.val
		}
		if it.stKnown {
			d, ok := it.readVarint()
			if !ok {
				return it.fail()
			}
			it.st = t - d
		}
	case 1:
		d, ok := it.readUvarint()
		if !ok {
			return it.fail()
		}
		prevT := it.t
		it.tDelta = d
		it.t += int64(d)
		if !it.decodeValue() {
			return it.fail()
		}
		if it.stChangeOn == 1 {
			sd, ok := it.readVarbitInt()
			if !ok {
				return it.fail()
			}
			it.stDiff = sd
			it.st = prevT - sd
		}
	default:
		prevT, read := it.t, it.numRead
		ctrl := it.peek(5)
		var ok bool
		switch {
		case ctrl < 0b10000: // dod=0, value unchanged
			ok = it.skip(1)
			it.t += int64(it.tDelta)
			it.val = it.baseline
		case ctrl < 0b11000: // dod=0, value changed
			ok = it.skip(2) && it.decodeValueKnownNonZero()
			it.t += int64(it.tDelta)
		case ctrl < 0b11100:
			ok = it.skip(3) && it.readDod(13) && it.decodeValue()
		case ctrl < 0b11110:
			ok = it.skip(4) && it.readDod(20) && it.decodeValue()
		case ctrl == 0b11110:
			ok = it.skip(5) && it.readDod(64) && it.decodeValue()
		default: // dod=0, stale NaN
			ok = it.skip(5)
			it.t += int64(it.tDelta)
			it.val = math.Float64frombits(value.StaleNaN)
		}
		if !ok {
			return it.fail()
		}
		if it.stChangeOn > 0 && read >= it.stChangeOn {
			sd, ok := it.readVarbitInt()
			if !ok {
				return it.fail()
			}
			if read == it.stChangeOn {
				it.stDiff = sd
			} else {
				it.stDiff += sd
			}
			it.st = prevT - it.stDiff
		}
	}
	it.numRead++
	return chunkenc.ValFloat
}

func (it *xor2Iterator) readDod(w uint) bool {
	b, ok := it.readBits(w)
	if !ok {
		return false
	}
	if w < 64 && b >= 1<<(w-1) {
		b -= 1 << w
	}
	it.tDelta = uint64(int64(it.tDelta) + int64(b))
	it.t += int64(it.tDelta)
	return true
}

// decodeValue reads the value after a timestamp change: 0 unchanged, 10
// previous window, 110 new window, 111 stale NaN.
func (it *xor2Iterator) decodeValue() bool {
	switch ctrl := it.peek(3); {
	case ctrl < 0b100:
		it.val = it.baseline
		return it.skip(1)
	case ctrl < 0b110:
		return it.skip(2) && it.readWindow()
	case ctrl == 0b110:
		return it.skip(3) && it.readNewWindow()
	default:
		it.val = math.Float64frombits(value.StaleNaN)
		return it.skip(3)
	}
}

// decodeValueKnownNonZero reads a changed value: 0 previous window, 1 new.
func (it *xor2Iterator) decodeValueKnownNonZero() bool {
	if it.peek(1) == 0 {
		return it.skip(1) && it.readWindow()
	}
	return it.skip(1) && it.readNewWindow()
}

func (it *xor2Iterator) readWindow() bool {
	sz := uint(uint8(64 - int(it.leading) - int(it.trailing)))
	b, ok := it.readBits(sz)
	if !ok {
		return false
	}
	it.val = math.Float64frombits(math.Float64bits(it.baseline) ^ b<<it.trailing)
	it.baseline = it.val
	return true
}

func (it *xor2Iterator) readNewWindow() bool {
	lt, ok := it.readBits(11)
	if !ok {
		return false
	}
	it.leading = uint8(lt >> 6)
	sig := uint8(lt & 0x3f)
	if sig == 0 {
		sig = 64
	}
	it.trailing = 64 - it.leading - sig
	b, ok := it.readBits(uint(sig))
	if !ok {
		return false
	}
	it.val = math.Float64frombits(math.Float64bits(it.baseline) ^ b<<it.trailing)
	it.baseline = it.val
	return true
}

func (it *xor2Iterator) Seek(t int64) chunkenc.ValueType {
	if it.err != nil {
		return chunkenc.ValNone
	}
	if it.numRead > 0 && t <= it.t {
		return chunkenc.ValFloat
	}
	var kept []xor2State
	if it.cps != nil {
		if p := it.cps.p.Load(); p != nil {
			kept = *p
		}
		// Resume from the last kept state before t. Samples of an
		// in-memory chunk are in time order, so none before it is >= t.
		for i := len(kept) - 1; i >= 0; i-- {
			if s := &kept[i]; s.numRead > it.numRead && s.numRead <= it.n && s.t < t {
				it.xor2State = *s
				break
			}
		}
	}
	for t > it.t || it.numRead == 0 {
		if it.Next() == chunkenc.ValNone {
			it.publish(kept)
			return chunkenc.ValNone
		}
		if it.cps != nil && it.numRead%xor2CheckpointEvery == 0 && int(it.numRead/xor2CheckpointEvery) > len(kept)+len(it.pending) {
			it.pending = append(it.pending, it.xor2State)
		}
	}
	it.publish(kept)
	return chunkenc.ValFloat
}

// publish adds the checkpoints this Seek passed to the chunk's list.
func (it *xor2Iterator) publish(kept []xor2State) {
	if len(it.pending) == 0 {
		return
	}
	if len(kept)+1 == int(it.pending[0].numRead/xor2CheckpointEvery) {
		all := make([]xor2State, 0, len(kept)+len(it.pending))
		all = append(append(all, kept...), it.pending...)
		it.cps.p.Store(&all)
	}
	it.pending = it.pending[:0]
}

func (it *xor2Iterator) At() (int64, float64) { return it.t, it.val }
func (*xor2Iterator) AtHistogram(*histogram.Histogram) (int64, *histogram.Histogram) {
	panic("cannot call xor2Iterator.AtHistogram")
}

func (*xor2Iterator) AtFloatHistogram(*histogram.FloatHistogram) (int64, *histogram.FloatHistogram) {
	panic("cannot call xor2Iterator.AtFloatHistogram")
}
func (it *xor2Iterator) AtT() int64  { return it.t }
func (it *xor2Iterator) AtST() int64 { return it.st }
func (it *xor2Iterator) Err() error  { return it.err }

package remotewrite

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"unsafe"
)

// This file holds the protobuf wire-format primitives shared by both decoders.
//
// Acceptance follows the gogo-generated Unmarshal of prompb exactly (varints
// of up to 10 bytes with overflow bits dropped, int32 field numbers, groups
// skipped with depth tracking, last-wins for repeated scalars, merge for
// repeated embedded messages), so a body Prometheus accepts is a body Kiln
// accepts; FuzzDecodeV1/FuzzDecodeV2 check that differentially. The only
// deliberate difference is errPackedOverrun below.

// Wire types.
const (
	wtVarint  = 0
	wtFixed64 = 1
	wtBytes   = 2
	wtStart   = 3
	wtEnd     = 4
	wtFixed32 = 5
)

var (
	// ErrMalformed reports a body that is not a valid protobuf encoding of
	// the message selected by Content-Type.
	ErrMalformed = errors.New("malformed protobuf")
	// ErrWrongMessage reports a body that is recognisably the other
	// remote-write message: 2.0 fields in a 1.0 request or the reverse. The
	// spec notes that a wrong-schema decode "will result in empty message";
	// answering 204 to it would silently drop the sender's data.
	ErrWrongMessage = errors.New("protobuf message does not match Content-Type")
	// ErrInvalidSymbols reports a 2.0 symbol table whose first entry is not
	// the empty string, which the spec requires.
	ErrInvalidSymbols = errors.New("invalid symbols table")

	// errPackedOverrun: a packed field whose last element runs past the
	// field's declared length. gogo keeps reading into the bytes that follow
	// (they then get parsed twice); Kiln rejects it. Wrapped in ErrMalformed.
	errPackedOverrun = errors.New("packed field length is not a whole number of elements")
)

// malformed builds a decode error. Only error paths call it.
func malformed(msg string, field int32, what string) error {
	return fmt.Errorf("%w: %s field %d: %s", ErrMalformed, msg, field, what)
}

// uvarint decodes the varint at b[i:]. It returns the index after it, or -1
// when the data ends early or the varint has more than 10 bytes.
//
// Written as a plain loop because that fits the inlining budget, whereas a
// one-byte fast path plus an out-of-line slow path does not; not inlining it
// cost 15% of decode time.
func uvarint(b []byte, i int) (uint64, int) {
	var v uint64
	for shift := uint(0); shift < 64; shift += 7 {
		if i >= len(b) {
			return 0, -1
		}
		c := b[i]
		i++
		v |= uint64(c&0x7f) << shift
		if c < 0x80 {
			return v, i
		}
	}
	return 0, -1
}

// fixed64 reads 8 little-endian bytes at b[i:], or returns -1.
func fixed64(b []byte, i int) (uint64, int) {
	if len(b)-i < 8 {
		return 0, -1
	}
	return binary.LittleEndian.Uint64(b[i:]), i + 8
}

func float64At(b []byte, i int) (float64, int) {
	v, j := fixed64(b, i)
	return math.Float64frombits(v), j
}

// delimited reads a length prefix at b[i:] and returns the bounds of the
// payload, or -1s when the length exceeds the remaining data.
func delimited(b []byte, i int) (int, int) {
	n, j := uvarint(b, i)
	if j < 0 || n > uint64(len(b)-j) {
		return -1, -1
	}
	return j, j + int(n)
}

// tag reads a field tag. Field numbers are truncated to int32 as gogo does.
func tag(b []byte, i int) (field int32, wt uint64, next int) {
	t, j := uvarint(b, i)
	return int32(t >> 3), t & 7, j
}

// checkTag rejects the tags every gogo message rejects.
func checkTag(msg string, field int32, wt uint64, next int) error {
	switch {
	case next < 0:
		return fmt.Errorf("%w: %s: truncated tag", ErrMalformed, msg)
	case wt == wtEnd:
		return fmt.Errorf("%w: %s: end group for non-group", ErrMalformed, msg)
	case field <= 0:
		return fmt.Errorf("%w: %s: illegal tag %d", ErrMalformed, msg, field)
	}
	return nil
}

// skip skips the value of an unknown field whose tag ended at b[i-1] and
// returns the index after it, or -1. Groups (deprecated, but legal in unknown
// fields) are skipped by depth like gogo's skipTypes.
func skip(b []byte, i int, wt uint64) int {
	depth := 0
	for {
		switch wt {
		case wtVarint:
			_, i = uvarint(b, i)
		case wtFixed64:
			i += 8
		case wtBytes:
			_, i = delimited(b, i)
		case wtStart:
			depth++
		case wtEnd:
			if depth == 0 {
				return -1
			}
			depth--
		case wtFixed32:
			i += 4
		default:
			return -1
		}
		if i < 0 || i > len(b) {
			return -1
		}
		if depth == 0 {
			return i
		}
		var t uint64
		t, i = uvarint(b, i)
		if i < 0 {
			return -1
		}
		wt = t & 7
	}
}

// isASCII reports whether b has no byte >= 0x80, eight bytes at a time.
func isASCII(b []byte) bool {
	// Four words per iteration with one test: label sets are a few hundred
	// bytes, and the single-word loop was 13% of decode time.
	for len(b) >= 32 {
		w := binary.LittleEndian.Uint64(b) | binary.LittleEndian.Uint64(b[8:]) |
			binary.LittleEndian.Uint64(b[16:]) | binary.LittleEndian.Uint64(b[24:])
		if w&0x8080808080808080 != 0 {
			return false
		}
		b = b[32:]
	}
	for len(b) >= 8 {
		if binary.LittleEndian.Uint64(b)&0x8080808080808080 != 0 {
			return false
		}
		b = b[8:]
	}
	for _, c := range b {
		if c >= 0x80 {
			return false
		}
	}
	return true
}

// unsafeString returns a string sharing b's memory. The decoders use it so
// that labels cost no copy; Request documents the aliasing.
func unsafeString(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	return unsafe.String(&b[0], len(b))
}

// zigzag32 and zigzag64 undo sint32/sint64 encoding. sint32 uses the low 32
// bits of the varint, as gogo does.
func zigzag32(v uint64) int32 {
	u := uint32(v)
	return int32(u>>1) ^ -int32(u&1)
}

func zigzag64(v uint64) int64 {
	return int64(v>>1) ^ -int64(v&1)
}

// appendUint32s decodes a repeated uint32 field given either unpacked (one
// element, wtVarint) or packed (wtBytes), truncating like gogo. It returns the
// index after the field.
func appendUint32s(r *Request, dst []uint32, b []byte, i int, wt uint64, msg string, field int32) ([]uint32, int, error) {
	switch wt {
	case wtVarint:
		v, j := uvarint(b, i)
		if j < 0 {
			return dst, -1, truncated(msg, field)
		}
		if err := r.charge(4); err != nil {
			return dst, -1, err
		}
		return append(dst, uint32(v)), j, nil
	case wtBytes:
		s, e := delimited(b, i)
		if s < 0 {
			return dst, -1, truncated(msg, field)
		}
		// At most one element per byte: charge before allocating.
		if err := r.charge(4 * (e - s)); err != nil {
			return dst, -1, err
		}
		p := b[:e]
		for k := s; k < e; {
			v, j := uvarint(p, k)
			if j < 0 {
				return dst, -1, packedOverrun(msg, field)
			}
			dst = append(dst, uint32(v))
			k = j
		}
		return dst, e, nil
	default:
		return dst, -1, wrongType(msg, field, wt)
	}
}

// appendSint64s is appendUint32s for repeated sint64.
func appendSint64s(r *Request, dst []int64, b []byte, i int, wt uint64, msg string, field int32) ([]int64, int, error) {
	switch wt {
	case wtVarint:
		v, j := uvarint(b, i)
		if j < 0 {
			return dst, -1, truncated(msg, field)
		}
		if err := r.charge(8); err != nil {
			return dst, -1, err
		}
		return append(dst, zigzag64(v)), j, nil
	case wtBytes:
		s, e := delimited(b, i)
		if s < 0 {
			return dst, -1, truncated(msg, field)
		}
		if err := r.charge(8 * (e - s)); err != nil {
			return dst, -1, err
		}
		p := b[:e]
		for k := s; k < e; {
			v, j := uvarint(p, k)
			if j < 0 {
				return dst, -1, packedOverrun(msg, field)
			}
			dst = append(dst, zigzag64(v))
			k = j
		}
		return dst, e, nil
	default:
		return dst, -1, wrongType(msg, field, wt)
	}
}

// appendDoubles is appendVarints for repeated double (fixed64 or packed).
func appendDoubles(r *Request, dst []float64, b []byte, i int, wt uint64, msg string, field int32) ([]float64, int, error) {
	switch wt {
	case wtFixed64:
		v, j := float64At(b, i)
		if j < 0 {
			return dst, -1, truncated(msg, field)
		}
		if err := r.charge(8); err != nil {
			return dst, -1, err
		}
		return append(dst, v), j, nil
	case wtBytes:
		s, e := delimited(b, i)
		if s < 0 {
			return dst, -1, truncated(msg, field)
		}
		if (e-s)%8 != 0 {
			return dst, -1, packedOverrun(msg, field)
		}
		if err := r.charge(e - s); err != nil {
			return dst, -1, err
		}
		for k := s; k < e; k += 8 {
			dst = append(dst, math.Float64frombits(binary.LittleEndian.Uint64(b[k:])))
		}
		return dst, e, nil
	default:
		return dst, -1, wrongType(msg, field, wt)
	}
}

func packedOverrun(msg string, field int32) error {
	return fmt.Errorf("%w: %s field %d: %w", ErrMalformed, msg, field, errPackedOverrun)
}

// wrongType is the error for a known field with an unexpected wire type.
func wrongType(msg string, field int32, wt uint64) error {
	return malformed(msg, field, fmt.Sprintf("wrong wire type %d", wt))
}

// truncated is the error for a known field whose value runs past the message.
func truncated(msg string, field int32) error {
	return malformed(msg, field, "truncated value")
}

package shard

import (
	"bytes"
	"encoding/binary"

	"github.com/cespare/xxhash/v2"
	"github.com/prometheus/prometheus/tsdb/chunkenc"
)

// ChunkIterator returns an iterator over c, like c.Iterator(reuse), but
// decodes XOR2 float chunks with Kiln's own decoder, which is faster than
// chunkenc's on chunks of more than 127 samples. The query fan-out decodes
// the chunks peers send with it.
func ChunkIterator(c chunkenc.Chunk, reuse chunkenc.Iterator) chunkenc.Iterator {
	return chunkIterator(c, reuse)
}

// AppendChunkBytes appends c.Bytes() to dst without the copy an in-memory
// chunk's Bytes makes (it must return a consistent snapshot of a chunk
// that appends keep changing): the snapshot goes straight into dst. The
// query fan-out writes every chunk it sends this way.
func AppendChunkBytes(dst []byte, c chunkenc.Chunk) []byte {
	if v, ok := c.(*xor2View); ok {
		return v.appendBytes(dst)
	}
	return append(dst, c.Bytes()...)
}

// HashChunk writes c.Bytes() to d without the copy an in-memory chunk's
// Bytes makes; see AppendChunkBytes.
func HashChunk(d *xxhash.Digest, c chunkenc.Chunk) {
	v, ok := c.(*xor2View)
	switch {
	case !ok:
		_, _ = d.Write(c.Bytes())
	case len(v.b) < xor2HeaderSize:
		_, _ = d.Write(v.b)
	default:
		var hdr [xor2HeaderSize]byte
		binary.BigEndian.PutUint16(hdr[:], v.n)
		hdr[2] = v.sthdr
		_, _ = d.Write(hdr[:])
		if len(v.b) > xor2HeaderSize {
			_, _ = d.Write(v.b[xor2HeaderSize : len(v.b)-1])
			hdr[0] = v.last
			_, _ = d.Write(hdr[:1])
		}
	}
}

// ChunkSize is len(c.Bytes()), without copying an in-memory chunk.
func ChunkSize(c chunkenc.Chunk) int {
	if v, ok := c.(*xor2View); ok {
		return len(v.b)
	}
	return len(c.Bytes())
}

// ChunkBytesEqual reports whether c.Bytes() equals b, without copying an
// in-memory chunk.
func ChunkBytesEqual(c chunkenc.Chunk, b []byte) bool {
	v, ok := c.(*xor2View)
	if !ok {
		return bytes.Equal(c.Bytes(), b)
	}
	if len(b) != len(v.b) {
		return false
	}
	if len(b) < xor2HeaderSize {
		return bytes.Equal(v.b, b)
	}
	if binary.BigEndian.Uint16(b) != v.n || b[2] != v.sthdr {
		return false
	}
	if len(b) == xor2HeaderSize {
		return true
	}
	return b[len(b)-1] == v.last && bytes.Equal(b[xor2HeaderSize:len(b)-1], v.b[xor2HeaderSize:len(v.b)-1])
}

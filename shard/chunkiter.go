package shard

import "github.com/prometheus/prometheus/tsdb/chunkenc"

// ChunkIterator returns an iterator over c, like c.Iterator(reuse), but
// decodes XOR2 float chunks with Kiln's own decoder, which is faster than
// chunkenc's on chunks of more than 127 samples. The query fan-out decodes
// the chunks peers send with it.
func ChunkIterator(c chunkenc.Chunk, reuse chunkenc.Iterator) chunkenc.Iterator {
	return chunkIterator(c, reuse)
}

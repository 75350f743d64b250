package shard

import (
	"bytes"
	"context"
	"encoding/binary"
	"hash/crc32"
	"math"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/prometheus/tsdb/tsdbutil"
	"github.com/stretchr/testify/require"
)

// FuzzImportPartition feeds arbitrary streams to ImportPartition. With
// fixCRC the harness first rewrites every frame's checksum, so mutations
// reach the payload decoders (labels, chunks) instead of failing the
// checksum: a peer could send such a stream on purpose. Either way the
// import must end in nil or ErrBadStream, never panic or allocate much.
func FuzzImportPartition(f *testing.F) {
	src, err := Open(Config{MemTableSize: 8 << 20}, prometheus.NewRegistry(), nil)
	require.NoError(f, err)
	ls := seriesIn(testPart, "m", 2)
	appendSamples(f, src, ls[0], sample{t: 1, f: 1}, sample{t: 2, f: 2}, sample{t: 10, f: -1})
	appendSamples(f, src, ls[1], sample{t: 1, h: tsdbutil.GenerateTestHistogram(1)}, sample{t: 5, h: tsdbutil.GenerateTestHistogram(2)})
	var buf bytes.Buffer
	_, err = src.ExportPartition(context.Background(), testPart, math.MinInt64, math.MaxInt64, &buf, ExportOptions{})
	require.NoError(f, err)
	require.NoError(f, src.Close())
	f.Add(buf.Bytes(), false)
	f.Add(buf.Bytes(), true)
	f.Add(buf.Bytes()[:40], true)
	f.Add([]byte("KILNPRT\x01H\xff\xff\xff\x7f"), false)

	dst, err := Open(Config{MemTableSize: 8 << 20}, prometheus.NewRegistry(), nil)
	require.NoError(f, err)
	f.Cleanup(func() { _ = dst.Close() })
	f.Fuzz(func(t *testing.T, b []byte, fixCRC bool) {
		if fixCRC {
			b = refreshChecksums(b)
		}
		_, err := dst.ImportPartition(context.Background(), bytes.NewReader(b))
		if err != nil {
			require.ErrorIs(t, err, ErrBadStream)
		}
	})
}

// refreshChecksums rewrites the checksum of every complete frame of b.
func refreshChecksums(b []byte) []byte {
	b = bytes.Clone(b)
	off := len(transferMagic) + 1
	for off < len(b) {
		n, k := binary.Uvarint(b[off+1:])
		if k <= 0 || n > uint64(len(b)) {
			break
		}
		end := off + 1 + k + int(n)
		if end+4 > len(b) {
			break
		}
		binary.BigEndian.PutUint32(b[end:], crc32.Checksum(b[off:end], castagnoli))
		off = end + 4
	}
	return b
}

package shard

import (
	"testing"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/tsdb/chunks"
	"github.com/prometheus/prometheus/tsdb/record"
	"github.com/stretchr/testify/require"
)

// FuzzDecodeLabels: series records come from disk (or, later, from peers
// streaming a partition); a corrupt one must fail cleanly, and a valid one
// must round-trip.
func FuzzDecodeLabels(f *testing.F) {
	f.Add(encodeLabels(nil, labels.FromStrings("__name__", "up", "job", "a")))
	f.Add(encodeLabels(nil, labels.EmptyLabels()))
	f.Add([]byte{0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, b []byte) {
		var sb labels.ScratchBuilder
		ls, err := decodeLabels(b, &sb)
		if err != nil {
			return
		}
		again, err := decodeLabels(encodeLabels(nil, ls), &sb)
		require.NoError(t, err)
		require.True(t, labels.Equal(ls, again), "round trip of %q", b)
	})
}

// FuzzChunkKey checks the chunk key codec round-trips and never panics.
func FuzzChunkKey(f *testing.F) {
	f.Add(uint16(3), uint64(7), int64(-5), int64(100), uint64(9))
	f.Fuzz(func(t *testing.T, part uint16, ref uint64, mint, maxt int64, seq uint64) {
		k := chunkKey(part, ref, mint, maxt, seq)
		got, err := parseChunkKey(k)
		require.NoError(t, err)
		require.Equal(t, chunkKeyInfo{part: part, ref: ref, mint: mint, maxt: maxt, seq: seq}, got)
		_, err = parseChunkKey(k[:len(k)-1])
		require.Error(t, err)
	})
}

// FuzzDecodeWAL feeds arbitrary bytes to the write-ahead decoder.
func FuzzDecodeWAL(f *testing.F) {
	a := &appender{samples: []record.RefSample{{Ref: chunks.HeadSeriesRef(1), T: 5, V: 1.5}, {Ref: 2, ST: 1, T: 6, V: 2}}}
	for _, v := range a.encodeWAL() {
		f.Add(v)
	}
	f.Add([]byte{walVersion, 3, 1, 2, 3})
	f.Fuzz(func(_ *testing.T, b []byte) {
		_ = decodeWAL(b, func(uint64, sample) {})
	})
}

// FuzzChunkValue decodes arbitrary persisted chunk values the way queries do.
func FuzzChunkValue(f *testing.F) {
	c := encodeSamples([]sample{{t: 1, f: 1}, {t: 2, f: 3}, {t: 10, f: -1}}, 1)
	f.Add(encodeChunkValue(c))
	f.Fuzz(func(_ *testing.T, v []byte) {
		if len(v) < 1 {
			return
		}
		rc := readChunk{mint: -1 << 62, maxt: 1 << 62}
		chk, err := chunkFromValue(v)
		if err != nil {
			return
		}
		rc.chk = chk
		it := newSeriesIterator([]readChunk{rc}, rc.mint, rc.maxt, nil)
		for n := 0; it.Next() != 0 && n < 1<<16; n++ {
			it.AtT()
		}
		_ = it.Err()
	})
}

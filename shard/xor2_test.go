package shard

import (
	"math"
	"math/rand"
	"slices"
	"sync"
	"testing"

	"github.com/cespare/xxhash/v2"
	"github.com/prometheus/prometheus/model/value"
	"github.com/prometheus/prometheus/tsdb/chunkenc"
	"github.com/stretchr/testify/require"
)

// genXOR2 appends n samples shaped by mode to a new XOR2 chunk and returns
// the chunk and the appended (st, t, v).
func genXOR2(t testing.TB, r *rand.Rand, n int, mode int) (*chunkenc.XOR2Chunk, []sample) {
	chk := chunkenc.NewXOR2Chunk()
	app, err := chk.Appender()
	require.NoError(t, err)
	var out []sample
	ts, v, st := int64(r.Intn(1e6))-5e5, 0.0, int64(0)
	for i := 0; i < n; i++ {
		switch mode % 4 {
		case 0: // regular scrape
			ts += 15000
		case 1: // jitter
			ts += 15000 + int64(r.Intn(200)) - 100
		case 2: // any gap, large ones too
			ts += 1 + int64(r.Intn(1<<uint(r.Intn(40))))
		case 3: // mostly regular, sometimes huge
			ts += 15000
			if r.Intn(20) == 0 {
				ts += int64(r.Intn(1 << 30))
			}
		}
		switch (mode / 4) % 5 {
		case 0: // counter
			v += float64(r.Intn(10))
		case 1: // random float
			v = r.NormFloat64() * math.Pow(10, float64(r.Intn(20)-10))
		case 2: // mostly constant, stale markers
			if r.Intn(5) == 0 {
				v = math.Float64frombits(value.StaleNaN)
			} else if r.Intn(3) == 0 {
				v = float64(r.Intn(3))
			}
		case 3: // gauge with NaN and Inf
			v = []float64{math.NaN(), math.Inf(1), math.Inf(-1), 0, math.Copysign(0, -1), 1e300, 5e-324}[r.Intn(7)]
		case 4:
			v = float64(r.Int63())
		}
		switch (mode / 20) % 4 {
		case 0: // no start timestamp
		case 1: // constant
			if i == 0 {
				st = ts - 1000
			}
		case 2: // changes sometimes
			if r.Intn(30) == 0 {
				st = ts - int64(r.Intn(1<<uint(r.Intn(62))))
			}
		case 3: // first set late
			if i == n/2 {
				st = ts - 5
			}
		}
		app.Append(st, ts, v)
		out = append(out, sample{st: st, t: ts, f: v})
	}
	return chk, out
}

func requireSameIteration(t *testing.T, want, got chunkenc.Iterator) {
	t.Helper()
	for i := 0; ; i++ {
		wv, gv := want.Next(), got.Next()
		require.Equal(t, wv, gv, "sample %d", i)
		if wv == chunkenc.ValNone {
			break
		}
		wt, wf := want.At()
		gt, gf := got.At()
		require.Equal(t, wt, gt, "sample %d", i)
		require.Equal(t, math.Float64bits(wf), math.Float64bits(gf), "sample %d", i)
		require.Equal(t, want.AtST(), got.AtST(), "sample %d", i)
	}
	require.NoError(t, want.Err())
	require.NoError(t, got.Err())
}

// TestXOR2IteratorMatchesChunkenc decodes chunks of every shape with both
// decoders and requires identical samples, start timestamps and seeks.
func TestXOR2IteratorMatchesChunkenc(t *testing.T) {
	r := rand.New(rand.NewSource(1))
	for mode := 0; mode < 80; mode++ {
		for _, n := range []int{1, 2, 3, 126, 127, 128, 129, 240, 300} {
			chk, _ := genXOR2(t, r, n, mode)
			requireSameIteration(t, chk.Iterator(nil), chunkIterator(chk, nil))
			// Seek to random points, twice on the same iterator.
			for k := 0; k < 5; k++ {
				want, got := chk.Iterator(nil), chunkIterator(chk, nil)
				s1 := int64(r.Intn(1e7)) - 1e6
				s2 := s1 + int64(r.Intn(1e6))
				for _, s := range []int64{s1, s2} {
					wv, gv := want.Seek(s), got.Seek(s)
					require.Equal(t, wv, gv)
					if wv != chunkenc.ValNone {
						require.Equal(t, want.AtT(), got.AtT())
					}
				}
			}
			// Truncated data fails cleanly, never panics.
			b := chk.Bytes()
			for cut := 0; cut < len(b); cut += 1 + len(b)/7 {
				it := viewXOR2(b[:cut]).Iterator(nil)
				for it.Next() != chunkenc.ValNone {
				}
			}
		}
	}
}

// TestXOR2ViewOfOpenChunk reads views of a chunk while another goroutine
// appends to it; run with -race this also checks that a view never reads a
// byte the appender writes.
func TestXOR2ViewOfOpenChunk(t *testing.T) {
	r := rand.New(rand.NewSource(2))
	_, ss := genXOR2(t, r, 240, 20+4)
	chk := chunkenc.NewXOR2Chunk()
	app, err := chk.Appender()
	require.NoError(t, err)
	var mu sync.Mutex
	views := make(chan *xor2View, len(ss))
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer close(views)
		for _, s := range ss {
			mu.Lock()
			app.Append(s.st, s.t, s.f)
			v := viewXOR2(chk.Bytes())
			mu.Unlock()
			views <- v
		}
	}()
	for v := range views {
		it := v.Iterator(nil)
		n := 0
		for it.Next() != chunkenc.ValNone {
			ts, f := it.At()
			require.Equal(t, ss[n].t, ts)
			require.Equal(t, math.Float64bits(ss[n].f), math.Float64bits(f))
			require.Equal(t, ss[n].st, it.AtST())
			n++
		}
		require.NoError(t, it.Err())
		require.Equal(t, v.NumSamples(), n)
		// Bytes is a consistent copy chunkenc decodes the same way.
		c, err := chunkenc.FromData(chunkenc.EncXOR2, v.Bytes())
		require.NoError(t, err)
		require.Equal(t, n, c.NumSamples())
	}
	wg.Wait()
}

// TestXOR2Checkpoints seeks in views of a growing chunk that share one
// checkpoint list and requires the same results as chunkenc.
func TestXOR2Checkpoints(t *testing.T) {
	r := rand.New(rand.NewSource(3))
	for mode := 0; mode < 80; mode += 3 {
		full, ss := genXOR2(t, r, 300, mode)
		chk := chunkenc.NewXOR2Chunk()
		app, err := chk.Appender()
		require.NoError(t, err)
		var cps xor2Checkpoints
		for i, s := range ss {
			app.Append(s.st, s.t, s.f)
			if i%7 != 0 && i < 250 {
				continue
			}
			v := viewXOR2Kept(chk.Bytes(), &cps)
			for k := 0; k < 4; k++ {
				target := ss[r.Intn(len(ss))].t + int64(r.Intn(3)) - 1
				want, got := chk.Iterator(nil), v.Iterator(nil)
				wv, gv := want.Seek(target), got.Seek(target)
				require.Equal(t, wv, gv, "mode %d seek %d", mode, target)
				for wv != chunkenc.ValNone {
					wt, wf := want.At()
					gt, gf := got.At()
					require.Equal(t, wt, gt)
					require.Equal(t, math.Float64bits(wf), math.Float64bits(gf))
					require.Equal(t, want.AtST(), got.AtST())
					wv, gv = want.Next(), got.Next()
					require.Equal(t, wv, gv)
				}
				require.NoError(t, got.Err())
			}
		}
		require.NotNil(t, cps.p.Load())
		requireSameIteration(t, full.Iterator(nil), chunkIterator(chk, nil))
	}
}

// The fan-out writes and hashes in-memory chunks with AppendChunkBytes,
// ChunkSize and HashChunk instead of Bytes: they must agree with it, for
// the open chunk too.
func TestAppendChunkBytesIsBytes(t *testing.T) {
	hashed := func(c chunkenc.Chunk) uint64 {
		d := xxhash.New()
		HashChunk(d, c)
		return d.Sum64()
	}
	c := chunkenc.NewXOR2Chunk()
	app, err := c.Appender()
	require.NoError(t, err)
	require.Equal(t, xxhash.Sum64(c.Bytes()), hashed(viewXOR2(c.Bytes())))
	for i := range 200 {
		app.Append(0, int64(i)*15000, float64(i*i))
		v := viewXOR2(c.Bytes())
		require.Equal(t, v.Bytes(), AppendChunkBytes(nil, v))
		require.Equal(t, xxhash.Sum64(v.Bytes()), hashed(v))
		require.Equal(t, []byte{7}, AppendChunkBytes([]byte{7}, v)[:1])
		require.Equal(t, len(v.Bytes()), ChunkSize(v))
		b := v.Bytes()
		require.True(t, ChunkBytesEqual(v, b))
		for _, k := range []int{0, 1, 2, len(b) / 2, len(b) - 1} {
			if k < len(b) {
				o := slices.Clone(b)
				o[k] ^= 1
				require.False(t, ChunkBytesEqual(v, o), "byte %d differs", k)
			}
		}
		require.False(t, ChunkBytesEqual(v, b[:len(b)-1]))
	}
	require.True(t, ChunkBytesEqual(c, c.Bytes()))
	require.Equal(t, c.Bytes(), AppendChunkBytes(nil, c))
	require.Equal(t, len(c.Bytes()), ChunkSize(c))
	require.Equal(t, xxhash.Sum64(c.Bytes()), hashed(c))
}

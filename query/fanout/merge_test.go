package fanout

import (
	"slices"
	"testing"

	"github.com/prometheus/prometheus/model/histogram"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/storage"
	"github.com/prometheus/prometheus/tsdb/chunkenc"
	"github.com/prometheus/prometheus/tsdb/chunks"
	"github.com/prometheus/prometheus/tsdb/tsdbutil"
	"github.com/stretchr/testify/require"
)

func floatSeries(ts ...int64) storage.Series {
	var ss []chunks.Sample
	for _, t := range ts {
		ss = append(ss, fSample{t: t, f: float64(t)})
	}
	return storage.NewListSeries(labels.FromStrings("a", "b"), ss)
}

func collect(t *testing.T, it chunkenc.Iterator) []int64 {
	var out []int64
	for vt := it.Next(); vt != chunkenc.ValNone; vt = it.Next() {
		ts, v := it.At()
		require.Equal(t, float64(ts), v)
		out = append(out, ts)
	}
	require.NoError(t, it.Err())
	return out
}

// Replicas with gaps merge into the union, each timestamp once.
func TestReplicaMergeUnion(t *testing.T) {
	f := func(want []int64, series ...storage.Series) {
		t.Helper()
		require.Equal(t, want, collect(t, replicaMerge(series...).Iterator(nil)))
	}
	f([]int64{1, 2, 3}, floatSeries(1, 2, 3), floatSeries(1, 2, 3))
	f([]int64{1, 2, 3, 4, 5}, floatSeries(1, 3, 5), floatSeries(2, 4))
	f([]int64{1, 2, 3, 4}, floatSeries(1, 2), floatSeries(3, 4), floatSeries(2, 3))
	f([]int64{1, 2}, floatSeries(), floatSeries(1, 2))
	f(nil, floatSeries(), floatSeries())
}

func TestReplicaMergeSeek(t *testing.T) {
	it := replicaMerge(floatSeries(1, 3, 5, 7), floatSeries(2, 3, 6)).Iterator(nil)
	require.Equal(t, chunkenc.ValFloat, it.Seek(4))
	require.Equal(t, int64(5), it.AtT())
	require.Equal(t, chunkenc.ValFloat, it.Seek(2)) // never backwards
	require.Equal(t, int64(5), it.AtT())
	require.Equal(t, chunkenc.ValFloat, it.Next())
	require.Equal(t, int64(6), it.AtT())
	require.Equal(t, chunkenc.ValFloat, it.Next())
	require.Equal(t, int64(7), it.AtT())
	require.Equal(t, chunkenc.ValNone, it.Next())
	require.Equal(t, chunkenc.ValNone, it.Seek(100))
}

// Identical replicas keep every counter-reset hint; a sample taken from
// another replica to fill a gap is of unknown counter-reset state.
func TestReplicaMergeKeepsHistogramHints(t *testing.T) {
	hs := func(ts ...int64) storage.Series {
		var ss []chunks.Sample
		for i, t := range ts {
			h := tsdbutil.GenerateTestHistogram(int64(i))
			h.CounterResetHint = histogram.NotCounterReset
			ss = append(ss, hSample{t: t, h: h})
		}
		return storage.NewListSeries(labels.FromStrings("a", "b"), ss)
	}
	hints := func(it chunkenc.Iterator) map[int64]histogram.CounterResetHint {
		out := map[int64]histogram.CounterResetHint{}
		for vt := it.Next(); vt != chunkenc.ValNone; vt = it.Next() {
			ts, h := it.AtHistogram(nil)
			out[ts] = h.CounterResetHint
		}
		return out
	}
	got := hints(replicaMerge(hs(1, 2, 3), hs(1, 2, 3)).Iterator(nil))
	require.Equal(t, map[int64]histogram.CounterResetHint{1: histogram.NotCounterReset, 2: histogram.NotCounterReset, 3: histogram.NotCounterReset}, got)

	got = hints(replicaMerge(hs(1, 3), hs(1, 2, 3)).Iterator(nil))
	require.Equal(t, histogram.NotCounterReset, got[1])
	require.Equal(t, histogram.UnknownCounterReset, got[2], "filled from the other replica")
}

type fSample struct {
	t int64
	f float64
}

func (s fSample) T() int64                    { return s.t }
func (fSample) ST() int64                     { return 0 }
func (s fSample) F() float64                  { return s.f }
func (fSample) H() *histogram.Histogram       { return nil }
func (fSample) FH() *histogram.FloatHistogram { return nil }
func (fSample) Type() chunkenc.ValueType      { return chunkenc.ValFloat }
func (s fSample) Copy() chunks.Sample         { return s }

type hSample struct {
	t int64
	h *histogram.Histogram
}

func (s hSample) T() int64                    { return s.t }
func (hSample) ST() int64                     { return 0 }
func (hSample) F() float64                    { return 0 }
func (s hSample) H() *histogram.Histogram     { return s.h }
func (hSample) FH() *histogram.FloatHistogram { return nil }
func (hSample) Type() chunkenc.ValueType      { return chunkenc.ValHistogram }
func (s hSample) Copy() chunks.Sample         { return hSample{t: s.t, h: s.h.Copy()} }

// Replicas a peer sent byte for byte like another's are not merged: one is
// read. Different bytes, a different clip range or a local replica are.
// (A local replica in wire form is compared like a peer's.)
func TestDistinctReplicas(t *testing.T) {
	a := &remoteSeries{chunks: []byte{1, 2, 3}, mint: 0, maxt: 10}
	same := &remoteSeries{chunks: []byte{1, 2, 3}, mint: 0, maxt: 10}
	other := &remoteSeries{chunks: []byte{1, 2, 4}, mint: 0, maxt: 10}
	clipped := &remoteSeries{chunks: []byte{1, 2, 3}, mint: 0, maxt: 5}
	local := floatSeries(1)
	require.Equal(t, []storage.Series{a}, distinctReplicas([]storage.Series{a, same}))
	require.Equal(t, []storage.Series{a, other}, distinctReplicas([]storage.Series{a, other, same}))
	require.Equal(t, []storage.Series{a, clipped}, distinctReplicas([]storage.Series{a, clipped}))
	require.Equal(t, []storage.Series{local, a}, distinctReplicas([]storage.Series{local, a, same}))
	// Of identical replicas the one read from local storage (in wire form,
	// localReplicaSet) is kept, wherever it comes.
	chk := chunkenc.NewXOR2Chunk()
	app, err := chk.Appender()
	require.NoError(t, err)
	app.Append(0, 1, 1)
	app.Append(0, 2, 2)
	metas := []chunks.Meta{{Chunk: chk, MinTime: 1, MaxTime: 2}}
	wire := appendWireChunks(nil, metas)
	peer := &remoteSeries{chunks: wire, mint: 0, maxt: 10}
	inWire := &remoteSeries{mint: 0, maxt: 10, local: metas}
	require.Same(t, inWire, distinctReplicas([]storage.Series{peer, inWire})[0])
	require.Same(t, inWire, distinctReplicas([]storage.Series{inWire, peer})[0])
	require.Len(t, distinctReplicas([]storage.Series{peer, inWire, &remoteSeries{chunks: wire, mint: 0, maxt: 10}}), 1)
	// A peer's replica differing in a chunk's bytes, span or count is not
	// the local one.
	flipped := slices.Clone(wire)
	flipped[len(flipped)-1] ^= 1
	longer := appendWireChunks(slices.Clone(wire), metas)
	for _, w := range [][]byte{flipped, longer, wire[:0]} {
		require.Len(t, distinctReplicas([]storage.Series{inWire, &remoteSeries{chunks: w, mint: 0, maxt: 10}}), 2)
	}
	require.Len(t, distinctReplicas([]storage.Series{inWire, &remoteSeries{chunks: appendWireChunks(nil, []chunks.Meta{{Chunk: chk, MinTime: 1, MaxTime: 3}}), mint: 0, maxt: 10}}), 2)
}

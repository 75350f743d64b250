package shard

import (
	"context"
	"fmt"
	"math"
	"math/rand"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/value"
	"github.com/prometheus/prometheus/storage"
	"github.com/prometheus/prometheus/tsdb/tsdbutil"
	"github.com/stretchr/testify/require"
)

// allCells returns every partition's cells over [mint, maxt], nil for a
// partition whose cells are not valid.
func allCells(db *DB, mint, maxt int64) [][]CellDigest {
	out := make([][]CellDigest, NumPartitions)
	for p := range uint16(NumPartitions) {
		if cs, ok := db.PartitionCells(p, mint, maxt, nil); ok {
			out[p] = cs
		}
	}
	return out
}

type cellSample struct {
	ls labels.Labels
	t  int64
	f  float64
	h  bool
}

func appendCellSamples(t *testing.T, db *DB, batch int, ss []cellSample) {
	t.Helper()
	for len(ss) > 0 {
		app := db.AppenderV2(context.Background())
		n := min(batch, len(ss))
		for _, s := range ss[:n] {
			var err error
			if s.h {
				_, err = app.Append(0, s.ls, 0, s.t, 0, tsdbutil.GenerateTestHistogram(s.t%7), nil, storage.AOptions{})
			} else {
				_, err = app.Append(0, s.ls, 0, s.t, s.f, nil, nil, storage.AOptions{})
			}
			require.NoError(t, err)
		}
		require.NoError(t, app.Commit())
		ss = ss[n:]
	}
}

// Replicas that got the same samples in another order and other batches
// (in-order, out-of-order, stale markers, histograms, an exact duplicate
// resent) have equal cells; one more sample makes its cell differ.
func TestCellsEqualForSameSamples(t *testing.T) {
	const h = int64(3600 * 1000)
	var ss []cellSample
	for i := range 50 {
		ls := labels.FromStrings("__name__", "m", "i", fmt.Sprint(i))
		for j := range 40 {
			ss = append(ss, cellSample{ls: ls, t: int64(j) * 10 * 60 * 1000, f: float64(i * j)})
		}
		ss = append(ss, cellSample{ls: ls, t: 40 * 10 * 60 * 1000, f: math.Float64frombits(value.StaleNaN)})
	}
	hl := labels.FromStrings("__name__", "hist")
	for j := range 20 {
		ss = append(ss, cellSample{ls: hl, t: int64(j) * 60 * 1000, h: true})
	}
	a, b := open(t, Config{}), open(t, Config{})
	defer func() { _ = a.Close(); _ = b.Close() }()
	appendCellSamples(t, a, 100, ss)

	// b: each series' samples newest half first (out of order), shuffled
	// across series, in other batches; then a duplicate resent.
	r := rand.New(rand.NewSource(1))
	shuffled := append([]cellSample(nil), ss...)
	r.Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
	appendCellSamples(t, b, 37, shuffled)
	stale := ss[50*41-1] // the last series' stale marker, a float
	require.True(t, value.IsStaleNaN(stale.f))
	appendCellSamples(t, b, 1, []cellSample{stale})

	mint, maxt := int64(0), 8*h
	ca, cb := allCells(a, mint, maxt), allCells(b, mint, maxt)
	nonEmpty := 0
	for p := range ca {
		require.NotNil(t, ca[p], "partition %d", p)
		require.Len(t, ca[p], 5) // cells of [0, 8h]: 0-2h, ..., 8h-10h
		if ca[p][0].Samples > 0 {
			nonEmpty++
		}
	}
	require.Greater(t, nonEmpty, 10)
	require.Empty(t, differing(ca, cb))

	extra := ss[3]
	extra.t += 1
	appendCellSamples(t, b, 1, []cellSample{extra})
	cb = allCells(b, mint, maxt)
	require.Equal(t, []uint16{PartitionOf(extra.ls)}, differing(ca, cb))
}

// differing lists the partitions whose cells differ (huge slices make
// unreadable failure messages).
func differing(a, b [][]CellDigest) []uint16 {
	var out []uint16
	for p := range a {
		if !slices.Equal(a[p], b[p]) || (a[p] == nil) != (b[p] == nil) {
			out = append(out, uint16(p))
		}
	}
	return out
}

// Cells are valid only where they saw every sample: not for data present
// at start-up, not through the retention cutoff, not for a dropped
// partition.
func TestCellsValidity(t *testing.T) {
	const h = int64(3600 * 1000)
	now := time.UnixMilli(100 * h)
	dir := t.TempDir()
	cfg := Config{Path: dir, Retention: 10 * time.Hour, Now: func() time.Time { return now }}
	db := open(t, cfg)
	ls := labels.FromStrings("__name__", "m")
	p := PartitionOf(ls)
	appendFloats(t, db, ls, pt{95 * h, 1}, pt{99 * h, 2})
	_, ok := db.PartitionCells(p, 95*h, 99*h, nil)
	require.True(t, ok)
	require.NoError(t, db.Close())

	db = open(t, cfg)
	defer func() { _ = db.Close() }()
	_, ok = db.PartitionCells(p, 95*h, 99*h, nil)
	require.False(t, ok, "cells of data loaded at start-up")
	_, ok = db.PartitionCells(p, 99*h, 101*h, nil)
	require.False(t, ok, "the cell of the newest sample at start-up")
	appendFloats(t, db, ls, pt{101 * h, 3})
	cs, ok := db.PartitionCells(p, 100*h, 101*h, nil)
	require.True(t, ok)
	require.Equal(t, uint64(1), cs[0].Samples)

	now = now.Add(104 * time.Hour) // cutoff at 194h
	require.NoError(t, db.applyRetention(context.Background()))
	_, ok = db.PartitionCells(p, 193*h, 195*h, nil)
	require.False(t, ok, "cells through the retention cutoff")
	_, ok = db.PartitionCells(p, 196*h, 197*h, nil)
	require.True(t, ok)

	require.NoError(t, db.DropPartition(context.Background(), p))
	_, ok = db.PartitionCells(p, 196*h, 197*h, nil)
	require.False(t, ok, "cells of a dropped partition")
	_, ok = db.PartitionCells((p+1)%NumPartitions, 196*h, 197*h, nil)
	require.True(t, ok)
}

func TestCellOf(t *testing.T) {
	require.Equal(t, int64(0), cellOf(0))
	require.Equal(t, int64(0), cellOf(CellWidth-1))
	require.Equal(t, int64(1), cellOf(CellWidth))
	require.Equal(t, int64(-1), cellOf(-1))
	require.Equal(t, int64(-1), cellOf(-CellWidth))
	require.Equal(t, int64(-2), cellOf(-CellWidth-1))
}

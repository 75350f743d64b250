package shard

import (
	"context"
	"fmt"
	"testing"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/storage"
	"github.com/prometheus/prometheus/tsdb/chunkenc"
	"github.com/stretchr/testify/require"
)

func TestPartitionSet(t *testing.T) {
	var s PartitionSet
	require.Zero(t, s.Len())
	for _, p := range []uint16{0, 63, 64, 1023} {
		s.Add(p)
	}
	require.Equal(t, 4, s.Len())
	require.True(t, s.Has(63))
	require.False(t, s.Has(62))
	require.False(t, s.Has(NumPartitions)) // out of range is never a member
	require.Equal(t, []uint16{0, 63, 64, 1023}, s.Partitions())
	s.Remove(63)
	require.False(t, s.Has(63))
	require.False(t, s.Full())
	s.AddAll()
	require.True(t, s.Full())
	require.Equal(t, NumPartitions, s.Len())
}

// partitionFixture writes 40 series, each with a distinct "team" label, and
// returns a set holding the partitions of the even-numbered ones.
func partitionFixture(t *testing.T) (*DB, *PartitionSet, map[string]bool) {
	t.Helper()
	db := open(t, Config{})
	t.Cleanup(func() { require.NoError(t, db.Close()) })
	var set PartitionSet
	for i := range 40 {
		ls := labels.FromStrings("__name__", "m", "i", fmt.Sprint(i), fmt.Sprintf("team%d", i), "x")
		appendFloats(t, db, ls, pt{1000, float64(i)}, pt{2000, float64(i)})
		if i%2 == 0 {
			set.Add(PartitionOf(ls))
		}
	}
	in := map[string]bool{}
	for i := range 40 {
		ls := labels.FromStrings("__name__", "m", "i", fmt.Sprint(i), fmt.Sprintf("team%d", i), "x")
		in[fmt.Sprint(i)] = set.Has(PartitionOf(ls))
	}
	return db, &set, in
}

func TestPartitionQuerierFilters(t *testing.T) {
	db, set, in := partitionFixture(t)
	ctx := context.Background()
	m := labels.MustNewMatcher(labels.MatchEqual, "__name__", "m")

	q := db.PartitionQuerier(0, 5000, set)
	defer func() { _ = q.Close() }()
	ss := q.Select(ctx, true, nil, m)
	got := map[string]bool{}
	for ss.Next() {
		got[ss.At().Labels().Get("i")] = true
	}
	require.NoError(t, ss.Err())
	want := map[string]bool{}
	for i, ok := range in {
		if ok {
			want[i] = true
		}
	}
	require.Equal(t, want, got)
	require.Less(t, len(got), 40, "fixture must leave some series outside the set")

	// Label names and values see only series of the set.
	names, _, err := q.LabelNames(ctx, nil)
	require.NoError(t, err)
	for i, ok := range in {
		require.Equal(t, ok, containsStr(names, "team"+i), "label team%s", i)
	}
	vals, _, err := q.LabelValues(ctx, "i", nil)
	require.NoError(t, err)
	require.Len(t, vals, len(want))
	for _, v := range vals {
		require.True(t, want[v])
	}

	// An empty set sees nothing; nil sees everything.
	var empty PartitionSet
	eq := db.PartitionQuerier(0, 5000, &empty)
	names, _, err = eq.LabelNames(ctx, nil)
	require.NoError(t, err)
	require.Empty(t, names)
	require.NoError(t, eq.Close())
	all := db.PartitionQuerier(0, 5000, nil)
	vals, _, err = all.LabelValues(ctx, "i", nil)
	require.NoError(t, err)
	require.Len(t, vals, 40)
	require.NoError(t, all.Close())
}

func containsStr(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}

// TestPartitionChunkQuerierExact checks that chunks handed out raw or
// re-encoded yield exactly the samples the sample querier yields in range,
// including out-of-order data and a range that cuts chunks. By default
// every chunk lies inside the range; with DisableTrimming stored chunks go
// out whole, and clipped to the range they still yield exactly those
// samples.
func TestPartitionChunkQuerierExact(t *testing.T) {
	db := open(t, Config{})
	defer func() { require.NoError(t, db.Close()) }()
	ls := labels.FromStrings("__name__", "c")
	var pts []pt
	for i := range 1000 {
		pts = append(pts, pt{int64(i) * 15000, float64(i)})
	}
	appendFloats(t, db, ls, pts...)
	appendFloats(t, db, labels.FromStrings("__name__", "o"), pt{50000, 1}, pt{10000, 2}, pt{30000, 3}) // out of order
	ms := labels.MustNewMatcher(labels.MatchRegexp, "__name__", "c|o")

	ctx := context.Background()
	for _, whole := range []bool{false, true} {
		for _, r := range [][2]int64{{0, 1 << 40}, {100000, 9000000}, {4005000, 4005000}} {
			var set PartitionSet
			set.AddAll()
			// The hints narrow the querier's range as they do for Select.
			cq := db.PartitionChunkQuerier(r[0]-5000, r[1]+5000, &set)
			cs := cq.Select(ctx, true, &storage.SelectHints{Start: r[0], End: r[1], DisableTrimming: whole}, ms)
			got := map[string][]pt{}
			outside := false
			for cs.Next() {
				s := cs.At()
				it := s.Iterator(nil)
				last := int64(-1 << 62)
				for it.Next() {
					meta := it.At()
					require.Greater(t, meta.MinTime, last, "chunks overlap")
					last = meta.MaxTime
					if meta.MinTime < r[0] || meta.MaxTime > r[1] {
						require.True(t, whole, "chunk [%d, %d] outside the range", meta.MinTime, meta.MaxTime)
						outside = true
					}
					ci := meta.Chunk.Iterator(nil)
					for ci.Next() == chunkenc.ValFloat {
						ts, v := ci.At()
						require.GreaterOrEqual(t, ts, meta.MinTime)
						require.LessOrEqual(t, ts, meta.MaxTime)
						if ts >= r[0] && ts <= r[1] {
							got[s.Labels().String()] = append(got[s.Labels().String()], pt{ts, v})
						}
					}
				}
				require.NoError(t, it.Err())
			}
			require.NoError(t, cs.Err())
			require.NoError(t, cq.Close())
			want := queryFloats(t, db, r[0], r[1], ms)
			require.NotEmpty(t, want)
			require.Equal(t, want, got, "range %v", r)
			if whole && r[0] > 0 {
				require.True(t, outside, "a range cutting chunks must get them whole")
			}
		}
	}
}

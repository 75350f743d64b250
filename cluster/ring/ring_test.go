package ring

import (
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"
)

func members(n int, zones ...string) []Member {
	ms := make([]Member, n)
	for i := range ms {
		ms[i] = Member{Name: fmt.Sprintf("node-%d", i), Addr: fmt.Sprintf("127.0.0.%d:9364", i+1)}
		if len(zones) > 0 {
			ms[i].Zone = zones[i%len(zones)]
		}
	}
	return ms
}

// Every node must compute the same owners from the same inputs, whatever
// order it learned the members in.
func TestSameOwnersEverywhere(t *testing.T) {
	ms := members(5)
	a, err := New(ms, 3, 7)
	require.NoError(t, err)
	rev := make([]Member, len(ms))
	for i := range ms {
		rev[len(ms)-1-i] = ms[i]
	}
	b, err := New(rev, 3, 7)
	require.NoError(t, err)
	for p := range NumPartitions {
		require.Equal(t, a.Owners(uint16(p)), b.Owners(uint16(p)), "partition %d", p)
		owners := a.Owners(uint16(p))
		require.Len(t, owners, 3)
		seen := map[string]bool{}
		for _, o := range owners {
			require.False(t, seen[o.Name], "partition %d has %s twice", p, o.Name)
			seen[o.Name] = true
		}
	}
	require.Equal(t, uint64(7), a.Epoch())
}

// spread returns the min and max number of partitions (any replica) per node.
func spread(t *testing.T, r *Ring) (lo, hi int) {
	lo = NumPartitions * 10
	for _, m := range r.Members() {
		n := len(r.PartitionsOf(m.Name))
		lo, hi = min(lo, n), max(hi, n)
	}
	return lo, hi
}

func TestEvenSpread(t *testing.T) {
	for _, n := range []int{3, 5, 10} {
		r, err := New(members(n), 3, 1)
		require.NoError(t, err)
		lo, hi := spread(t, r)
		ideal := float64(NumPartitions*3) / float64(n)
		t.Logf("%d nodes, RF=3: partitions per node min %d max %d (ideal %.1f, max/min %.2f)", n, lo, hi, ideal, float64(hi)/float64(lo))
		require.LessOrEqual(t, float64(hi), ideal*1.25, "%d nodes", n)
		require.GreaterOrEqual(t, float64(lo), ideal*0.75, "%d nodes", n)
	}
}

func TestRFCappedByMembers(t *testing.T) {
	r, err := New(members(2), 3, 1)
	require.NoError(t, err)
	require.Equal(t, 2, r.RF())
	require.Len(t, r.Owners(0), 2)

	one, err := New(members(1), 3, 1)
	require.NoError(t, err)
	require.Equal(t, 1, one.RF())
	require.Len(t, one.PartitionsOf("node-0"), NumPartitions)
}

func TestZonesDistinct(t *testing.T) {
	r, err := New(members(6, "a", "b", "c"), 3, 1)
	require.NoError(t, err)
	for p := range NumPartitions {
		zones := map[string]bool{}
		for _, o := range r.Owners(uint16(p)) {
			zones[o.Zone] = true
		}
		require.Len(t, zones, 3, "partition %d", p)
	}
}

func TestNilRingOwnsNothing(t *testing.T) {
	var r *Ring
	require.Nil(t, r.Owners(3))
	require.False(t, r.Owns("x", 3))
	require.Zero(t, r.RF())
	_, ok := r.Member("x")
	require.False(t, ok)
}

func TestBadInput(t *testing.T) {
	_, err := New([]Member{{Name: "a"}, {Name: "a"}}, 1, 1)
	require.Error(t, err)
	_, err = New(members(2), 0, 1)
	require.Error(t, err)
}

// A member joining moves only part of the assignment: most partitions keep
// their owners, which bounds the data a join has to stream.
func TestJoinMovesLittle(t *testing.T) {
	a, err := New(members(4), 3, 1)
	require.NoError(t, err)
	b, err := New(members(5), 3, 2)
	require.NoError(t, err)
	kept := 0
	for p := range NumPartitions {
		for _, o := range b.Owners(uint16(p)) {
			if a.Owns(o.Name, uint16(p)) {
				kept++
			}
		}
	}
	frac := float64(kept) / float64(NumPartitions*3)
	t.Logf("4 -> 5 nodes: %.1f%% of replicas keep their owner (ideal 80%%)", 100*frac)
	require.Greater(t, frac, 0.5)
}

func TestAssignedRingWritesReachSettledAndTarget(t *testing.T) {
	old, err := New(members(4), 3, 1)
	require.NoError(t, err)
	cur, err := New(members(5), 3, 2)
	require.NoError(t, err)
	parts := make([]Partition, NumPartitions)
	names := func(ms []Member) []string {
		out := make([]string, len(ms))
		for i, m := range ms {
			out[i] = m.Name
		}
		return out
	}
	for p := range uint16(NumPartitions) {
		parts[p] = Partition{Settled: names(old.Owners(p)), Target: names(cur.Owners(p)), Since: 2}
	}
	r, err := NewAssigned(members(5), 3, 2, parts)
	require.NoError(t, err)
	require.Equal(t, 3, r.RF())
	moving := 0
	for p := range uint16(NumPartitions) {
		require.Subset(t, r.WriteOwnerIndexes(p), r.OwnerIndexes(p))
		require.Subset(t, r.WriteOwnerIndexes(p), r.TargetIndexes(p))
		require.Equal(t, old.Owners(p), r.Owners(p), "reads stay on the settled owners")
		if r.Moving(p) {
			moving++
		}
	}
	require.Equal(t, moving, r.MovingCount())
	require.Equal(t, len(r.PartitionsToFetch("node-4")), len(r.TargetPartitionsOf("node-4")))
	require.Empty(t, r.PartitionsOf("node-4"))
	require.False(t, r.MayDrop("node-4", r.TargetPartitionsOf("node-4")[0]))
	_, err = NewAssigned(members(2), 3, 1, []Partition{{}})
	require.Error(t, err)
}

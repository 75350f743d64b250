// Package ring maps Kiln's fixed partitions to the nodes that own them.
//
// A Ring is an immutable value computed from the member list, the
// replication factor and the assignment epoch that Raft holds. It is a pure
// function of those inputs, so every node that applied the same Raft entry
// computes exactly the same owners. buraksezer/consistent spreads primaries
// with bounded load; replicas follow the primary around the ring of member
// names, skipping members of a zone already used when zones are set.
package ring

import (
	"cmp"
	"fmt"
	"slices"

	"github.com/buraksezer/consistent"
	"github.com/cespare/xxhash/v2"

	"github.com/kilnhq/kiln/shard"
)

// NumPartitions is the storage's partition count: the unit of ownership.
const NumPartitions = shard.NumPartitions

// Member is one node as the ring sees it.
type Member struct {
	// Name is the node's unique, stable name (gossip name).
	Name string `json:"name"`
	// Addr is the node's HTTP address (API and internal RPC).
	Addr string `json:"addr"`
	// Zone is an optional failure domain; replicas prefer distinct zones.
	Zone string `json:"zone,omitempty"`
}

func (m Member) String() string { return m.Name }

// Ring is an assignment of partitions to owners. The zero of *Ring (nil) is
// the ring of a node that has not learned an assignment yet: every method is
// safe on it and it owns nothing.
type Ring struct {
	epoch   uint64
	rf      int
	members []Member  // sorted by name
	owners  [][]int32 // partition -> indexes into members, preferred first
}

type hasher struct{}

func (hasher) Sum64(b []byte) uint64 { return xxhash.Sum64(b) }

// New computes the ring for members (any order, names unique) at epoch with
// replication factor rf, capped by the member count.
func New(members []Member, rf int, epoch uint64) (*Ring, error) {
	ms := slices.Clone(members)
	slices.SortFunc(ms, func(a, b Member) int { return cmp.Compare(a.Name, b.Name) })
	for i := 1; i < len(ms); i++ {
		if ms[i].Name == ms[i-1].Name {
			return nil, fmt.Errorf("ring: duplicate member %q", ms[i].Name)
		}
	}
	if rf < 1 {
		return nil, fmt.Errorf("ring: replication factor must be at least 1, got %d", rf)
	}
	if len(ms) > NumPartitions {
		return nil, fmt.Errorf("ring: %d members exceed the %d partitions", len(ms), NumPartitions)
	}
	r := &Ring{epoch: epoch, rf: min(rf, len(ms)), members: ms}
	if len(ms) == 0 {
		return r, nil
	}
	idx := make(map[string]int32, len(ms))
	cm := make([]consistent.Member, len(ms))
	for i, m := range ms {
		idx[m.Name] = int32(i)
		cm[i] = m
	}
	c := consistent.New(cm, consistent.Config{
		Hasher:            hasher{},
		PartitionCount:    NumPartitions,
		ReplicationFactor: 64, // virtual nodes per member
		Load:              1.1,
	})
	zoned := false
	for _, m := range ms {
		zoned = zoned || m.Zone != ""
	}
	r.owners = make([][]int32, NumPartitions)
	flat := make([]int32, 0, NumPartitions*r.rf)
	for p := range NumPartitions {
		// All members in ring order from the primary: the first rf are the
		// owners, or with zones the first of each zone, then the rest.
		all, err := c.GetClosestNForPartition(p, len(ms))
		if err != nil {
			return nil, fmt.Errorf("ring: partition %d: %w", p, err)
		}
		start := len(flat)
		if zoned {
			flat = pickZones(flat, all, idx, r.rf)
		} else {
			for _, m := range all[:r.rf] {
				flat = append(flat, idx[m.String()])
			}
		}
		r.owners[p] = flat[start:len(flat):len(flat)]
	}
	return r, nil
}

// pickZones appends rf owners from candidates (ring order), one per zone
// first, then filling from the remaining candidates in order.
func pickZones(dst []int32, candidates []consistent.Member, idx map[string]int32, rf int) []int32 {
	start := len(dst)
	used := map[string]bool{}
	taken := make([]bool, len(candidates))
	for i, c := range candidates {
		if len(dst)-start == rf {
			return dst
		}
		z := c.(Member).Zone
		if !used[z] {
			used[z] = true
			taken[i] = true
			dst = append(dst, idx[c.String()])
		}
	}
	for i, c := range candidates {
		if len(dst)-start == rf {
			break
		}
		if !taken[i] {
			dst = append(dst, idx[c.String()])
		}
	}
	return dst
}

// Epoch is the assignment epoch the ring was computed for.
func (r *Ring) Epoch() uint64 {
	if r == nil {
		return 0
	}
	return r.epoch
}

// RF is the effective replication factor (capped by the member count).
func (r *Ring) RF() int {
	if r == nil {
		return 0
	}
	return r.rf
}

// Members returns the members sorted by name. The slice must not be changed.
func (r *Ring) Members() []Member {
	if r == nil {
		return nil
	}
	return r.members
}

// Member returns the member named name.
func (r *Ring) Member(name string) (Member, bool) {
	if r == nil {
		return Member{}, false
	}
	i, ok := slices.BinarySearchFunc(r.members, name, func(m Member, n string) int { return cmp.Compare(m.Name, n) })
	if !ok {
		return Member{}, false
	}
	return r.members[i], true
}

// Owners returns the owners of partition p, preferred (primary) first. The
// result is freshly allocated.
func (r *Ring) Owners(p uint16) []Member {
	if r == nil || len(r.owners) == 0 {
		return nil
	}
	o := r.owners[p]
	out := make([]Member, len(o))
	for i, j := range o {
		out[i] = r.members[j]
	}
	return out
}

// OwnerIndexes returns the owners of partition p as indexes into Members,
// without allocating. The slice must not be changed.
func (r *Ring) OwnerIndexes(p uint16) []int32 {
	if r == nil || len(r.owners) == 0 {
		return nil
	}
	return r.owners[p]
}

// Owns reports whether the member named name owns partition p.
func (r *Ring) Owns(name string, p uint16) bool {
	for _, j := range r.OwnerIndexes(p) {
		if r.members[j].Name == name {
			return true
		}
	}
	return false
}

// PartitionsOf returns the partitions member name owns (as any replica).
func (r *Ring) PartitionsOf(name string) []uint16 {
	var out []uint16
	for p := range len(r.ownersOrNil()) {
		if r.Owns(name, uint16(p)) {
			out = append(out, uint16(p))
		}
	}
	return out
}

func (r *Ring) ownersOrNil() [][]int32 {
	if r == nil {
		return nil
	}
	return r.owners
}

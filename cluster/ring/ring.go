// Package ring maps Kiln's fixed partitions to the nodes that own them.
//
// New computes a placement: a pure function of the member list, the
// replication factor and the assignment epoch, so every node computes
// exactly the same owners. buraksezer/consistent spreads primaries with
// bounded load; replicas follow the primary around the ring of member
// names, skipping members of a zone already used when zones are set.
//
// A placement is where partitions should be (the target). While partitions
// move, the nodes that hold a partition's complete data (the settled owners)
// differ from the target; NewAssigned builds the Ring the cluster serves
// from both, as the Raft state records them. Reads use the settled owners
// (OwnerIndexes), writes go to settled ∪ target (WriteOwnerIndexes), so a
// new owner receives every write from the moment it is a target and never
// answers a read before its copy is complete.
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
	owners  [][]int32 // partition -> settled owners as indexes into members, preferred first
	// Move state; for a ring from New, target and write are owners.
	target [][]int32 // partition -> target owners
	write  [][]int32 // partition -> settled, then target owners not settled
	ready  [][]int32 // partition -> target owners whose copy is complete, not settled yet
	since  []uint64  // partition -> epoch its target last changed; nil = epoch
	moving int       // partitions whose settled owners differ from the target
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
	r.target, r.write = r.owners, r.owners
	return r, nil
}

// Partition is one partition's assignment by member name, as Raft holds it.
type Partition struct {
	Settled []string // complete copies, read from; preferred first
	Target  []string // where the placement wants the partition
	Ready   []string // target owners whose copy is complete, not settled yet
	Since   uint64   // epoch at which Target last changed
}

// NewAssigned builds the ring for an assignment in motion: members are every
// node named in parts (current members and removed ones still holding
// settled copies), parts has NumPartitions entries (or none: nothing
// assigned yet). The replication factor is rf capped by the largest target.
func NewAssigned(members []Member, rf int, epoch uint64, parts []Partition) (*Ring, error) {
	ms := slices.Clone(members)
	slices.SortFunc(ms, func(a, b Member) int { return cmp.Compare(a.Name, b.Name) })
	idx := make(map[string]int32, len(ms))
	for i, m := range ms {
		if _, dup := idx[m.Name]; dup {
			return nil, fmt.Errorf("ring: duplicate member %q", m.Name)
		}
		idx[m.Name] = int32(i)
	}
	if len(parts) != 0 && len(parts) != NumPartitions {
		return nil, fmt.Errorf("ring: %d partitions, want %d", len(parts), NumPartitions)
	}
	r := &Ring{epoch: epoch, members: ms}
	if len(parts) == 0 {
		return r, nil
	}
	conv := func(dst []int32, names []string, p int) ([]int32, []int32, error) {
		start := len(dst)
		for _, n := range names {
			j, ok := idx[n]
			if !ok {
				return nil, nil, fmt.Errorf("ring: partition %d names unknown member %q", p, n)
			}
			dst = append(dst, j)
		}
		return dst, dst[start:len(dst):len(dst)], nil
	}
	r.owners = make([][]int32, NumPartitions)
	r.target = make([][]int32, NumPartitions)
	r.write = make([][]int32, NumPartitions)
	r.ready = make([][]int32, NumPartitions)
	r.since = make([]uint64, NumPartitions)
	flat := make([]int32, 0, NumPartitions*len(parts[0].Target)*2)
	var err error
	for p, pa := range parts {
		r.since[p] = pa.Since
		r.rf = max(r.rf, len(pa.Target))
		if flat, r.owners[p], err = conv(flat, pa.Settled, p); err != nil {
			return nil, err
		}
		if slices.Equal(pa.Settled, pa.Target) {
			r.target[p], r.write[p] = r.owners[p], r.owners[p]
		} else {
			r.moving++
			if flat, r.target[p], err = conv(flat, pa.Target, p); err != nil {
				return nil, err
			}
			start := len(flat)
			flat = append(flat, r.owners[p]...)
			for _, j := range r.target[p] {
				if !slices.Contains(r.owners[p], j) {
					flat = append(flat, j)
				}
			}
			r.write[p] = flat[start:len(flat):len(flat)]
		}
		if len(pa.Ready) > 0 {
			if flat, r.ready[p], err = conv(flat, pa.Ready, p); err != nil {
				return nil, err
			}
		}
	}
	r.rf = min(max(rf, 1), r.rf)
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

// Owners returns the settled (read) owners of partition p, preferred
// (primary) first. The result is freshly allocated.
func (r *Ring) Owners(p uint16) []Member {
	return r.toMembers(r.OwnerIndexes(p))
}

// TargetOwners returns where the placement wants partition p.
func (r *Ring) TargetOwners(p uint16) []Member {
	return r.toMembers(r.TargetIndexes(p))
}

func (r *Ring) toMembers(o []int32) []Member {
	if o == nil {
		return nil
	}
	out := make([]Member, len(o))
	for i, j := range o {
		out[i] = r.members[j]
	}
	return out
}

// OwnerIndexes returns the settled owners of partition p as indexes into
// Members, without allocating: the nodes holding the partition's complete
// data, which reads use. The slice must not be changed.
func (r *Ring) OwnerIndexes(p uint16) []int32 {
	if r == nil || len(r.owners) == 0 {
		return nil
	}
	return r.owners[p]
}

// TargetIndexes returns the target owners of partition p (where it is
// moving to; the settled owners when it is not moving).
func (r *Ring) TargetIndexes(p uint16) []int32 {
	if r == nil || len(r.target) == 0 {
		return nil
	}
	return r.target[p]
}

// WriteOwnerIndexes returns settled ∪ target owners of partition p, the
// settled first: writes go to all of them, so a new owner misses no write
// made after it became a target. The slice must not be changed.
func (r *Ring) WriteOwnerIndexes(p uint16) []int32 {
	if r == nil || len(r.write) == 0 {
		return nil
	}
	return r.write[p]
}

// Moving reports whether partition p's settled owners differ from its target.
func (r *Ring) Moving(p uint16) bool {
	return r != nil && len(r.target) > 0 && !slices.Equal(r.owners[p], r.target[p])
}

// MovingCount is the number of moving partitions.
func (r *Ring) MovingCount() int {
	if r == nil {
		return 0
	}
	return r.moving
}

// TargetEpoch is the epoch at which partition p's target last changed: a
// copy fetched at an earlier epoch may miss writes and is not accepted.
func (r *Ring) TargetEpoch(p uint16) uint64 {
	if r == nil {
		return 0
	}
	if r.since == nil {
		return r.epoch
	}
	return r.since[p]
}

func (r *Ring) index(name string) int32 {
	if r == nil {
		return -1
	}
	i, ok := slices.BinarySearchFunc(r.members, name, func(m Member, n string) int { return cmp.Compare(m.Name, n) })
	if !ok {
		return -1
	}
	return int32(i)
}

// Owns reports whether the member named name is a settled owner of p.
func (r *Ring) Owns(name string, p uint16) bool {
	j := r.index(name)
	return j >= 0 && slices.Contains(r.OwnerIndexes(p), j)
}

// IsTarget reports whether the member named name is a target owner of p.
func (r *Ring) IsTarget(name string, p uint16) bool {
	j := r.index(name)
	return j >= 0 && slices.Contains(r.TargetIndexes(p), j)
}

// IsReady reports whether name reported its copy of p complete and waits
// for the rest of the target to settle.
func (r *Ring) IsReady(name string, p uint16) bool {
	j := r.index(name)
	return j >= 0 && len(r.ready) > 0 && slices.Contains(r.ready[p], j)
}

// PartitionsOf returns the partitions member name is a settled owner of
// (as any replica).
func (r *Ring) PartitionsOf(name string) []uint16 {
	return r.partitionsWhere(name, func(p uint16, j int32) bool { return slices.Contains(r.owners[p], j) })
}

// TargetPartitionsOf returns the partitions member name is a target owner of.
func (r *Ring) TargetPartitionsOf(name string) []uint16 {
	return r.partitionsWhere(name, func(p uint16, j int32) bool { return slices.Contains(r.target[p], j) })
}

// PartitionsToFetch returns the partitions name must copy from a settled
// owner: in its target, not settled, not reported ready.
func (r *Ring) PartitionsToFetch(name string) []uint16 {
	return r.partitionsWhere(name, func(p uint16, j int32) bool {
		return slices.Contains(r.target[p], j) && !slices.Contains(r.owners[p], j) &&
			(len(r.ready) == 0 || !slices.Contains(r.ready[p], j))
	})
}

// MayDrop reports whether name may delete its data of partition p: it is
// neither a settled nor a target owner.
func (r *Ring) MayDrop(name string, p uint16) bool {
	if r == nil || len(r.owners) == 0 {
		return false
	}
	j := r.index(name)
	return j < 0 || !slices.Contains(r.write[p], j)
}

func (r *Ring) partitionsWhere(name string, f func(p uint16, j int32) bool) []uint16 {
	j := r.index(name)
	if j < 0 || len(r.owners) == 0 {
		return nil
	}
	var out []uint16
	for p := range uint16(NumPartitions) {
		if f(p, j) {
			out = append(out, p)
		}
	}
	return out
}

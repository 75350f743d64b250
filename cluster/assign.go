package cluster

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/kilnhq/kiln/cluster/ring"
)

// Assignment is every partition's settled and target owners, indexed by
// partition. It is empty until the cluster knows a replication factor and a
// member.
type Assignment []ring.Partition

// assignmentJSON is the compact snapshot form: owners are indexes into
// Nodes, and a partition's target is written only while it moves (it is
// its settled owners otherwise). 1024 partitions × RF 3 take about 8 KiB.
type assignmentJSON struct {
	Nodes   []string         `json:"nodes"`
	Settled [][]int          `json:"settled"`
	Since   []uint64         `json:"since"`
	Target  map[string][]int `json:"target,omitempty"` // partition (decimal) -> target, moving partitions only
	Ready   map[string][]int `json:"ready,omitempty"`
}

// MarshalJSON implements json.Marshaler.
func (a Assignment) MarshalJSON() ([]byte, error) {
	if len(a) == 0 {
		return []byte("null"), nil
	}
	idx := map[string]int{}
	var j assignmentJSON
	enc := func(names []string) []int {
		out := make([]int, len(names))
		for i, n := range names {
			k, ok := idx[n]
			if !ok {
				k = len(j.Nodes)
				idx[n] = k
				j.Nodes = append(j.Nodes, n)
			}
			out[i] = k
		}
		return out
	}
	j.Settled = make([][]int, len(a))
	j.Since = make([]uint64, len(a))
	for p, pa := range a {
		j.Settled[p] = enc(pa.Settled)
		j.Since[p] = pa.Since
		key := strconv.Itoa(p)
		if !slices.Equal(pa.Settled, pa.Target) {
			if j.Target == nil {
				j.Target = map[string][]int{}
			}
			j.Target[key] = enc(pa.Target)
		}
		if len(pa.Ready) > 0 {
			if j.Ready == nil {
				j.Ready = map[string][]int{}
			}
			j.Ready[key] = enc(pa.Ready)
		}
	}
	return json.Marshal(j)
}

// UnmarshalJSON implements json.Unmarshaler.
func (a *Assignment) UnmarshalJSON(b []byte) error {
	if string(b) == "null" {
		*a = nil
		return nil
	}
	var j assignmentJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return err
	}
	if len(j.Settled) != ring.NumPartitions || len(j.Since) != ring.NumPartitions {
		return fmt.Errorf("assignment of %d partitions, want %d", len(j.Settled), ring.NumPartitions)
	}
	dec := func(ks []int) ([]string, error) {
		if len(ks) == 0 {
			return nil, nil
		}
		out := make([]string, len(ks))
		for i, k := range ks {
			if k < 0 || k >= len(j.Nodes) {
				return nil, fmt.Errorf("assignment names node %d of %d", k, len(j.Nodes))
			}
			out[i] = j.Nodes[k]
		}
		return out, nil
	}
	out := make(Assignment, ring.NumPartitions)
	var err error
	for p := range out {
		pa := &out[p]
		pa.Since = j.Since[p]
		if pa.Settled, err = dec(j.Settled[p]); err != nil {
			return err
		}
		pa.Target = pa.Settled
		key := strconv.Itoa(p)
		if t, ok := j.Target[key]; ok {
			if pa.Target, err = dec(t); err != nil {
				return err
			}
		}
		if pa.Ready, err = dec(j.Ready[key]); err != nil {
			return err
		}
	}
	*a = out
	return nil
}

type removePayload struct {
	Names []string `json:"names"`
}

type leavePayload struct {
	Node string `json:"node"`
}

// readyPayload reports that Node holds complete copies of Partitions,
// fetched once every alive member had applied Epoch.
type readyPayload struct {
	Node       string   `json:"node"`
	Epoch      uint64   `json:"epoch"`
	Partitions []uint16 `json:"partitions"`
}

// ErrLastMember refuses a leave that would leave no member to own the data.
var ErrLastMember = errors.New("cluster: the last member cannot leave")

func memberIndex(ms []ring.Member, name string) (int, bool) {
	return slices.BinarySearchFunc(ms, name, func(a ring.Member, n string) int { return strings.Compare(a.Name, n) })
}

func applyRemoveMembers(s *State, payload json.RawMessage) error {
	var p removePayload
	if err := json.Unmarshal(payload, &p); err != nil {
		return err
	}
	ensureAssigned(s)
	changed := false
	for _, name := range p.Names {
		i, ok := memberIndex(s.Members, name)
		if !ok {
			continue // removed already: harmless
		}
		if len(s.Members) == 1 {
			return errors.New("cannot remove the last member")
		}
		m := s.Members[i]
		s.Members = slices.Delete(s.Members, i, i+1)
		s.Leaving = slices.DeleteFunc(s.Leaving, func(n string) bool { return n == name })
		if j, found := memberIndex(s.Former, name); !found {
			s.Former = slices.Insert(s.Former, j, m)
		}
		changed = true
	}
	if changed {
		s.Epoch++
		// A removed node is no source: what it reported ready is void.
		stripReady(s, p.Names)
		retarget(s)
	}
	return nil
}

func applyLeave(s *State, payload json.RawMessage) error {
	var p leavePayload
	if err := json.Unmarshal(payload, &p); err != nil {
		return err
	}
	if _, ok := memberIndex(s.Members, p.Node); !ok {
		return fmt.Errorf("%q is not a member", p.Node)
	}
	i, leaving := slices.BinarySearch(s.Leaving, p.Node)
	if leaving {
		return nil
	}
	if len(s.Members)-len(s.Leaving) <= 1 {
		return ErrLastMember
	}
	ensureAssigned(s)
	s.Leaving = slices.Insert(s.Leaving, i, p.Node)
	s.Epoch++
	retarget(s)
	return nil
}

func applyPartitionReady(s *State, payload json.RawMessage) error {
	var p readyPayload
	if err := json.Unmarshal(payload, &p); err != nil {
		return err
	}
	for _, part := range p.Partitions {
		if int(part) >= ring.NumPartitions {
			return fmt.Errorf("partition %d out of range", part)
		}
	}
	if len(s.Partitions) == 0 {
		return nil
	}
	var parts Assignment
	var sources map[string]bool
	for _, part := range p.Partitions {
		pa := s.Partitions[part]
		if parts != nil {
			pa = parts[part]
		}
		// Idempotent: a repeated, late or stale report changes nothing.
		if p.Epoch < pa.Since || !slices.Contains(pa.Target, p.Node) ||
			slices.Contains(pa.Settled, p.Node) || slices.Contains(pa.Ready, p.Node) {
			continue
		}
		if parts == nil {
			parts = slices.Clone(s.Partitions)
			sources = sourceSet(s)
		}
		pa.Ready = append(slices.Clip(pa.Ready), p.Node)
		settle(&pa, sources)
		parts[part] = pa
	}
	if parts != nil {
		s.Partitions = parts
		gcFormer(s)
	}
	return nil
}

// ensureAssigned initialises the assignment from the current members: with
// nothing assigned yet (a new cluster, or state from before assignments)
// the placement is settled at once.
func ensureAssigned(s *State) {
	if len(s.Partitions) == 0 {
		retarget(s)
	}
}

// retarget recomputes every partition's target from the members that are
// not leaving, keeps the ready reports still valid, and settles what can be.
func retarget(s *State) {
	active := make([]ring.Member, 0, len(s.Members))
	for _, m := range s.Members {
		if _, leaving := slices.BinarySearch(s.Leaving, m.Name); !leaving {
			active = append(active, m)
		}
	}
	if s.ReplicationFactor < 1 || len(active) == 0 {
		return
	}
	pl, err := placement(active, s.ReplicationFactor)
	if err != nil {
		return // cannot happen for sorted unique names; the old target stays
	}
	fresh := len(s.Partitions) == 0
	parts := make(Assignment, ring.NumPartitions)
	if !fresh {
		copy(parts, s.Partitions)
	}
	sources := sourceSet(s)
	for p := range parts {
		t := pl[p]
		pa := &parts[p]
		if fresh {
			*pa = ring.Partition{Settled: t, Target: t, Since: s.Epoch}
			continue
		}
		if !slices.Equal(t, pa.Target) {
			pa.Target, pa.Since = t, s.Epoch
			// A ready owner still in the target kept receiving every write.
			pa.Ready = slices.DeleteFunc(slices.Clone(pa.Ready), func(n string) bool { return !slices.Contains(t, n) })
			if len(pa.Ready) == 0 {
				pa.Ready = nil
			}
		}
		settle(pa, sources)
	}
	s.Partitions = parts
	gcFormer(s)
}

// settle makes the target the settled owners once every target owner is
// settled or ready. A partition none of whose settled owners is a member
// any more (all removed: its data is lost) settles at once, as in a new
// cluster: there is nothing to wait for.
func settle(pa *ring.Partition, sources map[string]bool) {
	if slices.Equal(pa.Settled, pa.Target) {
		pa.Ready = nil
		return
	}
	if !slices.ContainsFunc(pa.Settled, func(n string) bool { return sources[n] }) {
		pa.Settled, pa.Ready = pa.Target, nil
		return
	}
	for _, n := range pa.Target {
		if !slices.Contains(pa.Settled, n) && !slices.Contains(pa.Ready, n) {
			return
		}
	}
	pa.Settled, pa.Ready = pa.Target, nil
}

// sourceSet is the members a partition can be fetched from (leaving ones
// included).
func sourceSet(s *State) map[string]bool {
	out := make(map[string]bool, len(s.Members))
	for _, m := range s.Members {
		out[m.Name] = true
	}
	return out
}

// stripReady removes names from every ready list.
func stripReady(s *State, names []string) {
	if len(s.Partitions) == 0 {
		return
	}
	var parts Assignment
	for p, pa := range s.Partitions {
		if !slices.ContainsFunc(pa.Ready, func(n string) bool { return slices.Contains(names, n) }) {
			continue
		}
		if parts == nil {
			parts = slices.Clone(s.Partitions)
		}
		parts[p].Ready = slices.DeleteFunc(slices.Clone(pa.Ready), func(n string) bool { return slices.Contains(names, n) })
	}
	if parts != nil {
		s.Partitions = parts
	}
}

// forget drops every trace of name from the settled and ready lists: a
// removed node that rejoins holds stale copies and fetches again.
func forget(s *State, name string) {
	j, found := memberIndex(s.Former, name)
	if !found {
		return
	}
	s.Former = slices.Delete(s.Former, j, j+1)
	stripReady(s, []string{name})
	var parts Assignment
	for p, pa := range s.Partitions {
		if !slices.Contains(pa.Settled, name) {
			continue
		}
		if parts == nil {
			parts = slices.Clone(s.Partitions)
		}
		settled := slices.DeleteFunc(slices.Clone(pa.Settled), func(n string) bool { return n == name })
		if len(settled) == 0 {
			settled = pa.Target // nothing else held it
		}
		parts[p].Settled = settled
	}
	if parts != nil {
		s.Partitions = parts
	}
}

// gcFormer drops removed members no settled list names any more.
func gcFormer(s *State) {
	if len(s.Former) == 0 {
		return
	}
	used := map[string]bool{}
	for _, pa := range s.Partitions {
		for _, n := range pa.Settled {
			used[n] = true
		}
	}
	s.Former = slices.DeleteFunc(s.Former, func(m ring.Member) bool { return !used[m.Name] })
	if len(s.Former) == 0 {
		s.Former = nil
	}
}

// nodes is every member the assignment names: members and former ones.
func (s *State) nodes() []ring.Member {
	out := make([]ring.Member, 0, len(s.Members)+len(s.Former))
	out = append(out, s.Members...)
	out = append(out, s.Former...)
	return out
}

// placement computes the target owners (names, preferred first) of every
// partition. The last result is cached: ready reports and address updates
// do not move the placement, and ring.New costs milliseconds.
func placement(active []ring.Member, rf int) ([][]string, error) {
	var key strings.Builder
	key.WriteString(strconv.Itoa(rf))
	for _, m := range active {
		key.WriteString("\x00" + m.Name + "\x01" + m.Zone)
	}
	placementCache.Lock()
	defer placementCache.Unlock()
	if placementCache.key == key.String() {
		return placementCache.owners, nil
	}
	r, err := ring.New(active, rf, 0)
	if err != nil {
		return nil, err
	}
	owners := make([][]string, ring.NumPartitions)
	names := make([]string, len(r.Members()))
	for i, m := range r.Members() {
		names[i] = m.Name
	}
	for p := range owners {
		idx := r.OwnerIndexes(uint16(p))
		o := make([]string, len(idx))
		for i, j := range idx {
			o[i] = names[j]
		}
		owners[p] = o
	}
	placementCache.key, placementCache.owners = key.String(), owners
	return owners, nil
}

var placementCache struct {
	sync.Mutex
	key    string
	owners [][]string // shared by states: never changed
}

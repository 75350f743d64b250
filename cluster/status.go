package cluster

import (
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/hashicorp/raft"

	"github.com/kilnhq/kiln/cluster/ring"
)

// Status is this node's view of the cluster, for GET /api/v1/status/cluster.
type Status struct {
	Self                      string       `json:"self"`
	ClusterID                 string       `json:"cluster_id"`
	Leader                    LeaderStatus `json:"leader"`
	Term                      uint64       `json:"term"`
	Epoch                     uint64       `json:"epoch"`
	ReplicationFactor         int          `json:"replication_factor"`
	UnderReplicatedPartitions int          `json:"under_replicated_partitions"` // alive settled owners < RF
	MovingPartitions          int          `json:"moving_partitions"`           // settled owners != target
	// BytesMoved is what this node fetched since it started; MoveETASeconds
	// estimates its remaining fetches from their average duration (0 when
	// nothing is left or nothing was measured yet).
	BytesMoved     int64          `json:"bytes_moved"`
	MoveETASeconds float64        `json:"move_eta_seconds"`
	Members        []MemberStatus `json:"members"`
}

// LeaderStatus names the Raft leader; empty when none is known.
type LeaderStatus struct {
	Name     string `json:"name"`
	RaftAddr string `json:"raft_addr"`
}

// MemberStatus is one member as gossip, Raft and the ring see it.
type MemberStatus struct {
	Name        string `json:"name"`
	APIAddr     string `json:"api_addr"`
	GossipAddr  string `json:"gossip_addr"`
	RaftAddr    string `json:"raft_addr"`
	Zone        string `json:"zone"`
	GossipState string `json:"gossip_state"` // alive, suspect, dead, left, unknown
	RaftRole    string `json:"raft_role"`    // leader, voter, nonvoter, none
	InRing      bool   `json:"in_ring"`
	Leaving     bool   `json:"leaving,omitempty"` // handing its partitions over
	Removed     bool   `json:"removed,omitempty"` // removed, still holds settled copies
	Partitions  int    `json:"partitions"`        // partitions settled here (as any replica)
	// PartitionsSettled and PartitionsTarget count the partitions the
	// member holds completely and those the placement wants it to hold.
	PartitionsSettled int `json:"partitions_settled"`
	PartitionsTarget  int `json:"partitions_target"`
}

// Status reports the cluster as this node sees it. It reads local state
// only and never waits on Raft.
func (c *Cluster) Status() Status {
	st := c.fsm.State()
	rg := c.Ring()
	s := Status{
		Self:              c.cfg.NodeName,
		ClusterID:         st.ClusterID,
		Epoch:             rg.Epoch(),
		ReplicationFactor: st.ReplicationFactor,
		MovingPartitions:  rg.MovingCount(),
		BytesMoved:        c.bytesMoved.Load(),
		MoveETASeconds:    time.Duration(c.moveETA.Load()).Seconds(),
	}
	byName := map[string]*MemberStatus{}
	get := func(name string) *MemberStatus {
		m, ok := byName[name]
		if !ok {
			m = &MemberStatus{Name: name, GossipState: "unknown", RaftRole: "none"}
			byName[name] = m
		}
		return m
	}
	for _, p := range c.gossip.peerMap() {
		m := get(p.Name)
		m.GossipAddr, m.GossipState = p.GossipAddr, stateName(p.State)
		m.APIAddr, m.RaftAddr, m.Zone = p.Meta.APIAddr, p.Meta.RaftAddr, p.Meta.Zone
	}
	if c.ml != nil {
		for _, n := range c.ml.Members() { // suspicion is not an event: ask memberlist
			if n.State == memberlist.StateSuspect {
				get(n.Name).GossipState = "suspect"
			}
		}
	}
	if r := c.raft.Load(); r != nil {
		s.Term = r.CurrentTerm()
		addr, id := r.LeaderWithID()
		s.Leader = LeaderStatus{Name: string(id), RaftAddr: string(addr)}
		for _, srv := range r.GetConfiguration().Configuration().Servers { // served from memory
			m := get(string(srv.ID))
			m.RaftRole = "nonvoter"
			if srv.Suffrage == raft.Voter {
				m.RaftRole = "voter"
			}
			if srv.ID == id {
				m.RaftRole = "leader"
			}
			if m.RaftAddr == "" {
				m.RaftAddr = string(srv.Address)
			}
		}
	}
	members := rg.Members()
	counts := make([]int, len(members))
	targets := make([]int, len(members))
	for _, rm := range members {
		m := get(rm.Name)
		m.InRing = true
		_, m.Leaving = slices.BinarySearch(st.Leaving, rm.Name)
		_, m.Removed = memberIndex(st.Former, rm.Name)
		if m.APIAddr == "" {
			m.APIAddr, m.Zone = rm.Addr, rm.Zone
		}
	}
	if len(members) > 0 {
		alive := make([]bool, len(members))
		for i, rm := range members {
			alive[i] = c.Alive(rm.Name)
		}
		for p := range ring.NumPartitions {
			n := 0
			for _, j := range rg.OwnerIndexes(uint16(p)) {
				counts[j]++
				if alive[j] {
					n++
				}
			}
			for _, j := range rg.TargetIndexes(uint16(p)) {
				targets[j]++
			}
			if n < rg.RF() {
				s.UnderReplicatedPartitions++
			}
		}
		for i, rm := range members {
			m := byName[rm.Name]
			m.Partitions, m.PartitionsSettled, m.PartitionsTarget = counts[i], counts[i], targets[i]
		}
	}
	for _, m := range byName {
		s.Members = append(s.Members, *m)
	}
	slices.SortFunc(s.Members, func(a, b MemberStatus) int { return strings.Compare(a.Name, b.Name) })
	return s
}

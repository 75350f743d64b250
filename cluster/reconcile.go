package cluster

import (
	"slices"
	"strings"

	"github.com/hashicorp/memberlist"
	"github.com/hashicorp/raft"

	"github.com/kilnhq/kiln/cluster/ring"
)

// Voter targets: three voters survive one failure; from seven members on,
// five survive two.
const (
	smallVoters    = 3
	largeVoters    = 5
	largeThreshold = 7
)

func voterTarget(members int) int {
	t := smallVoters
	if members >= largeThreshold {
		t = largeVoters
	}
	return min(t, members)
}

// reconcile runs on the leader only: it initialises the state once, adds
// alive gossip members to the ring, and keeps every ring member in the Raft
// configuration with a healthy set of voters. Each Raft change is committed
// before the next starts (Raft allows one configuration change at a time).
func (c *Cluster) reconcile(r *raft.Raft) {
	st := c.fsm.State()
	if st.ClusterID == "" {
		if !c.propose(r, "init", CmdInit, initPayload{ClusterID: newClusterID(), ReplicationFactor: c.cfg.ReplicationFactor}) {
			return
		}
		st = c.fsm.State()
		c.logger.Info("cluster initialised", "cluster_id", st.ClusterID, "replication_factor", st.ReplicationFactor)
	}
	peers := c.gossip.peerMap()

	// 1. The ring: every alive gossip member, with its current address.
	var ups []ring.Member
	added := 0
	for _, p := range peers {
		if !p.alive() || p.MetaErr != nil {
			continue
		}
		want := ring.Member{Name: p.Name, Addr: p.Meta.APIAddr, Zone: p.Meta.Zone}
		i, found := slices.BinarySearchFunc(st.Members, p.Name, func(m ring.Member, n string) int { return strings.Compare(m.Name, n) })
		if !found {
			added++
		}
		if !found || st.Members[i] != want {
			ups = append(ups, want)
		}
	}
	if len(ups) > 0 {
		slices.SortFunc(ups, func(a, b ring.Member) int { return strings.Compare(a.Name, b.Name) })
		if !c.propose(r, "upsert_members", CmdUpsertMembers, upsertPayload{Members: ups}) {
			return
		}
		c.logger.Info("ring membership updated", "added", added, "updated", len(ups)-added, "epoch", c.fsm.State().Epoch)
		st = c.fsm.State()
	}

	// 1b. Members gossip has reported dead or unreachable for
	// DeadNodeTimeout, and drained leavers gone from gossip, are removed.
	if !c.removeGone(r, st, peers) {
		return
	}
	st = c.fsm.State()

	// 2. Raft: every ring member is a server; voters are kept at the target.
	cf := r.GetConfiguration()
	if cf.Error() != nil {
		return
	}
	servers := map[string]raft.Server{}
	for _, s := range cf.Configuration().Servers {
		servers[string(s.ID)] = s
	}
	target := voterTarget(len(st.Members))
	voters := 0
	for _, s := range servers {
		if s.Suffrage == raft.Voter {
			voters++
		}
	}
	for _, m := range st.Members {
		p, ok := peers[m.Name]
		if !ok || !p.alive() || p.MetaErr != nil || p.Meta.RaftAddr == "" {
			continue
		}
		addr := raft.ServerAddress(p.Meta.RaftAddr)
		s, in := servers[m.Name]
		switch {
		case !in && voters < target:
			if !c.raftChange("add_voter", m.Name, r.AddVoter(raft.ServerID(m.Name), addr, 0, raftTimeout)) {
				return
			}
			voters++
		case !in:
			if !c.raftChange("add_nonvoter", m.Name, r.AddNonvoter(raft.ServerID(m.Name), addr, 0, raftTimeout)) {
				return
			}
		case s.Address != addr && s.Suffrage == raft.Voter:
			// Re-adding with the same ID updates the address (a restarted node on a new port).
			if !c.raftChange("update_address", m.Name, r.AddVoter(s.ID, addr, 0, raftTimeout)) {
				return
			}
		case s.Address != addr:
			if !c.raftChange("update_address", m.Name, r.AddNonvoter(s.ID, addr, 0, raftTimeout)) {
				return
			}
		}
	}
	c.balanceVoters(r, peers, target)

	// 3. Removed members leave the Raft configuration (only once gossip
	// agrees they are gone, so a bootstrap voter not yet upserted stays).
	cf = r.GetConfiguration()
	if cf.Error() != nil {
		return
	}
	for _, s := range cf.Configuration().Servers {
		name := string(s.ID)
		if name == c.cfg.NodeName {
			continue
		}
		if _, member := memberIndex(st.Members, name); member {
			continue
		}
		p, known := peers[name]
		_, former := memberIndex(st.Former, name)
		if former || (known && !p.alive()) {
			if !c.raftChange("remove_server", name, r.RemoveServer(s.ID, 0, raftTimeout)) {
				return
			}
		}
	}
}

// removeGone proposes the removal of members dead or unreachable for
// longer than DeadNodeTimeout (timed from when this leader first saw them
// gone) and of leaving members that hold no settled partition and left
// gossip. It reports false if a proposal failed.
func (c *Cluster) removeGone(r *raft.Raft, st *State, peers map[string]peer) bool {
	now := c.cfg.Now()
	rg := c.Ring()
	var names []string
	dead := 0
	for _, m := range st.Members {
		p, known := peers[m.Name]
		if m.Name == c.cfg.NodeName || (known && p.alive()) {
			delete(c.deadSince, m.Name)
			continue
		}
		since, seen := c.deadSince[m.Name]
		if !seen {
			c.deadSince[m.Name], since = now, now
		}
		_, leaving := slices.BinarySearch(st.Leaving, m.Name)
		switch {
		case leaving && len(rg.PartitionsOf(m.Name)) == 0:
			names = append(names, m.Name)
		case now.Sub(since) >= c.cfg.DeadNodeTimeout:
			names = append(names, m.Name)
			dead++
		}
	}
	if len(names) == 0 {
		return true
	}
	if !c.propose(r, "remove_members", CmdRemoveMembers, removePayload{Names: names}) {
		return false
	}
	for _, n := range names {
		delete(c.deadSince, n)
	}
	c.metrics.deadRemoved.Add(float64(dead))
	c.logger.Warn("members removed", "members", names, "dead_past_timeout", dead, "timeout", c.cfg.DeadNodeTimeout, "epoch", c.fsm.State().Epoch)
	return true
}

// balanceVoters promotes alive non-voters while voters are missing or dead,
// and demotes dead (then surplus) voters, so that quorum survives further
// failures. A voter gossip has not heard of yet counts as alive: only an
// explicit dead or left state is acted on, so a freshly elected leader with
// an incomplete gossip view demotes nobody.
func (c *Cluster) balanceVoters(r *raft.Raft, peers map[string]peer, target int) {
	cf := r.GetConfiguration()
	if cf.Error() != nil {
		return
	}
	dead := func(name string) bool {
		p, ok := peers[name]
		return ok && (p.State == memberlist.StateDead || p.State == memberlist.StateLeft)
	}
	var aliveVoters, deadVoters, candidates []raft.Server
	for _, s := range cf.Configuration().Servers {
		name := string(s.ID)
		switch {
		case s.Suffrage == raft.Voter && dead(name):
			deadVoters = append(deadVoters, s)
		case s.Suffrage == raft.Voter:
			aliveVoters = append(aliveVoters, s)
		case s.Suffrage == raft.Nonvoter && peers[name].alive():
			candidates = append(candidates, s)
		}
	}
	// Deterministic choice: lowest name first.
	byName := func(a, b raft.Server) int { return strings.Compare(string(a.ID), string(b.ID)) }
	slices.SortFunc(candidates, byName)
	slices.SortFunc(deadVoters, byName)

	for len(aliveVoters) < target && len(candidates) > 0 {
		s := candidates[0]
		candidates = candidates[1:]
		if !c.raftChange("promote", string(s.ID), r.AddVoter(s.ID, s.Address, 0, raftTimeout)) {
			return
		}
		aliveVoters = append(aliveVoters, s)
	}
	// A dead voter is demoted only once an alive one took its place, so the
	// voter count (and the failures quorum survives) stays at the target.
	for _, s := range deadVoters {
		if len(aliveVoters) < target {
			break
		}
		if !c.raftChange("demote", string(s.ID), r.DemoteVoter(s.ID, 0, raftTimeout)) {
			return
		}
	}
	self := raft.ServerID(c.cfg.NodeName)
	slices.SortFunc(aliveVoters, byName)
	for i := len(aliveVoters) - 1; i >= 0 && len(aliveVoters) > target; i-- {
		s := aliveVoters[i]
		if s.ID == self {
			continue
		}
		if !c.raftChange("demote", string(s.ID), r.DemoteVoter(s.ID, 0, raftTimeout)) {
			return
		}
		aliveVoters = slices.Delete(aliveVoters, i, i+1)
	}
}

// propose applies a command and reports whether it was committed.
func (c *Cluster) propose(r *raft.Raft, action string, t CommandType, payload any) bool {
	data, err := encodeCommand(t, payload)
	if err != nil {
		c.logger.Error("cannot encode command", "type", t, "err", err)
		return false
	}
	f := r.Apply(data, raftTimeout)
	if err := f.Error(); err != nil {
		c.logger.Warn("reconcile: raft apply failed", "action", action, "err", err)
		return false
	}
	if err, ok := f.Response().(error); ok && err != nil {
		c.logger.Error("reconcile: command rejected", "action", action, "err", err)
		return false
	}
	c.metrics.reconcileActions.WithLabelValues(action).Inc()
	return true
}

// raftChange waits for a configuration change and reports whether it committed.
func (c *Cluster) raftChange(action, member string, f raft.IndexFuture) bool {
	if err := f.Error(); err != nil {
		c.logger.Warn("reconcile: raft configuration change failed", "action", action, "member", member, "err", err)
		return false
	}
	c.logger.Info("raft configuration changed", "action", action, "member", member)
	c.metrics.reconcileActions.WithLabelValues(action).Inc()
	return true
}

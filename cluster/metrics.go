package cluster

import (
	"github.com/hashicorp/memberlist"
	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	members          *prometheus.GaugeVec
	raftState        *prometheus.GaugeVec
	reconcileActions *prometheus.CounterVec
	moves            *prometheus.CounterVec
	moveBytes        prometheus.Counter
	deadRemoved      prometheus.Counter
}

func newMetrics(reg prometheus.Registerer, c *Cluster) *metrics {
	m := &metrics{
		members: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "kiln_cluster_members",
			Help: "Gossip members this node knows of, by gossip state (alive, suspect, dead, left).",
		}, []string{"state"}),
		raftState: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "kiln_cluster_raft_state",
			Help: "1 for this node's current Raft state (follower, candidate, leader, shutdown).",
		}, []string{"state"}),
		reconcileActions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kiln_cluster_reconciler_actions_total",
			Help: "Changes the leader's reconciler committed, by action.",
		}, []string{"action"}),
		moves: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kiln_cluster_moves_total",
			Help: "Partition moves this node made, by result (fetched, fetch_failed, dropped, drop_failed).",
		}, []string{"result"}),
		moveBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kiln_cluster_move_bytes_total",
			Help: "Bytes of partition data this node fetched from other members.",
		}),
		deadRemoved: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kiln_cluster_dead_nodes_removed_total",
			Help: "Members the leader removed after DeadNodeTimeout of being dead or unreachable.",
		}),
	}
	raftNum := func(f func(r *raft.Raft) float64) func() float64 {
		return func() float64 {
			if r := c.raft.Load(); r != nil {
				return f(r)
			}
			return 0
		}
	}
	if reg != nil {
		reg.MustRegister(m.members, m.raftState, m.reconcileActions, m.moves, m.moveBytes, m.deadRemoved,
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{
				Name: "kiln_cluster_partitions_moving",
				Help: "Partitions whose settled owners differ from their target owners.",
			}, func() float64 { return float64(c.Ring().MovingCount()) }),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{
				Name: "kiln_cluster_is_leader", Help: "1 if this node is the Raft leader.",
			}, raftNum(func(r *raft.Raft) float64 {
				if r.State() == raft.Leader {
					return 1
				}
				return 0
			})),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{
				Name: "kiln_cluster_raft_term", Help: "Current Raft term.",
			}, raftNum(func(r *raft.Raft) float64 { return float64(r.CurrentTerm()) })),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{
				Name: "kiln_cluster_raft_applied_index", Help: "Last Raft index applied to the state machine.",
			}, raftNum(func(r *raft.Raft) float64 { return float64(r.AppliedIndex()) })),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{
				Name: "kiln_cluster_epoch", Help: "Assignment epoch of the ring this node serves.",
			}, func() float64 { return float64(c.Ring().Epoch()) }),
		)
	}
	return m
}

// observeGossip counts members by state; suspicion is not an event, so the
// live list from memberlist tells which alive members are suspect.
func (m *metrics) observeGossip(peers map[string]peer, live []*memberlist.Node) {
	counts := map[memberlist.NodeStateType]float64{}
	for _, p := range peers {
		counts[p.State]++
	}
	for _, n := range live {
		if n.State == memberlist.StateSuspect {
			counts[memberlist.StateSuspect]++
			counts[memberlist.StateAlive]--
		}
	}
	for _, s := range []memberlist.NodeStateType{memberlist.StateAlive, memberlist.StateSuspect, memberlist.StateDead, memberlist.StateLeft} {
		m.members.WithLabelValues(stateName(s)).Set(max(counts[s], 0))
	}
}

func (m *metrics) observeRaft(r *raft.Raft) {
	cur := r.State()
	for _, s := range []raft.RaftState{raft.Follower, raft.Candidate, raft.Leader, raft.Shutdown} {
		v := 0.0
		if s == cur {
			v = 1
		}
		m.raftState.WithLabelValues(stateLabel(s)).Set(v)
	}
}

func stateLabel(s raft.RaftState) string {
	switch s {
	case raft.Follower:
		return "follower"
	case raft.Candidate:
		return "candidate"
	case raft.Leader:
		return "leader"
	}
	return "shutdown"
}

package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/kilnhq/kiln/cluster/ring"
)

const waitFor = 15 * time.Second

// testNet wires in-process nodes: memberlist's MockNetwork for gossip and
// raft's InmemTransport for Raft. Create every node before running any:
// MockNetwork's maps are not safe for concurrent use.
type testNet struct {
	t      *testing.T
	gossip memberlist.MockNetwork
	mu     sync.Mutex
	rafts  []*raft.InmemTransport
}

func newTestNet(t *testing.T) *testNet { return &testNet{t: t} }

// node builds a node named name; peers are node names already built.
func (n *testNet) node(name string, mutate func(*Config), peers ...*Cluster) *Cluster {
	n.t.Helper()
	_, rt := raft.NewInmemTransport("")
	n.mu.Lock()
	for _, o := range n.rafts {
		o.Connect(rt.LocalAddr(), rt)
		rt.Connect(o.LocalAddr(), o)
	}
	n.rafts = append(n.rafts, rt)
	n.mu.Unlock()
	cfg := Config{
		NodeName:        name,
		ClusterName:     "test",
		APIAddr:         "127.0.0.1:1" + name[len(name)-1:],
		GossipTransport: n.gossip.NewTransport(name),
		RaftTransport:   rt,
	}
	for _, p := range peers {
		cfg.Peers = append(cfg.Peers, p.GossipAddr())
	}
	FastTimings(&cfg)
	if mutate != nil {
		mutate(&cfg)
	}
	var logger *slog.Logger
	if os.Getenv("CLUSTER_TEST_LOG") != "" {
		logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	c, err := New(cfg, prometheus.NewRegistry(), logger)
	require.NoError(n.t, err)
	return c
}

// run starts c.Run and returns a function that stops it and waits.
func run(t *testing.T, c *Cluster) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				require.NoError(t, err)
			case <-time.After(waitFor):
				t.Errorf("%s: Run did not return after cancel", c.Self())
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

func leaders(cs ...*Cluster) []*Cluster {
	var out []*Cluster
	for _, c := range cs {
		if r := c.raft.Load(); r != nil && r.State() == raft.Leader {
			out = append(out, c)
		}
	}
	return out
}

// converged reports whether all nodes serve the same ring of want members
// and agree on the cluster ID.
func converged(want int, cs ...*Cluster) bool {
	first := cs[0].Ring()
	for _, c := range cs {
		r := c.Ring()
		if !c.Ready() || len(r.Members()) != want || r.Epoch() != first.Epoch() ||
			c.State().ClusterID == "" || c.State().ClusterID != cs[0].State().ClusterID {
			return false
		}
	}
	return true
}

func voters(c *Cluster) map[string]raft.ServerSuffrage {
	out := map[string]raft.ServerSuffrage{}
	for _, s := range c.raft.Load().GetConfiguration().Configuration().Servers {
		out[string(s.ID)] = s.Suffrage
	}
	return out
}

func TestThreeNodesFormOneClusterAndAgreeOnTheRing(t *testing.T) {
	n := newTestNet(t)
	a := n.node("n1", nil)
	b := n.node("n2", nil, a)
	c := n.node("n3", nil, a, b)
	for _, x := range []*Cluster{a, b, c} {
		run(t, x)
	}
	require.Eventually(t, func() bool { return converged(3, a, b, c) }, waitFor, 20*time.Millisecond)
	require.Len(t, leaders(a, b, c), 1)

	ra, rb, rc := a.Ring(), b.Ring(), c.Ring()
	require.Equal(t, 3, ra.RF())
	for p := range uint16(ring.NumPartitions) {
		require.Equal(t, ra.Owners(p), rb.Owners(p), "partition %d", p)
		require.Equal(t, ra.Owners(p), rc.Owners(p), "partition %d", p)
	}
	m, ok := ra.Member("n2")
	require.True(t, ok)
	require.Equal(t, "127.0.0.1:12", m.Addr, "ring carries the API address from gossip metadata")

	// Every member becomes a Raft voter (three members, three voters).
	require.Eventually(t, func() bool {
		v := voters(leaders(a, b, c)[0])
		return len(v) == 3 && v["n1"] == raft.Voter && v["n2"] == raft.Voter && v["n3"] == raft.Voter
	}, waitFor, 20*time.Millisecond)

	st := b.Status()
	require.Equal(t, "n2", st.Self)
	require.Equal(t, a.State().ClusterID, st.ClusterID)
	require.Equal(t, 3, st.ReplicationFactor)
	require.Equal(t, ra.Epoch(), st.Epoch)
	require.Zero(t, st.UnderReplicatedPartitions)
	require.NotEmpty(t, st.Leader.Name)
	require.Len(t, st.Members, 3)
	roles := map[string]int{}
	for _, m := range st.Members {
		require.True(t, m.InRing)
		require.Equal(t, "alive", m.GossipState)
		require.Equal(t, ring.NumPartitions, m.Partitions, "rf 3 of 3 members: everyone owns every partition")
		require.NotEmpty(t, m.RaftAddr)
		require.NotEmpty(t, m.GossipAddr)
		roles[m.RaftRole]++
	}
	require.Equal(t, map[string]int{"leader": 1, "voter": 2}, roles)
}

func TestConcurrentStartFormsOneCluster(t *testing.T) {
	for _, tc := range []struct {
		nodes, expect int
	}{{2, 1}, {2, 1}, {3, 1}, {3, 3}} {
		t.Run(fmt.Sprintf("nodes=%d/expect=%d", tc.nodes, tc.expect), func(t *testing.T) {
			n := newTestNet(t)
			cs := make([]*Cluster, tc.nodes)
			for i := range cs {
				cs[i] = n.node(fmt.Sprintf("n%d", i+1), func(c *Config) { c.BootstrapExpect = tc.expect })
			}
			// Every node lists every other as a peer: nobody is a designated seed.
			for _, c := range cs {
				for _, o := range cs {
					if o != c {
						c.cfg.Peers = append(c.cfg.Peers, o.GossipAddr())
					}
				}
			}
			var wg sync.WaitGroup
			for _, c := range cs {
				wg.Go(func() { run(t, c) })
			}
			wg.Wait()
			require.Eventually(t, func() bool { return converged(tc.nodes, cs...) }, waitFor, 20*time.Millisecond)
			require.Len(t, leaders(cs...), 1)
			require.Len(t, voters(leaders(cs...)[0]), tc.nodes)
		})
	}
}

func TestLeaderFailoverKeepsTheRingServed(t *testing.T) {
	n := newTestNet(t)
	var cs []*Cluster
	for i := 1; i <= 4; i++ {
		cs = append(cs, n.node(fmt.Sprintf("n%d", i), nil, cs...))
	}
	stops := map[*Cluster]func(){}
	for _, c := range cs {
		stops[c] = run(t, c)
	}
	require.Eventually(t, func() bool { return converged(4, cs...) }, waitFor, 20*time.Millisecond)
	var old *Cluster
	require.Eventually(t, func() bool {
		ls := leaders(cs...)
		if len(ls) != 1 {
			return false
		}
		old = ls[0]
		v := voters(old)
		nv := 0
		for _, s := range v {
			if s == raft.Nonvoter {
				nv++
			}
		}
		return len(v) == 4 && nv == 1 // four members: three voters, one non-voter
	}, waitFor, 20*time.Millisecond)
	oldTerm := old.raft.Load().CurrentTerm()
	epoch := old.Ring().Epoch()
	var rest []*Cluster
	for _, c := range cs {
		if c != old {
			rest = append(rest, c)
		}
	}

	// Readers on the survivors must never see the ring disappear or block.
	var stopReaders atomic.Bool
	var readerErr atomic.Value
	var wg sync.WaitGroup
	for _, c := range rest {
		wg.Go(func() {
			for !stopReaders.Load() {
				r := c.Ring()
				if r == nil || len(r.Members()) != 4 || len(r.Owners(7)) != 3 {
					readerErr.Store(fmt.Sprintf("%s served ring %v", c.Self(), r.Members()))
				}
				time.Sleep(time.Millisecond)
			}
		})
	}

	stops[old]()
	require.Eventually(t, func() bool {
		ls := leaders(rest...)
		return len(ls) == 1 && ls[0].raft.Load().CurrentTerm() > oldTerm
	}, waitFor, 20*time.Millisecond)
	for _, c := range rest {
		require.Eventually(t, func() bool { return !c.Alive(old.Self()) }, waitFor, 20*time.Millisecond)
	}
	// The dead voter is replaced by the alive non-voter, so quorum survives
	// another failure; the dead node stays in the ring.
	require.Eventually(t, func() bool {
		ls := leaders(rest...)
		if len(ls) != 1 {
			return false
		}
		v := voters(ls[0])
		for _, c := range rest {
			if v[c.Self()] != raft.Voter {
				return false
			}
		}
		return v[old.Self()] == raft.Nonvoter
	}, waitFor, 20*time.Millisecond)
	stopReaders.Store(true)
	wg.Wait()
	require.Nil(t, readerErr.Load())
	for _, c := range rest {
		require.Equal(t, epoch, c.Ring().Epoch(), "a dead member is not removed from the ring")
		st := c.Status()
		require.Equal(t, 4, len(st.Members))
		for _, m := range st.Members {
			if m.Name == old.Self() {
				require.Contains(t, []string{"dead", "left"}, m.GossipState)
				require.True(t, m.InRing)
			}
		}
		require.Positive(t, st.UnderReplicatedPartitions)
	}
}

func TestNodeOfAnotherClusterIsRefused(t *testing.T) {
	n := newTestNet(t)
	a := n.node("n1", nil)
	b := n.node("n2", func(c *Config) { c.ClusterName = "other" }, a)
	run(t, a)
	run(t, b)
	require.Eventually(t, a.Ready, waitFor, 20*time.Millisecond)
	// b cannot join a, so it stays out of a's gossip, and with a peer
	// configured it never bootstraps a cluster of its own. Give it several
	// join rounds before checking.
	time.Sleep(10 * b.cfg.JoinRetryInterval)
	require.False(t, b.joined.Load())
	require.False(t, b.Ready())
	require.False(t, a.Alive("n2"))
	require.Len(t, a.Ring().Members(), 1)
	require.Len(t, a.Status().Members, 1)
}

func TestSingleNodeWithoutPeersIsAClusterOfOneAndRestartsFromDataDir(t *testing.T) {
	dir := t.TempDir()
	cfg := Config{
		NodeName:    "solo",
		ClusterName: "test",
		BindAddr:    "127.0.0.1:0",
		APIAddr:     "127.0.0.1:9364",
		DataDir:     dir,
	}
	FastTimings(&cfg)
	reg := prometheus.NewRegistry()
	c, err := New(cfg, reg, nil)
	require.NoError(t, err)
	require.Contains(t, c.GossipAddr(), "127.0.0.1:")
	require.Contains(t, c.RaftAddr(), "127.0.0.1:")
	require.NotEqual(t, c.GossipAddr(), c.RaftAddr())
	stop := run(t, c)
	require.Eventually(t, c.Ready, waitFor, 20*time.Millisecond)
	require.Equal(t, 1, c.Ring().RF(), "rf 3 is capped at one member")
	require.Equal(t, []ring.Member{{Name: "solo", Addr: "127.0.0.1:9364"}}, c.Ring().Members())
	require.Eventually(t, func() bool { return gaugeValue(t, reg, "kiln_cluster_is_leader") == 1 }, waitFor, 20*time.Millisecond)
	id, epoch := c.State().ClusterID, c.Ring().Epoch()
	require.Equal(t, float64(epoch), gaugeValue(t, reg, "kiln_cluster_epoch"))
	stop()

	// Restart on new ports with the same data: Raft state is kept and no new
	// cluster is bootstrapped (which would mint a new cluster ID).
	c2, err := New(cfg, prometheus.NewRegistry(), nil)
	require.NoError(t, err)
	require.True(t, c2.hasState.Load())
	run(t, c2)
	require.Eventually(t, c2.Ready, waitFor, 20*time.Millisecond)
	require.Equal(t, id, c2.State().ClusterID)
	require.Equal(t, epoch, c2.Ring().Epoch())
	require.Eventually(t, func() bool { return leaders(c2) != nil }, waitFor, 20*time.Millisecond)
	require.Eventually(t, func() bool { return voters(c2)["solo"] == raft.Voter }, waitFor, 20*time.Millisecond)
}

func TestTwoNodesOverTheRealNetwork(t *testing.T) {
	mk := func(name string, peers ...string) *Cluster {
		cfg := Config{NodeName: name, ClusterName: "test", BindAddr: "127.0.0.1:0", APIAddr: "127.0.0.1:80", Peers: peers}
		FastTimings(&cfg)
		c, err := New(cfg, nil, nil)
		require.NoError(t, err)
		return c
	}
	a := mk("a")
	b := mk("b", a.GossipAddr())
	// A later feature's command, registered identically on every node.
	setRF := func(s *State, p json.RawMessage) error { return json.Unmarshal(p, &s.ReplicationFactor) }
	a.RegisterHandler("set_rf", setRF)
	b.RegisterHandler("set_rf", setRF)
	run(t, a)
	run(t, b)
	require.Eventually(t, func() bool { return converged(2, a, b) }, waitFor, 20*time.Millisecond)
	require.Eventually(t, func() bool { return len(voters(a)) == 2 && voters(a)["b"] == raft.Voter }, waitFor, 20*time.Millisecond)

	require.Equal(t, 2, b.Ring().RF())
	require.Len(t, leaders(a, b), 1)
	leader, follower := a, b
	if leaders(a, b)[0] == b {
		leader, follower = b, a
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	require.ErrorIs(t, follower.Apply(ctx, "set_rf", 1), ErrNotLeader)
	require.ErrorIs(t, leader.Apply(ctx, "no_such", 1), ErrUnknownCommand)
	require.NoError(t, leader.Apply(ctx, "set_rf", 1))
	require.Equal(t, 1, leader.Ring().RF(), "the leader's ring is rebuilt before Apply returns")
	require.Eventually(t, func() bool { return follower.Ring().RF() == 1 }, waitFor, 20*time.Millisecond)
}

func TestNewRejectsBadConfig(t *testing.T) {
	_, err := New(Config{}, nil, nil)
	require.ErrorIs(t, err, ErrConfig)
	_, err = New(Config{NodeName: "x", BindAddr: "127.0.0.1:0", ReplicationFactor: -1}, nil, nil)
	require.ErrorIs(t, err, ErrConfig)
	_, err = New(Config{NodeName: "x", BindAddr: "nonsense"}, nil, nil)
	require.ErrorIs(t, err, ErrConfig)
}

// gaugeValue reads an unlabelled gauge from reg.
func gaugeValue(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()[0].GetGauge().GetValue()
		}
	}
	t.Fatalf("metric %s not registered", name)
	return 0
}

func TestSevenMembersHaveFiveVoters(t *testing.T) {
	n := newTestNet(t)
	var cs []*Cluster
	for i := 1; i <= 7; i++ {
		cs = append(cs, n.node(fmt.Sprintf("n%d", i), nil, cs...))
	}
	for _, c := range cs {
		run(t, c)
	}
	require.Eventually(t, func() bool { return converged(7, cs...) }, waitFor, 20*time.Millisecond)
	require.Eventually(t, func() bool {
		ls := leaders(cs...)
		if len(ls) != 1 {
			return false
		}
		count := map[raft.ServerSuffrage]int{}
		for _, s := range voters(ls[0]) {
			count[s]++
		}
		return count[raft.Voter] == 5 && count[raft.Nonvoter] == 2
	}, waitFor, 20*time.Millisecond)
}

func TestRestartedMemberWithNewAddressesIsUpdated(t *testing.T) {
	mk := func(name, api string, peers ...string) *Cluster {
		cfg := Config{NodeName: name, ClusterName: "test", BindAddr: "127.0.0.1:0", APIAddr: api, Peers: peers}
		FastTimings(&cfg)
		c, err := New(cfg, nil, nil)
		require.NoError(t, err)
		return c
	}
	a := mk("a", "127.0.0.1:1001")
	b := mk("b", "127.0.0.1:1002", a.GossipAddr())
	c := mk("c", "127.0.0.1:1003", a.GossipAddr())
	run(t, a)
	run(t, b)
	stopC := run(t, c)
	require.Eventually(t, func() bool {
		return converged(3, a, b, c) && len(leaders(a, b, c)) == 1 && voters(leaders(a, b, c)[0])["c"] == raft.Voter
	}, waitFor, 20*time.Millisecond)
	epoch := a.Ring().Epoch()
	stopC()

	// c comes back without its Raft state, on new ports and a new API address.
	c2 := mk("c", "127.0.0.1:2003", b.GossipAddr())
	run(t, c2)
	require.Eventually(t, func() bool {
		m, _ := a.Ring().Member("c")
		return converged(3, a, b, c2) && m.Addr == "127.0.0.1:2003"
	}, waitFor, 20*time.Millisecond)
	require.Greater(t, c2.Ring().Epoch(), epoch)
	require.Eventually(t, func() bool {
		ls := leaders(a, b, c2)
		if len(ls) != 1 {
			return false
		}
		for _, s := range ls[0].raft.Load().GetConfiguration().Configuration().Servers {
			if s.ID == "c" {
				return string(s.Address) == c2.RaftAddr() && s.Suffrage == raft.Voter
			}
		}
		return false
	}, waitFor, 20*time.Millisecond)
}

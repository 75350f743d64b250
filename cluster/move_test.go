package cluster

import (
	"context"
	"fmt"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"
	"github.com/valyala/fasthttp"

	"github.com/kilnhq/kiln/cluster/ring"
)

func moveRing(t *testing.T, f *fsm) *ring.Ring {
	t.Helper()
	s := f.State()
	r, err := ring.NewAssigned(s.nodes(), s.ReplicationFactor, s.Epoch, s.Partitions)
	require.NoError(t, err)
	return r
}

func members(names ...string) upsertPayload {
	var p upsertPayload
	for _, n := range names {
		p.Members = append(p.Members, ring.Member{Name: n, Addr: n + ":9364"})
	}
	return p
}

func TestFSMJoinMovesThroughReadyReports(t *testing.T) {
	f := newFSM(nil)
	require.Nil(t, applyCmd(t, f, CmdInit, initPayload{ClusterID: "c", ReplicationFactor: 3}))
	require.Nil(t, applyCmd(t, f, CmdUpsertMembers, members("a", "b", "c")))
	r := moveRing(t, f)
	require.Zero(t, r.MovingCount(), "a new cluster settles at once")
	require.Len(t, r.PartitionsOf("a"), ring.NumPartitions)

	require.Nil(t, applyCmd(t, f, CmdUpsertMembers, members("d")))
	r = moveRing(t, f)
	fetch := r.PartitionsToFetch("d")
	require.NotEmpty(t, fetch)
	require.Equal(t, len(fetch), r.MovingCount())
	require.Empty(t, r.PartitionsOf("d"), "d answers no read before its copies are complete")
	for p := range uint16(ring.NumPartitions) {
		require.Len(t, r.OwnerIndexes(p), 3)
		require.Subset(t, r.WriteOwnerIndexes(p), r.OwnerIndexes(p))
		require.Subset(t, r.WriteOwnerIndexes(p), r.TargetIndexes(p))
		require.Equal(t, slices.Contains(fetch, p), r.Moving(p))
	}
	// Stale, unknown and repeated reports change nothing.
	before := f.State()
	require.Nil(t, applyCmd(t, f, CmdPartitionReady, readyPayload{Node: "d", Epoch: 1, Partitions: fetch}))
	require.Nil(t, applyCmd(t, f, CmdPartitionReady, readyPayload{Node: "a", Epoch: 2, Partitions: fetch}))
	require.True(t, sameAssignment(before.Partitions, f.State().Partitions))
	err, _ := applyCmd(t, f, CmdPartitionReady, readyPayload{Node: "d", Epoch: 2, Partitions: []uint16{ring.NumPartitions}}).(error)
	require.ErrorIs(t, err, ErrBadCommand)

	require.Nil(t, applyCmd(t, f, CmdPartitionReady, readyPayload{Node: "d", Epoch: 2, Partitions: fetch[:1]}))
	require.Nil(t, applyCmd(t, f, CmdPartitionReady, readyPayload{Node: "d", Epoch: 2, Partitions: fetch[:1]}))
	r = moveRing(t, f)
	require.Equal(t, len(fetch)-1, r.MovingCount())
	require.True(t, r.Owns("d", fetch[0]))
	require.True(t, r.MayDrop("a", fetch[0]) || r.MayDrop("b", fetch[0]) || r.MayDrop("c", fetch[0]), "an old owner may drop it now")

	require.Nil(t, applyCmd(t, f, CmdPartitionReady, readyPayload{Node: "d", Epoch: 5, Partitions: fetch}))
	r = moveRing(t, f)
	require.Zero(t, r.MovingCount())
	require.Equal(t, len(fetch), len(r.PartitionsOf("d")))
}

func TestFSMRemoveKeepsSettledUntilReplaced(t *testing.T) {
	f := newFSM(nil)
	require.Nil(t, applyCmd(t, f, CmdInit, initPayload{ClusterID: "c", ReplicationFactor: 3}))
	require.Nil(t, applyCmd(t, f, CmdUpsertMembers, members("a", "b", "c", "d")))
	held := moveRing(t, f).PartitionsOf("d")
	require.Nil(t, applyCmd(t, f, CmdRemoveMembers, removePayload{Names: []string{"d"}}))
	r := moveRing(t, f)
	require.Equal(t, held, r.PartitionsOf("d"), "the removed node stays settled until the new owners are ready")
	require.Equal(t, []string{"d"}, []string{f.State().Former[0].Name})
	for _, p := range held {
		require.False(t, r.IsTarget("d", p))
		require.True(t, r.Moving(p))
	}
	// The removed node comes back: it is a new member, its old copies stale.
	require.Nil(t, applyCmd(t, f, CmdUpsertMembers, members("d")))
	r = moveRing(t, f)
	require.Empty(t, f.State().Former)
	require.Empty(t, r.PartitionsOf("d"))
	require.NotEmpty(t, r.PartitionsToFetch("d"))

	// Leave: out of the target, settled until the others are ready.
	require.Nil(t, applyCmd(t, f, CmdLeave, leavePayload{Node: "a"}))
	require.Nil(t, applyCmd(t, f, CmdLeave, leavePayload{Node: "a"}), "leave is idempotent")
	r = moveRing(t, f)
	require.Empty(t, r.TargetPartitionsOf("a"))
	require.NotEmpty(t, r.PartitionsOf("a"))
	require.Nil(t, applyCmd(t, f, CmdLeave, leavePayload{Node: "b"}))
	require.Nil(t, applyCmd(t, f, CmdLeave, leavePayload{Node: "c"}))
	err, _ := applyCmd(t, f, CmdLeave, leavePayload{Node: "d"}).(error)
	require.ErrorIs(t, err, ErrLastMember)
}

// fakeMover records fetches and drops and checks them against the ring
// of the node it serves at the moment they happen.
type fakeMover struct {
	c       *Cluster
	mu      sync.Mutex
	fetches int
	drops   int
	errs    []string
	delay   time.Duration
}

func (m *fakeMover) Fetch(ctx context.Context, p uint16, from ring.Member) (int64, error) {
	r := m.c.Ring()
	m.mu.Lock()
	m.fetches++
	if !r.Owns(from.Name, p) {
		m.errs = append(m.errs, fmt.Sprintf("%s fetched %d from %s, not a settled owner", m.c.Self(), p, from.Name))
	}
	m.mu.Unlock()
	select {
	case <-ctx.Done():
		return 0, ctx.Err()
	case <-time.After(m.delay):
	}
	return 1000, nil
}

func (m *fakeMover) Drop(_ context.Context, p uint16) error {
	r := m.c.Ring()
	m.mu.Lock()
	defer m.mu.Unlock()
	m.drops++
	if !r.MayDrop(m.c.Self(), p) {
		m.errs = append(m.errs, fmt.Sprintf("%s dropped %d it still owns", m.c.Self(), p))
	}
	return nil
}

// moveNode builds a node with a fake mover and a loopback HTTP server for
// the internal RPC, so non-leaders forward their reports for real.
func moveNode(t *testing.T, n *testNet, name string, mutate func(*Config), peers ...*Cluster) (*Cluster, *fakeMover) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	fm := &fakeMover{delay: time.Millisecond}
	c := n.node(name, func(cfg *Config) {
		cfg.APIAddr = ln.Addr().String()
		cfg.Mover = fm
		cfg.MaxConcurrentMoves = 4
		cfg.DropDelay = 200 * time.Millisecond
		if mutate != nil {
			mutate(cfg)
		}
	}, peers...)
	fm.c = c
	srv := &fasthttp.Server{Handler: c.Handle}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Shutdown() })
	return c, fm
}

// watchReplication fails if any node ever serves a partition with fewer
// than RF settled owners, or (with alive) with fewer than RF alive ones.
func watchReplication(t *testing.T, alive bool, cs ...*Cluster) (stop func() []string) {
	var done atomic.Bool
	var mu sync.Mutex
	var bad []string
	var wg sync.WaitGroup
	for _, c := range cs {
		wg.Go(func() {
			for !done.Load() {
				r := c.Ring()
				for p := range uint16(ring.NumPartitions) {
					if r == nil || r.RF() == 0 {
						break
					}
					n := 0
					for _, j := range r.OwnerIndexes(p) {
						if !alive || c.Alive(r.Members()[j].Name) {
							n++
						}
					}
					if n < r.RF() {
						mu.Lock()
						bad = append(bad, fmt.Sprintf("%s epoch %d partition %d: %d of %d settled owners", c.Self(), r.Epoch(), p, n, r.RF()))
						mu.Unlock()
						break
					}
				}
				time.Sleep(5 * time.Millisecond)
			}
		})
	}
	return func() []string { done.Store(true); wg.Wait(); return bad }
}

func settledEverywhere(want int, cs ...*Cluster) bool {
	if !converged(want, cs...) {
		return false
	}
	for _, c := range cs {
		if c.Ring().MovingCount() != 0 || c.Ring().Epoch() != cs[0].Ring().Epoch() {
			return false
		}
	}
	return true
}

func logSpread(t *testing.T, r *ring.Ring) {
	lo, hi := ring.NumPartitions, 0
	for _, m := range r.Members() {
		n := len(r.PartitionsOf(m.Name))
		lo, hi = min(lo, n), max(hi, n)
	}
	t.Logf("%d nodes, RF %d: settled partitions per node min %d max %d", len(r.Members()), r.RF(), lo, hi)
}

func TestJoinThreeFourFiveMovesSafely(t *testing.T) {
	n := newTestNet(t)
	var cs []*Cluster
	var fms []*fakeMover
	for i := 1; i <= 5; i++ {
		c, fm := moveNode(t, n, fmt.Sprintf("n%d", i), nil, cs...)
		cs, fms = append(cs, c), append(fms, fm)
	}
	for _, c := range cs[:3] {
		run(t, c)
	}
	require.Eventually(t, func() bool { return settledEverywhere(3, cs[:3]...) }, waitFor, 20*time.Millisecond)
	logSpread(t, cs[0].Ring())
	stopWatch := watchReplication(t, false, cs[:3]...)
	for k := 4; k <= 5; k++ {
		run(t, cs[k-1])
		require.Eventually(t, func() bool { return settledEverywhere(k, cs[:k]...) }, 2*waitFor, 20*time.Millisecond)
		r := cs[0].Ring()
		logSpread(t, r)
		for p := range uint16(ring.NumPartitions) {
			require.Len(t, r.OwnerIndexes(p), 3)
			require.Equal(t, r.OwnerIndexes(p), r.TargetIndexes(p))
		}
		require.NotEmpty(t, r.PartitionsOf(cs[k-1].Self()))
		fm := fms[k-1]
		fm.mu.Lock()
		require.GreaterOrEqual(t, fm.fetches, len(r.PartitionsOf(cs[k-1].Self())), "the new node fetched what it owns")
		fm.mu.Unlock()
		require.Empty(t, leaders(cs[k-1]), "the new node is no leader: its reports were forwarded")
	}
	require.Empty(t, stopWatch())
	// Old owners drop what moved away, only after it settled elsewhere.
	require.Eventually(t, func() bool {
		fms[0].mu.Lock()
		defer fms[0].mu.Unlock()
		return fms[0].drops > 0
	}, waitFor, 20*time.Millisecond)
	for _, fm := range fms {
		fm.mu.Lock()
		require.Empty(t, fm.errs)
		fm.mu.Unlock()
	}
	st := cs[4].Status()
	require.Zero(t, st.MovingPartitions)
	require.Zero(t, st.UnderReplicatedPartitions)
	require.Positive(t, st.BytesMoved)
	for _, m := range st.Members {
		require.Equal(t, m.PartitionsTarget, m.PartitionsSettled, m.Name)
	}
}

func TestDeadNodeIsRemovedAndItsPartitionsReReplicated(t *testing.T) {
	n := newTestNet(t)
	var cs []*Cluster
	stops := map[string]func(){}
	for i := 1; i <= 4; i++ {
		c, _ := moveNode(t, n, fmt.Sprintf("n%d", i), func(cfg *Config) { cfg.DeadNodeTimeout = 2 * time.Second }, cs...)
		cs = append(cs, c)
	}
	for _, c := range cs { // MockNetwork: create every node before running any
		stops[c.Self()] = run(t, c)
	}
	require.Eventually(t, func() bool { return settledEverywhere(4, cs...) }, 2*waitFor, 20*time.Millisecond)
	// Kill a node that does not lead.
	victim := cs[3]
	if len(leaders(victim)) > 0 {
		victim = cs[2]
	}
	var rest []*Cluster
	for _, c := range cs {
		if c != victim {
			rest = append(rest, c)
		}
	}
	stops[victim.Self()]()
	require.Eventually(t, func() bool { return rest[0].Status().UnderReplicatedPartitions > 0 }, waitFor, 20*time.Millisecond)
	t0 := time.Now()
	require.Eventually(t, func() bool {
		if !settledEverywhere(3, rest...) {
			return false
		}
		for _, c := range rest {
			if c.Status().UnderReplicatedPartitions != 0 {
				return false
			}
		}
		return true
	}, 3*waitFor, 20*time.Millisecond)
	t.Logf("dead node removed and re-replicated %v after the first under-replication was seen (timeout 2s)", time.Since(t0).Round(time.Millisecond))
	_, still := rest[0].Ring().Member(victim.Self())
	require.False(t, still, "the dead node is gone once no partition needs it")
	ls := leaders(rest...)
	require.Len(t, ls, 1)
	require.Equal(t, 1.0, testutil.ToFloat64(ls[0].metrics.deadRemoved))
}

func TestLeaveOfOneOfFiveNeverUnderReplicates(t *testing.T) {
	n := newTestNet(t)
	var cs []*Cluster
	stops := map[string]func(){}
	for i := 1; i <= 5; i++ {
		c, _ := moveNode(t, n, fmt.Sprintf("n%d", i), nil, cs...)
		cs = append(cs, c)
	}
	for _, c := range cs {
		stops[c.Self()] = run(t, c)
	}
	require.Eventually(t, func() bool { return settledEverywhere(5, cs...) }, 2*waitFor, 20*time.Millisecond)
	leaver := cs[1]
	rest := slices.DeleteFunc(slices.Clone(cs), func(c *Cluster) bool { return c == leaver })
	stopWatch := watchReplication(t, true, rest...)
	ctx, cancel := context.WithTimeout(context.Background(), 2*waitFor)
	defer cancel()
	require.NoError(t, leaver.Leave(ctx))
	require.Empty(t, leaver.Ring().PartitionsOf(leaver.Self()))
	stops[leaver.Self()]()
	require.Eventually(t, func() bool { return settledEverywhere(4, rest...) }, waitFor, 20*time.Millisecond)
	require.Empty(t, stopWatch())
	for _, c := range rest {
		require.Zero(t, c.Status().UnderReplicatedPartitions)
	}
}

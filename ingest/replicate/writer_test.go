package replicate

import (
	"context"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/storage"
	"github.com/stretchr/testify/require"

	"github.com/kilnhq/kiln/cluster/ring"
	"github.com/kilnhq/kiln/shard"
)

func TestPartitionMatchesShard(t *testing.T) {
	for i := range 100 {
		ls := testSeries(i)
		require.Equal(t, shard.PartitionOf(ls), uint16(labels.StableHash(ls)%shard.NumPartitions))
	}
}

func TestAllUpEverySampleOnEveryReplica(t *testing.T) {
	_, nodes := threeNodes(t, 3, fastCfg())
	app := nodes[0].writer().AppenderV2(context.Background())
	writeSeries(t, app, 200, 1000, func(i int) float64 { return float64(i) })
	require.NoError(t, app.Commit())

	for _, n := range nodes {
		got := samples(t, n.db)
		require.Len(t, got, 200, n.name)
		for i := range 200 {
			require.Equal(t, map[int64]float64{1000: float64(i)}, got[testSeries(i).String()], n.name)
		}
	}
	// A second round through the series cache, from another node.
	app = nodes[1].writer().AppenderV2(context.Background())
	writeSeries(t, app, 200, 2000, func(i int) float64 { return float64(i) + 0.5 })
	require.NoError(t, app.Commit())
	for _, n := range nodes {
		got := samples(t, n.db)
		for i := range 200 {
			require.Equal(t, map[int64]float64{1000: float64(i), 2000: float64(i) + 0.5}, got[testSeries(i).String()], n.name)
		}
	}
}

func TestRF2OnlyOwnersHoldSeries(t *testing.T) {
	c, nodes := threeNodes(t, 2, fastCfg())
	app := nodes[0].writer().AppenderV2(context.Background())
	writeSeries(t, app, 300, 1000, func(i int) float64 { return 1 })
	require.NoError(t, app.Commit())
	r := c.ring
	for _, n := range nodes {
		got := samples(t, n.db)
		for i := range 300 {
			ls := testSeries(i)
			_, has := got[ls.String()]
			require.Equal(t, r.Owns(n.name, shard.PartitionOf(ls)), has, "%s %s", n.name, ls)
		}
	}
}

// A label with an empty value is no label: such a series goes to the owners
// of the series without it, through every node, as one series.
func TestEmptyLabelValueRoutedWithoutIt(t *testing.T) {
	c, nodes := threeNodes(t, 2, fastCfg())
	for k, n := range nodes {
		app := n.writer().AppenderV2(context.Background())
		for i := range 100 {
			lbls := []labels.Label{{Name: "empty", Value: ""}}
			testSeries(i).Range(func(l labels.Label) { lbls = append(lbls, l) })
			ls := labels.New(lbls...)
			require.Equal(t, "", ls.Get("empty"))
			require.Equal(t, testSeries(i).Len()+1, ls.Len())
			_, err := app.Append(0, ls, 0, int64(1000*(k+1)), float64(i), nil, nil, storage.AOptions{})
			require.NoError(t, err)
		}
		require.NoError(t, app.Commit())
	}
	for _, n := range nodes {
		got := samples(t, n.db)
		for i := range 100 {
			ls := testSeries(i)
			want := map[int64]float64(nil)
			if c.ring.Owns(n.name, shard.PartitionOf(ls)) {
				want = map[int64]float64{1000: float64(i), 2000: float64(i), 3000: float64(i)}
			}
			require.Equal(t, want, got[ls.String()], "%s %s", n.name, ls)
		}
	}
}

func TestOnePeerDownHintReplayed(t *testing.T) {
	c, nodes := threeNodes(t, 3, fastCfg())
	a, down := nodes[0], nodes[2]
	down.down.Store(true)
	c.setDead(down.name, true)

	app := a.writer().AppenderV2(context.Background())
	writeSeries(t, app, 50, 1000, func(i int) float64 { return float64(i) })
	require.NoError(t, app.Commit(), "quorum of 2 out of 3 holds")
	require.Len(t, samples(t, nodes[1].db), 50)
	require.Empty(t, samples(t, down.db))
	bl := a.writer().Backlog()
	require.Equal(t, 1, bl[down.name].Hints)
	require.Positive(t, bl[down.name].Bytes)

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- a.writer().Run(ctx) }()
	defer func() { cancel(); require.NoError(t, <-done) }()

	// Alive in gossip but still failing: the hint stays.
	c.setDead(down.name, false)
	time.Sleep(100 * time.Millisecond) // give Run a few failing rounds
	require.Equal(t, 1, a.writer().Backlog()[down.name].Hints)

	down.down.Store(false)
	require.Eventually(t, func() bool { return len(samples(t, down.db)) == 50 }, 10*time.Second, 20*time.Millisecond)
	require.Eventually(t, func() bool { return len(a.writer().Backlog()) == 0 }, 5*time.Second, 20*time.Millisecond)
}

func TestDeadPeerIsNotContacted(t *testing.T) {
	c, nodes := threeNodes(t, 3, fastCfg())
	// Gossip says c is dead but it would answer: it must not get the batch.
	c.setDead("c", true)
	app := nodes[0].writer().AppenderV2(context.Background())
	writeSeries(t, app, 10, 1000, func(i int) float64 { return 1 })
	require.NoError(t, app.Commit())
	require.Empty(t, samples(t, nodes[2].db))
	require.Equal(t, 1, nodes[0].writer().Backlog()["c"].Hints)
}

func TestTwoDownIsUnavailable(t *testing.T) {
	c, nodes := threeNodes(t, 3, fastCfg())
	c.setDead("b", true)
	nodes[2].down.Store(true) // c fails on the wire rather than in gossip
	app := nodes[0].writer().AppenderV2(context.Background())
	writeSeries(t, app, 10, 1000, func(i int) float64 { return 1 })
	err := app.Commit()
	require.ErrorIs(t, err, ErrUnavailable)
	var u interface{ Unavailable() bool }
	require.ErrorAs(t, err, &u)
	require.Empty(t, nodes[0].writer().Backlog(), "no hints for a write that was not acknowledged")
}

func TestConsistencyOneAndAll(t *testing.T) {
	cfg := fastCfg()
	cfg.WriteConsistency = ConsistencyOne
	c, nodes := threeNodes(t, 3, cfg)
	c.setDead("b", true)
	c.setDead("c", true)
	app := nodes[0].writer().AppenderV2(context.Background())
	writeSeries(t, app, 5, 1000, func(i int) float64 { return 1 })
	require.NoError(t, app.Commit())

	cfg.WriteConsistency = ConsistencyAll
	nodes[0].restart(t, cfg, c)
	c.setDead("b", false)
	app = nodes[0].writer().AppenderV2(context.Background())
	writeSeries(t, app, 5, 2000, func(i int) float64 { return 1 })
	require.ErrorIs(t, app.Commit(), ErrUnavailable)
}

func TestRemoteConflictIsRejection(t *testing.T) {
	_, nodes := threeNodes(t, 3, fastCfg())
	ls := testSeries(1)
	// b already holds another value at t=1000.
	bapp := nodes[1].db.AppenderV2(context.Background())
	_, err := bapp.Append(0, ls, 0, 1000, 7, nil, nil, storage.AppendV2Options{})
	require.NoError(t, err)
	require.NoError(t, bapp.Commit())

	app := nodes[0].writer().AppenderV2(context.Background())
	_, err = app.Append(0, ls, 0, 1000, 8, nil, nil, storage.AppendV2Options{})
	require.NoError(t, err, "a owns the series and has no sample there yet")
	_, err = app.Append(0, testSeries(2), 0, 1000, 9, nil, nil, storage.AppendV2Options{})
	require.NoError(t, err)
	err = app.Commit()
	var rej *RejectedError
	require.ErrorAs(t, err, &rej)
	require.NotErrorIs(t, err, ErrUnavailable)
	require.Len(t, rej.Rejections, 1)
	require.Equal(t, ls, rej.Rejections[0].Labels)
	require.Equal(t, int64(1000), rej.Rejections[0].T)
	require.ErrorIs(t, rej.Rejections[0].Err, storage.ErrDuplicateSampleForTimestamp)
	// The other sample is everywhere.
	for _, n := range nodes {
		require.Equal(t, map[int64]float64{1000: 9}, samples(t, n.db)[testSeries(2).String()])
	}
}

func TestLocalRejectionIsSynchronousAndNotForwarded(t *testing.T) {
	_, nodes := threeNodes(t, 3, fastCfg())
	ls := testSeries(3)
	aapp := nodes[0].db.AppenderV2(context.Background())
	_, err := aapp.Append(0, ls, 0, 1000, 1, nil, nil, storage.AppendV2Options{})
	require.NoError(t, err)
	require.NoError(t, aapp.Commit())

	app := nodes[0].writer().AppenderV2(context.Background())
	_, err = app.Append(0, ls, 0, 1000, 2, nil, nil, storage.AppendV2Options{})
	require.ErrorIs(t, err, storage.ErrDuplicateSampleForTimestamp)
	require.NoError(t, app.Commit())
	require.Empty(t, samples(t, nodes[1].db))
}

func TestRollbackWritesNothing(t *testing.T) {
	_, nodes := threeNodes(t, 3, fastCfg())
	app := nodes[0].writer().AppenderV2(context.Background())
	writeSeries(t, app, 20, 1000, func(i int) float64 { return 1 })
	require.NoError(t, app.Rollback())
	for _, n := range nodes {
		require.Empty(t, samples(t, n.db))
	}
	require.Error(t, app.Commit())
}

func TestNoRingIsUnavailable(t *testing.T) {
	c := &cluster{dead: map[string]bool{}}
	n := startNode(t, "a", fastCfg(), c)
	app := n.writer().AppenderV2(context.Background())
	writeSeries(t, app, 3, 1000, func(i int) float64 { return 1 })
	require.ErrorIs(t, app.Commit(), ErrUnavailable)
	require.Empty(t, samples(t, n.db))
}

func TestSingleNodeIsLocalAppender(t *testing.T) {
	c := &cluster{dead: map[string]bool{}}
	n := startNode(t, "a", fastCfg(), c)
	r, err := ring.New([]ring.Member{{Name: "a", Addr: n.addr}}, 1, 1)
	require.NoError(t, err)
	c.ring = r
	app := n.writer().AppenderV2(context.Background())
	_, isRouting := app.(*appender)
	require.False(t, isRouting, "a ring of one needs no routing")
	writeSeries(t, app, 3, 1000, func(i int) float64 { return 1 })
	require.NoError(t, app.Commit())
	require.Len(t, samples(t, n.db), 3)
}

func TestHintsSurviveRestart(t *testing.T) {
	cfg := fastCfg()
	cfg.HintsDir = t.TempDir()
	c, nodes := threeNodes(t, 3, cfg)
	a := nodes[0]
	c.setDead("c", true)
	app := a.writer().AppenderV2(context.Background())
	writeSeries(t, app, 30, 1000, func(i int) float64 { return float64(i) })
	require.NoError(t, app.Commit())
	require.Equal(t, 1, a.writer().Backlog()["c"].Hints)

	a.restart(t, cfg, c)
	require.Equal(t, 1, a.writer().Backlog()["c"].Hints, "reloaded from HintsDir")

	c.setDead("c", false)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- a.writer().Run(ctx) }()
	defer func() { cancel(); require.NoError(t, <-done) }()
	require.Eventually(t, func() bool { return len(samples(t, nodes[2].db)) == 30 }, 10*time.Second, 20*time.Millisecond)
	require.Eventually(t, func() bool { return len(a.writer().Backlog()) == 0 }, 5*time.Second, 20*time.Millisecond)
}

func TestHintBytesBounded(t *testing.T) {
	cfg := fastCfg()
	cfg.MaxHintBytesPerPeer = 1
	c, nodes := threeNodes(t, 3, cfg)
	c.setDead("c", true)
	app := nodes[0].writer().AppenderV2(context.Background())
	writeSeries(t, app, 5, 1000, func(i int) float64 { return 1 })
	require.NoError(t, app.Commit())
	require.Empty(t, nodes[0].writer().Backlog(), "a hint over the limit is dropped")
}

func TestPeerRestartResyncsSeriesCache(t *testing.T) {
	c, nodes := threeNodes(t, 3, fastCfg())
	app := nodes[0].writer().AppenderV2(context.Background())
	writeSeries(t, app, 50, 1000, func(i int) float64 { return float64(i) })
	require.NoError(t, app.Commit())
	// b restarts: its series tables are gone; a's cache still says acked.
	nodes[1].restart(t, fastCfg(), c)
	app = nodes[0].writer().AppenderV2(context.Background())
	writeSeries(t, app, 50, 2000, func(i int) float64 { return float64(i) })
	require.NoError(t, app.Commit())
	got := samples(t, nodes[1].db)
	for i := range 50 {
		require.Equal(t, map[int64]float64{1000: float64(i), 2000: float64(i)}, got[testSeries(i).String()])
	}
}

func TestSlowPeerFailsOverToHint(t *testing.T) {
	cfg := fastCfg()
	cfg.Timeout = 200 * time.Millisecond
	cfg.MaxInflightPerPeer = 1
	c, nodes := threeNodes(t, 3, cfg)
	_ = c
	hold := make(chan struct{})
	nodes[2].hold = hold
	defer close(hold)
	start := time.Now()
	app := nodes[0].writer().AppenderV2(context.Background())
	writeSeries(t, app, 5, 1000, func(i int) float64 { return 1 })
	require.NoError(t, app.Commit())
	require.Less(t, time.Since(start), 2*time.Second, "bounded by the timeout")
	require.Equal(t, 1, nodes[0].writer().Backlog()["c"].Hints)
}

// A peer that stops answering without gossip noticing (a network cut) holds
// a write up only StragglerTimeout once the others made the quorum; it gets
// a hint instead.
func TestStragglerGetsHintAfterQuorum(t *testing.T) {
	cfg := fastCfg()
	cfg.Timeout = 10 * time.Second
	cfg.StragglerTimeout = 100 * time.Millisecond
	_, nodes := threeNodes(t, 3, cfg)
	hold := make(chan struct{})
	nodes[2].hold = hold
	defer close(hold)
	start := time.Now()
	app := nodes[0].writer().AppenderV2(context.Background())
	writeSeries(t, app, 5, 1000, func(int) float64 { return 1 })
	require.NoError(t, app.Commit())
	require.Less(t, time.Since(start), 2*time.Second, "not the 10s forward timeout")
	require.Equal(t, 1, nodes[0].writer().Backlog()["c"].Hints)
	require.Len(t, samples(t, nodes[1].db), 5, "the quorum holds the write")
}

// While a cluster grows past fewer members than RF, partitions have fewer
// settled owners than the write quorum: acks are counted against what
// exists, so writes go on (settled {a}, moving to {a, b, c}).
func TestGrowingClusterWritesWithFewSettledOwners(t *testing.T) {
	c, nodes := threeNodes(t, 3, fastCfg())
	members := c.ring.Members()
	parts := make([]ring.Partition, ring.NumPartitions)
	for p := range parts {
		parts[p] = ring.Partition{Settled: []string{"a"}, Target: []string{"a", "b", "c"}, Since: 2}
	}
	r, err := ring.NewAssigned(members, 3, 2, parts)
	require.NoError(t, err)
	c.mu.Lock()
	c.ring = r
	c.mu.Unlock()
	app := nodes[1].writer().AppenderV2(context.Background()) // b: a target, not settled
	writeSeries(t, app, 20, 1000, func(int) float64 { return 1 })
	require.NoError(t, app.Commit())
	for _, n := range nodes {
		require.Len(t, samples(t, n.db), 20, "node %s", n.name)
	}
}

// TestHintsOfRemovedPeerForgotten: a peer the cluster removed from the ring
// (dead-node timeout) loses its hints after HintsForgetAfter, files
// included; until then, and while it is a member, they are kept.
func TestHintsOfRemovedPeerForgotten(t *testing.T) {
	var now atomic.Int64
	now.Store(time.Unix(1_700_000_000, 0).UnixNano())
	cfg := fastCfg()
	cfg.HintsDir = t.TempDir()
	cfg.HintsForgetAfter = time.Minute
	cfg.Now = func() time.Time { return time.Unix(0, now.Load()) }
	c, nodes := threeNodes(t, 3, cfg)
	a, gone := nodes[0], nodes[2]
	gone.down.Store(true)
	c.setDead(gone.name, true)
	app := a.writer().AppenderV2(context.Background())
	writeSeries(t, app, 20, 1000, func(i int) float64 { return float64(i) })
	require.NoError(t, app.Commit())
	require.Equal(t, 1, a.writer().Backlog()[gone.name].Hints)

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- a.writer().Run(ctx) }()
	defer func() { cancel(); require.NoError(t, <-done) }()

	// Still a member: kept however long it is down.
	now.Add(int64(time.Hour))
	time.Sleep(100 * time.Millisecond)
	require.Equal(t, 1, a.writer().Backlog()[gone.name].Hints)

	// Removed from the ring: kept for HintsForgetAfter, then deleted.
	r, err := ring.New([]ring.Member{{Name: "a", Addr: nodes[0].addr}, {Name: "b", Addr: nodes[1].addr}}, 2, 2)
	require.NoError(t, err)
	c.mu.Lock()
	c.ring = r
	c.mu.Unlock()
	time.Sleep(100 * time.Millisecond)
	require.Equal(t, 1, a.writer().Backlog()[gone.name].Hints)
	now.Add(int64(2 * time.Minute))
	require.Eventually(t, func() bool { return a.writer().Backlog()[gone.name].Hints == 0 }, 5*time.Second, 20*time.Millisecond)
	files, err := filepath.Glob(filepath.Join(cfg.HintsDir, "*", "*"+hintExt))
	require.NoError(t, err)
	require.Empty(t, files)
}

package cluster

import (
	"cmp"
	"context"
	"errors"
	"slices"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"

	"github.com/kilnhq/kiln/cluster/ring"
)

// Mover copies and deletes partition data for the cluster. It is
// implemented by the node (streaming the storage's export over HTTP) and
// must be safe for concurrent use.
type Mover interface {
	// Fetch copies partition p from a settled owner into this node,
	// durably, merging with what is there (fetching twice is harmless).
	Fetch(ctx context.Context, p uint16, from ring.Member) (bytes int64, err error)
	// Drop deletes partition p's data on this node; dropping a partition
	// it does not hold must be cheap.
	Drop(ctx context.Context, p uint16) error
}

type nopMover struct{}

func (nopMover) Fetch(context.Context, uint16, ring.Member) (int64, error) { return 0, nil }
func (nopMover) Drop(context.Context, uint16) error                        { return nil }

type moveResult struct {
	p     uint16
	epoch uint64
	from  string
	bytes int64
	dur   time.Duration
	err   error
}

type retry struct {
	n         int
	notBefore time.Time
}

// moves is the mover loop's state, owned by its goroutine.
type moves struct {
	c          *Cluster
	m          Mover
	inflight   map[uint16]string // partition -> source
	load       map[string]int    // source -> fetches in flight
	backoff    map[uint16]retry
	fetched    map[uint16]uint64 // partition -> epoch the copy was fetched at
	unreported map[uint16]bool
	held       [ring.NumPartitions]bool // partitions this node may hold data of
	dropSince  map[uint16]time.Time
	swept      bool
	results    chan moveResult
	// The epoch gate: fetches start once every alive member applied the
	// ring's epoch (and one ReconcileInterval more passed).
	gateEpoch uint64
	gateSince time.Time
	gateOpen  time.Time
	avg       time.Duration // moving average duration of one fetch
	// resynced is when the gate last pulled the state of members behind on
	// the epoch; resyncIdle is false while that pull runs.
	resynced   time.Time
	resyncIdle atomic.Bool
	reported   time.Time
}

// moveLoop runs on every node for as long as Run: it fetches the
// partitions this node is a new target owner of, reports them ready, and
// drops those it no longer owns.
func (c *Cluster) moveLoop(ctx context.Context, r *raft.Raft) {
	mv := &moves{
		c: c, m: c.cfg.Mover,
		inflight: map[uint16]string{}, load: map[string]int{}, backoff: map[uint16]retry{},
		fetched: map[uint16]uint64{}, unreported: map[uint16]bool{}, dropSince: map[uint16]time.Time{},
		results: make(chan moveResult, c.cfg.MaxConcurrentMoves),
	}
	mv.resyncIdle.Store(true)
	if mv.m == nil {
		mv.m = nopMover{}
	}
	tick := time.NewTicker(c.cfg.ReconcileInterval)
	defer tick.Stop()
	for {
		mv.step(ctx, r)
		select {
		case <-ctx.Done():
			for len(mv.inflight) > 0 {
				mv.done(<-mv.results)
			}
			return
		case <-tick.C:
		case <-c.ringChanged:
		case res := <-mv.results:
			mv.done(res)
		}
	}
}

func (mv *moves) step(ctx context.Context, r *raft.Raft) {
	c := mv.c
	rg := c.Ring()
	self := c.cfg.NodeName
	if _, ok := rg.Member(self); !ok || rg.RF() == 0 || ctx.Err() != nil {
		return
	}
	now := c.cfg.Now()
	if !mv.swept && caughtUp(r) {
		// Once this node applied what the leader committed, everything it
		// may hold from an earlier life and does not own is dropped.
		mv.swept = true
		for p := range mv.held {
			mv.held[p] = true
		}
	}
	for p := range uint16(ring.NumPartitions) {
		if !rg.MayDrop(self, p) {
			mv.held[p] = true
		}
		if e, ok := mv.fetched[p]; ok && (e < rg.TargetEpoch(p) || rg.Owns(self, p) || !rg.IsTarget(self, p)) {
			delete(mv.fetched, p)
			delete(mv.unreported, p)
		}
	}

	toFetch := rg.PartitionsToFetch(self)
	remaining := 0
	for _, p := range toFetch {
		if _, ok := mv.fetched[p]; !ok {
			remaining++
		}
	}
	if remaining > 0 && mv.avg > 0 {
		c.moveETA.Store(int64(mv.avg) * int64(remaining) / int64(c.cfg.MaxConcurrentMoves))
	} else {
		c.moveETA.Store(0)
	}
	if remaining > 0 && mv.gate(rg.Epoch(), now) {
		for _, p := range toFetch {
			if len(mv.inflight) >= c.cfg.MaxConcurrentMoves {
				break
			}
			if _, busy := mv.inflight[p]; busy {
				continue
			}
			if _, ok := mv.fetched[p]; ok {
				continue
			}
			if b, ok := mv.backoff[p]; ok && now.Before(b.notBefore) {
				continue
			}
			src, ok := mv.source(rg, p)
			if !ok {
				continue // no settled owner alive: wait for one
			}
			mv.start(ctx, p, rg.Epoch(), src)
		}
	}
	// Reports are batched: one Raft entry per ReconcileInterval, per 64
	// copies, or when no fetch is left in flight.
	if len(mv.unreported) >= 64 || len(mv.inflight) == 0 || now.Sub(mv.reported) >= c.cfg.ReconcileInterval {
		mv.reported = now
		mv.report(ctx)
	}
	mv.drop(ctx, rg, now)
}

// gate reports whether fetches may start at epoch e: a write coordinated by
// a node still on an earlier epoch would skip this node, and a copy taken
// before that write landed on the old owners would miss it. So the node
// waits until every alive member gossips that it applied e, then one
// ReconcileInterval for writes in flight. A member that never catches up
// (cut off from Raft) opens the gate after 30 ReconcileIntervals.
func (mv *moves) gate(e uint64, now time.Time) bool {
	c := mv.c
	if mv.gateEpoch != e {
		mv.gateEpoch, mv.gateSince, mv.gateOpen = e, now, time.Time{}
	}
	if mv.gateOpen.IsZero() {
		var behind, addrs []string
		for _, p := range c.gossip.peerMap() {
			if p.Name != c.cfg.NodeName && p.alive() && p.MetaErr == nil && p.Meta.HasState && p.Meta.Epoch < e {
				behind = append(behind, p.Name)
				if p.GossipAddr != "" {
					addrs = append(addrs, p.GossipAddr)
				}
			}
		}
		if len(behind) > 0 && now.Sub(mv.gateSince) < 30*c.cfg.ReconcileInterval {
			mv.resync(now, behind, addrs)
			return false
		}
		if len(behind) > 0 {
			c.logger.Warn("members did not apply the epoch; fetching anyway", "epoch", e, "behind", behind)
		}
		mv.gateOpen = now
	}
	return now.Sub(mv.gateOpen) >= c.cfg.ReconcileInterval
}

// resync pulls the gossip state of members that look behind on the epoch
// for more than two ReconcileIntervals. A metadata broadcast lost on a
// loaded machine is otherwise repaired only by memberlist's periodic
// push-pull (30 s on LAN defaults), which held every move back that long;
// Join with a known member is exactly one push-pull with it.
func (mv *moves) resync(now time.Time, behind, addrs []string) {
	c := mv.c
	if len(addrs) == 0 || now.Sub(mv.gateSince) < 2*c.cfg.ReconcileInterval || now.Sub(mv.resynced) < 2*c.cfg.ReconcileInterval ||
		!mv.resyncIdle.CompareAndSwap(true, false) {
		return
	}
	mv.resynced = now
	c.logger.Info("members have not gossiped the ring epoch yet; pulling their state", "epoch", mv.gateEpoch, "members", behind)
	go func() {
		defer mv.resyncIdle.Store(true)
		if _, err := c.ml.Join(addrs); err != nil {
			c.logger.Debug("gossip resync failed", "members", behind, "err", err)
		}
	}()
}

// source picks an alive settled owner of p other than this node, the one
// with the fewest fetches in flight, rotating by partition among equals so
// that sources share the load.
func (mv *moves) source(rg *ring.Ring, p uint16) (ring.Member, bool) {
	var cands []ring.Member
	for _, m := range rg.Owners(p) {
		if m.Name != mv.c.cfg.NodeName && mv.c.Alive(m.Name) {
			cands = append(cands, m)
		}
	}
	if len(cands) == 0 {
		return ring.Member{}, false
	}
	k := int(p) % len(cands)
	cands = append(cands[k:], cands[:k]...)
	return slices.MinFunc(cands, func(a, b ring.Member) int { return cmp.Compare(mv.load[a.Name], mv.load[b.Name]) }), true
}

func (mv *moves) start(ctx context.Context, p uint16, epoch uint64, src ring.Member) {
	mv.inflight[p] = src.Name
	mv.load[src.Name]++
	go func() {
		t0 := time.Now()
		n, err := mv.m.Fetch(ctx, p, src)
		mv.results <- moveResult{p: p, epoch: epoch, from: src.Name, bytes: n, dur: time.Since(t0), err: err}
	}()
}

func (mv *moves) done(res moveResult) {
	c := mv.c
	delete(mv.inflight, res.p)
	mv.held[res.p] = true // even a failed fetch may have written some
	if mv.load[res.from]--; mv.load[res.from] <= 0 {
		delete(mv.load, res.from)
	}
	c.bytesMoved.Add(res.bytes)
	c.metrics.moveBytes.Add(float64(res.bytes))
	if res.err != nil {
		c.metrics.moves.WithLabelValues("fetch_failed").Inc()
		b := mv.backoff[res.p]
		b.n++
		d := c.cfg.ReconcileInterval << min(b.n, 6)
		b.notBefore = c.cfg.Now().Add(d)
		mv.backoff[res.p] = b
		if !errors.Is(res.err, context.Canceled) {
			c.logger.Warn("partition fetch failed; retrying", "partition", res.p, "from", res.from, "attempt", b.n, "retry_in", d, "err", res.err)
		}
		return
	}
	c.metrics.moves.WithLabelValues("fetched").Inc()
	delete(mv.backoff, res.p)
	mv.fetched[res.p] = res.epoch
	mv.unreported[res.p] = true
	if mv.avg == 0 {
		mv.avg = res.dur
	} else {
		mv.avg = (7*mv.avg + res.dur) / 8
	}
}

// report tells the leader which partitions this node now holds, batched by
// the epoch they were fetched at; a failed report is retried next step.
func (mv *moves) report(ctx context.Context) {
	if len(mv.unreported) == 0 {
		return
	}
	byEpoch := map[uint64][]uint16{}
	for p := range mv.unreported {
		byEpoch[mv.fetched[p]] = append(byEpoch[mv.fetched[p]], p)
	}
	for e, ps := range byEpoch {
		slices.Sort(ps)
		rctx, cancel := context.WithTimeout(ctx, raftTimeout)
		err := mv.c.Propose(rctx, CmdPartitionReady, readyPayload{Node: mv.c.cfg.NodeName, Epoch: e, Partitions: ps})
		cancel()
		if err != nil {
			mv.c.logger.Debug("partition ready report failed; retrying", "partitions", len(ps), "err", err)
			continue
		}
		for _, p := range ps {
			delete(mv.unreported, p)
		}
	}
}

// drop deletes the data of partitions this node is neither a settled nor a
// target owner of, once that held for DropDelay.
func (mv *moves) drop(ctx context.Context, rg *ring.Ring, now time.Time) {
	c := mv.c
	for i := range mv.held {
		p := uint16(i)
		if !mv.held[p] {
			continue
		}
		if _, busy := mv.inflight[p]; busy || !rg.MayDrop(c.cfg.NodeName, p) {
			delete(mv.dropSince, p)
			continue
		}
		since, ok := mv.dropSince[p]
		if !ok {
			mv.dropSince[p] = now
			continue
		}
		if now.Sub(since) < c.cfg.DropDelay || ctx.Err() != nil {
			continue
		}
		if err := mv.m.Drop(ctx, p); err != nil {
			c.metrics.moves.WithLabelValues("drop_failed").Inc()
			c.logger.Warn("partition drop failed; retrying", "partition", p, "err", err)
			continue
		}
		c.metrics.moves.WithLabelValues("dropped").Inc()
		mv.held[p] = false
		delete(mv.dropSince, p)
	}
}

// caughtUp reports whether this node knows a leader and applied everything
// it knows to be committed.
func caughtUp(r *raft.Raft) bool {
	_, id := r.LeaderWithID()
	return id != "" && r.CommitIndex() > 0 && r.AppliedIndex() >= r.CommitIndex()
}

package cluster

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/hashicorp/raft"
)

// Run starts Raft, joins gossip, bootstraps a new cluster or waits to be
// added by the leader, and reconciles membership while this node leads. It
// returns when ctx is done, after leaving gossip and shutting Raft down. Run
// must be called at most once.
func (c *Cluster) Run(ctx context.Context) error {
	if !c.running.CompareAndSwap(false, true) {
		return errors.New("cluster: Run called twice")
	}
	r, err := raft.NewRaft(c.raftConf, c.fsm, c.logs, c.stable, c.snaps, c.raftTrans)
	if err != nil {
		c.running.Store(false)
		return errors.Join(fmt.Errorf("cluster: start raft: %w", err), c.Close())
	}
	c.raft.Store(r)
	c.logger.Info("cluster node started", "gossip", c.gossipAddr, "raft", c.raftAddr,
		"has_raft_state", c.hasState.Load(), "peers", c.cfg.Peers)

	var wg sync.WaitGroup
	wg.Go(func() { c.joinLoop(ctx) })
	// Not waited for: a join in flight may hang on a dial until memberlist's
	// timeout; it ends when memberlist shuts down.
	go c.reconnectLoop(ctx)
	wg.Go(func() { c.metaLoop(ctx) })
	wg.Go(func() { c.moveLoop(ctx, r) })

	tick := time.NewTicker(c.cfg.ReconcileInterval)
	defer tick.Stop()
	leaderCh := r.LeaderCh()
	for {
		c.step(r)
		select {
		case <-ctx.Done():
			wg.Wait() // the mover's fetches end before gossip and Raft do
			return c.shutdown(r)
		case <-tick.C:
		case <-c.gossip.changed:
		case <-leaderCh:
		}
	}
}

func (c *Cluster) shutdown(r *raft.Raft) error {
	var errs []error
	if r.State() == raft.Leader {
		// Hand leadership over so the others need not wait for an election timeout.
		if err := r.LeadershipTransfer().Error(); err != nil && !errors.Is(err, raft.ErrNotLeader) {
			c.logger.Debug("leadership transfer on shutdown failed", "err", err)
		}
	}
	// Leaving tells the others at once instead of after failure detection;
	// it fails harmlessly when no one is left to hear it.
	if err := c.ml.Leave(time.Second); err != nil {
		c.logger.Debug("leave gossip", "err", err)
	}
	c.running.Store(false)
	errs = append(errs, c.Close())
	c.logger.Info("cluster node stopped")
	return errors.Join(errs...)
}

// joinLoop joins the configured peers, retrying until one answers. Without
// peers there is nothing to join: the node is its own seed.
func (c *Cluster) joinLoop(ctx context.Context) {
	peers := slices.DeleteFunc(slices.Clone(c.cfg.Peers), func(p string) bool {
		return p == "" || p == c.gossipAddr // joining oneself proves nothing
	})
	if len(peers) == 0 {
		c.joined.Store(true)
		return
	}
	for attempt := 1; ; attempt++ {
		n, err := c.ml.Join(peers)
		if n > 0 {
			c.joined.Store(true)
			c.logger.Info("joined gossip", "contacted", n, "members", c.ml.NumMembers())
			select {
			case c.gossip.changed <- struct{}{}:
			default:
			}
			return
		}
		lvl := slog.LevelDebug
		if attempt%10 == 1 {
			lvl = slog.LevelWarn
		}
		c.logger.Log(ctx, lvl, "cannot join gossip peers yet; retrying", "peers", peers, "attempt", attempt, "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(c.cfg.JoinRetryInterval):
		}
	}
}

// reconnectLoop joins, every ReconnectInterval, the members gossip reports
// dead (a graceful leave is final) together with the configured peers.
// memberlist stops probing a member once it declared it dead, so after a
// network partition heals each side would go on believing the other dead;
// a successful push/pull with any of them merges the two views again.
func (c *Cluster) reconnectLoop(ctx context.Context) {
	tick := time.NewTicker(c.cfg.ReconnectInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		var addrs []string
		for name, p := range c.gossip.peerMap() {
			if name != c.cfg.NodeName && p.State == memberlist.StateDead && p.GossipAddr != "" {
				addrs = append(addrs, p.GossipAddr)
			}
		}
		if len(addrs) == 0 {
			continue
		}
		for _, s := range c.cfg.Peers {
			if s != "" && s != c.gossipAddr && !slices.Contains(addrs, s) {
				addrs = append(addrs, s)
			}
		}
		done := make(chan struct{})
		go func() {
			defer close(done)
			if n, err := c.ml.Join(addrs); n > 0 {
				c.logger.Info("reconnected gossip", "contacted", n, "tried", addrs)
			} else {
				c.logger.Debug("reconnect to dead members failed", "tried", addrs, "err", err)
			}
		}()
		select {
		case <-ctx.Done():
			return
		case <-done:
		}
	}
}

// step runs on Run's goroutine every tick and on every gossip or leadership
// event.
func (c *Cluster) step(r *raft.Raft) {
	if !c.hasState.Load() {
		c.maybeBootstrap(r)
	}
	if !c.hasState.Load() && (r.LastIndex() > 0 || len(r.GetConfiguration().Configuration().Servers) > 0) {
		c.markHasState()
	}
	_, leader := r.LeaderWithID()
	if leader != c.lastLeader {
		c.lastLeader = leader
		c.logger.Info("raft leader changed", "leader", string(leader), "term", r.CurrentTerm(), "self_is_leader", leader == raft.ServerID(c.cfg.NodeName))
	}
	c.metrics.observeRaft(r)
	c.metrics.observeGossip(c.gossip.peerMap(), c.ml.Members())
	if r.State() == raft.Leader {
		c.reconcile(r)
	} else {
		clear(c.deadSince) // a later leadership times deaths afresh
	}
}

// markHasState gossips that this node's Raft holds state, so that no member
// that sees it bootstraps a separate cluster.
func (c *Cluster) markHasState() {
	c.hasState.Store(true)
	c.updateMeta(func(m *nodeMeta) { m.HasState = true })
}

// metaLoop broadcasts metadata changes; UpdateNode waits for the
// broadcast, which neither Run nor the FSM must.
func (c *Cluster) metaLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-c.metaChanged:
			if err := c.ml.UpdateNode(time.Second); err != nil {
				c.logger.Debug("gossip metadata update", "err", err)
			}
		}
	}
}

// maybeBootstrap bootstraps a new cluster when it is safe: gossip joined, no
// visible member has Raft state, at least BootstrapExpect members are visible
// (and, with Peers, have stayed the same for BootstrapSettle, so partial
// views after a join have converged) and this node is one of the
// BootstrapExpect lowest-named of them. Every such node computes the same
// configuration, which Raft accepts from each.
func (c *Cluster) maybeBootstrap(r *raft.Raft) {
	if !c.joined.Load() {
		return
	}
	type cand struct{ name, raftAddr string }
	var visible []cand
	for _, p := range c.gossip.peerMap() {
		if !p.alive() || p.MetaErr != nil {
			continue
		}
		if p.Meta.HasState && p.Name != c.cfg.NodeName {
			return // a cluster exists: its leader will add us
		}
		visible = append(visible, cand{p.Name, p.Meta.RaftAddr})
	}
	if len(visible) < c.cfg.BootstrapExpect {
		return
	}
	slices.SortFunc(visible, func(a, b cand) int { return strings.Compare(a.name, b.name) })
	if len(c.cfg.Peers) > 0 {
		var key strings.Builder
		for _, v := range visible {
			key.WriteString(v.name + "\x00" + v.raftAddr + "\x00")
		}
		now := c.cfg.Now()
		if key.String() != c.bootView {
			c.bootView, c.bootViewSince = key.String(), now
			return
		}
		if now.Sub(c.bootViewSince) < c.cfg.BootstrapSettle {
			return
		}
	}
	chosen := visible[:c.cfg.BootstrapExpect]
	if !slices.ContainsFunc(chosen, func(x cand) bool { return x.name == c.cfg.NodeName }) {
		return
	}
	var conf raft.Configuration
	for _, x := range chosen {
		conf.Servers = append(conf.Servers, raft.Server{Suffrage: raft.Voter, ID: raft.ServerID(x.name), Address: raft.ServerAddress(x.raftAddr)})
	}
	if err := r.BootstrapCluster(conf).Error(); err != nil && !errors.Is(err, raft.ErrCantBootstrap) {
		c.logger.Error("raft bootstrap failed", "err", err)
		return
	}
	c.logger.Info("bootstrapped a new cluster", "voters", len(conf.Servers))
	c.markHasState()
}

func newClusterID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails (Go 1.24+)
	return hex.EncodeToString(b[:])
}

// newStdLogger adapts slog for libraries that take a *log.Logger.
func newStdLogger(l *slog.Logger, component string) *log.Logger {
	return log.New(levelWriter{logger: l, component: component}, "", 0)
}

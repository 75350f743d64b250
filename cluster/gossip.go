package cluster

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"sync"
	"sync/atomic"

	"github.com/hashicorp/memberlist"
)

// ErrBadMeta reports gossip node metadata that cannot be decoded.
var ErrBadMeta = errors.New("cluster: bad node metadata")

// nodeMeta is what every node gossips about itself (memberlist NodeMeta,
// at most memberlist.MetaMaxSize = 512 bytes).
type nodeMeta struct {
	APIAddr  string `json:"api"`
	RaftAddr string `json:"raft"`
	Zone     string `json:"zone,omitempty"`
	// HasState is true once this node's Raft has a log or snapshot: a node
	// that sees such a member never bootstraps a cluster of its own.
	HasState bool `json:"state,omitempty"`
	// Epoch is the assignment epoch this node applied: a node fetches a
	// partition only once every alive member routes writes by its epoch.
	Epoch uint64 `json:"epoch,omitempty"`
	// Moving is how many partitions were still moving in this node's
	// ring of that epoch. Within an epoch moves only settle, so a leaving
	// node knows a member has applied the settle that emptied it once the
	// member gossips its epoch with no more moving than it saw.
	Moving int `json:"moving,omitempty"`
}

func (m nodeMeta) encode() []byte {
	b, _ := json.Marshal(m) // a struct of strings and a bool cannot fail
	return b
}

// decodeMeta parses metadata received from the network.
func decodeMeta(b []byte) (nodeMeta, error) {
	var m nodeMeta
	if len(b) == 0 {
		return m, fmt.Errorf("%w: empty", ErrBadMeta)
	}
	if len(b) > memberlist.MetaMaxSize {
		return m, fmt.Errorf("%w: %d bytes", ErrBadMeta, len(b))
	}
	if err := json.Unmarshal(b, &m); err != nil {
		return nodeMeta{}, fmt.Errorf("%w: %w", ErrBadMeta, err)
	}
	return m, nil
}

// peer is one gossip member as this node last heard of it.
type peer struct {
	Name       string
	GossipAddr string
	Meta       nodeMeta
	MetaErr    error
	State      memberlist.NodeStateType // alive, dead or left (suspect is not an event)
}

func (p peer) alive() bool {
	return p.State == memberlist.StateAlive || p.State == memberlist.StateSuspect
}

// gossipDelegate is memberlist's Delegate and EventDelegate. Events arrive
// inline on memberlist goroutines, so they only swap a copy-on-write map and
// signal the reconciler without blocking.
type gossipDelegate struct {
	self   string
	logger *slog.Logger

	mu    sync.Mutex // serialises writers of peers
	peers atomic.Pointer[map[string]peer]
	meta  atomic.Pointer[nodeMeta]

	changed chan struct{} // capacity 1: "something changed, reconcile"
}

func newGossipDelegate(self string, meta nodeMeta, logger *slog.Logger) *gossipDelegate {
	d := &gossipDelegate{self: self, logger: logger, changed: make(chan struct{}, 1)}
	d.meta.Store(&meta)
	m := map[string]peer{}
	d.peers.Store(&m)
	return d
}

func (d *gossipDelegate) peerMap() map[string]peer { return *d.peers.Load() }

func (d *gossipDelegate) update(n *memberlist.Node, state memberlist.NodeStateType) {
	p := peer{Name: n.Name, GossipAddr: n.Address(), State: state}
	p.Meta, p.MetaErr = decodeMeta(n.Meta)
	d.mu.Lock()
	old := d.peerMap()
	prev, had := old[n.Name]
	next := maps.Clone(old)
	next[n.Name] = p
	d.peers.Store(&next)
	d.mu.Unlock()

	if p.MetaErr != nil && n.Name != d.self {
		d.logger.Warn("gossip member sent bad metadata", "member", n.Name, "err", p.MetaErr)
	}
	switch {
	case !had || (!prev.alive() && p.alive()):
		if n.Name != d.self {
			d.logger.Info("gossip member joined", "member", n.Name, "addr", p.GossipAddr)
		}
	case prev.alive() && !p.alive():
		d.logger.Warn("gossip member gone", "member", n.Name, "state", stateName(state))
	}
	select {
	case d.changed <- struct{}{}:
	default:
	}
}

// NotifyJoin, NotifyLeave and NotifyUpdate implement memberlist.EventDelegate.
func (d *gossipDelegate) NotifyJoin(n *memberlist.Node)   { d.update(n, memberlist.StateAlive) }
func (d *gossipDelegate) NotifyUpdate(n *memberlist.Node) { d.update(n, memberlist.StateAlive) }
func (d *gossipDelegate) NotifyLeave(n *memberlist.Node) {
	st := n.State
	if st != memberlist.StateLeft {
		st = memberlist.StateDead
	}
	d.update(n, st)
}

// NodeMeta implements memberlist.Delegate.
func (d *gossipDelegate) NodeMeta(limit int) []byte {
	b := d.meta.Load().encode()
	if len(b) > limit {
		d.logger.Error("gossip metadata exceeds the limit", "bytes", len(b), "limit", limit)
		return nil
	}
	return b
}

func (d *gossipDelegate) NotifyMsg([]byte)                {}
func (d *gossipDelegate) GetBroadcasts(int, int) [][]byte { return nil }
func (d *gossipDelegate) LocalState(bool) []byte          { return nil }
func (d *gossipDelegate) MergeRemoteState([]byte, bool)   {}

func stateName(s memberlist.NodeStateType) string {
	switch s {
	case memberlist.StateAlive:
		return "alive"
	case memberlist.StateSuspect:
		return "suspect"
	case memberlist.StateDead:
		return "dead"
	case memberlist.StateLeft:
		return "left"
	}
	return "unknown"
}

// levelWriter turns the "[LEVEL] text" lines memberlist and hclog print into
// slog records, so the libraries log through Kiln's logger.
type levelWriter struct {
	logger    *slog.Logger
	component string
}

func (w levelWriter) Write(p []byte) (int, error) {
	line := bytes.TrimSpace(p)
	lvl := slog.LevelInfo
	for _, l := range []struct {
		tag string
		lvl slog.Level
	}{{"[TRACE]", slog.LevelDebug - 4}, {"[DEBUG]", slog.LevelDebug}, {"[INFO]", slog.LevelInfo}, {"[WARN]", slog.LevelWarn}, {"[ERR]", slog.LevelError}, {"[ERROR]", slog.LevelError}} {
		if i := bytes.Index(line, []byte(l.tag)); i >= 0 {
			lvl = l.lvl
			line = bytes.TrimSpace(line[i+len(l.tag):])
			break
		}
	}
	w.logger.Log(context.Background(), lvl, string(line), "component", w.component)
	return len(p), nil
}

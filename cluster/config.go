package cluster

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/hashicorp/raft"
)

// ErrConfig wraps every configuration error New reports.
var ErrConfig = errors.New("cluster: bad config")

// DefaultGossipPort is the gossip port when BindAddr has none.
const DefaultGossipPort = 7946

// raftPortOffset places Raft next to gossip when RaftBindAddr is not given.
const raftPortOffset = 1000

// Config configures a Cluster.
type Config struct {
	NodeName      string   // required, unique and stable across restarts
	ClusterName   string   // memberlist Config.Label: gossip from another cluster is refused
	BindAddr      string   // gossip host:port, TCP and UDP; port 0 picks a free port; "" = 0.0.0.0:7946
	AdvertiseAddr string   // "" = auto (memberlist's detection; a specific BindAddr host is used as is)
	Peers         []string // gossip host:port of members to join; retried until one answers
	// RaftBindAddr "" = the gossip host with gossip port+1000 (port 0 if the
	// gossip port is 0).
	RaftBindAddr      string
	RaftAdvertiseAddr string // "" = derived like AdvertiseAddr
	APIAddr           string // this node's HTTP address as peers reach it (ring.Member.Addr)
	Zone              string
	BootstrapExpect   int    // members that bootstrap a new cluster together; default 1
	ReplicationFactor int    // default 3, stored in Raft at bootstrap
	DataDir           string // Raft log and snapshots; "" = in memory

	// ReconcileInterval is how often the leader reconciles gossip, the ring
	// and the Raft voters, and how often bootstrap is reconsidered; default 1s.
	ReconcileInterval time.Duration
	// JoinRetryInterval is the pause between rounds of joining Peers; default 1s.
	JoinRetryInterval time.Duration
	// ReconnectInterval is how often members gossip reports dead (not
	// left) are joined again, with the configured Peers; default 5s.
	// memberlist never probes a member it declared dead, so without this
	// the two sides of a healed network partition would stay apart.
	ReconnectInterval time.Duration
	// BootstrapSettle is how long the set of visible members must stay the
	// same before a node with Peers bootstraps, so that gossip views
	// converge first; default 3 × ReconcileInterval. Nodes without Peers
	// bootstrap at once.
	BootstrapSettle time.Duration
	Now             func() time.Time // default time.Now

	// DeadNodeTimeout is how long gossip must report a member dead or
	// unreachable before the leader removes it (its partitions are then
	// copied to new owners); default 5m.
	DeadNodeTimeout time.Duration
	// Mover copies and deletes partition data; nil = moves are no-ops that
	// report ready at once.
	Mover Mover
	// MaxConcurrentMoves bounds the partitions this node fetches at once;
	// default 2.
	MaxConcurrentMoves int
	// MoveRate is the byte rate (per second) moves should not exceed;
	// default 64 MiB/s. Enforcing it is the Mover's job: the cluster only
	// carries the flag (--cluster.move-rate).
	MoveRate int64
	// DropDelay is how long a partition must stay out of this node's
	// settled and target owners before its data is dropped, so that reads
	// and fetches planned on an older ring finish first; default 1m.
	DropDelay time.Duration

	// Test seams; nil = the real network and production timings.
	RaftTransport   raft.Transport       // e.g. raft.InmemTransport; RaftBindAddr is then ignored
	GossipTransport memberlist.Transport // e.g. memberlist.MockNetwork; BindAddr is then ignored
	GossipTuning    func(*memberlist.Config)
	RaftTuning      func(*raft.Config)
}

func (c *Config) setDefaults() error {
	if c.NodeName == "" {
		return fmt.Errorf("%w: node name is required", ErrConfig)
	}
	if c.BindAddr == "" {
		c.BindAddr = net.JoinHostPort("0.0.0.0", strconv.Itoa(DefaultGossipPort))
	}
	if c.BootstrapExpect == 0 {
		c.BootstrapExpect = 1
	}
	if c.BootstrapExpect < 1 {
		return fmt.Errorf("%w: bootstrap expect %d < 1", ErrConfig, c.BootstrapExpect)
	}
	if c.ReplicationFactor == 0 {
		c.ReplicationFactor = 3
	}
	if c.ReplicationFactor < 1 {
		return fmt.Errorf("%w: replication factor %d < 1", ErrConfig, c.ReplicationFactor)
	}
	if c.ReconcileInterval <= 0 {
		c.ReconcileInterval = time.Second
	}
	if c.JoinRetryInterval <= 0 {
		c.JoinRetryInterval = time.Second
	}
	if c.ReconnectInterval <= 0 {
		c.ReconnectInterval = 5 * time.Second
	}
	if c.BootstrapSettle <= 0 {
		c.BootstrapSettle = 3 * c.ReconcileInterval
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.DeadNodeTimeout <= 0 {
		c.DeadNodeTimeout = 5 * time.Minute
	}
	if c.MaxConcurrentMoves <= 0 {
		c.MaxConcurrentMoves = 2
	}
	if c.MoveRate <= 0 {
		c.MoveRate = 64 << 20
	}
	if c.DropDelay <= 0 {
		c.DropDelay = time.Minute
	}
	return nil
}

// splitHostPort parses host:port where port may be empty or missing.
func splitHostPort(addr string) (string, int, error) {
	host, ps, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, fmt.Errorf("%w: address %q: %w", ErrConfig, addr, err)
	}
	if ps == "" {
		return host, 0, nil
	}
	p, err := strconv.Atoi(ps)
	if err != nil || p < 0 || p > 65535 {
		return "", 0, fmt.Errorf("%w: address %q: bad port", ErrConfig, addr)
	}
	return host, p, nil
}

// isSpecific reports whether host names one interface (not empty, 0.0.0.0 or ::).
func isSpecific(host string) bool {
	if host == "" {
		return false
	}
	ip := net.ParseIP(host)
	return ip == nil || !ip.IsUnspecified()
}

// FastTimings sets gossip and Raft timings for in-process tests on one
// machine: failures are detected and leaders elected in well under a second.
func FastTimings(c *Config) {
	c.ReconcileInterval = 100 * time.Millisecond
	c.JoinRetryInterval = 100 * time.Millisecond
	c.ReconnectInterval = 200 * time.Millisecond
	c.BootstrapSettle = 300 * time.Millisecond
	c.GossipTuning = func(m *memberlist.Config) {
		m.ProbeInterval = 100 * time.Millisecond
		m.ProbeTimeout = 50 * time.Millisecond
		m.GossipInterval = 20 * time.Millisecond
		m.PushPullInterval = 500 * time.Millisecond
		m.SuspicionMult = 2
		m.TCPTimeout = time.Second
		m.DeadNodeReclaimTime = 100 * time.Millisecond
	}
	c.RaftTuning = func(r *raft.Config) {
		r.HeartbeatTimeout = 200 * time.Millisecond
		r.ElectionTimeout = 200 * time.Millisecond
		r.LeaderLeaseTimeout = 100 * time.Millisecond
		r.CommitTimeout = 10 * time.Millisecond
	}
}

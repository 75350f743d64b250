package cluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/memberlist"
	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/valyala/fasthttp"

	"github.com/kilnhq/kiln/cluster/raftstore"
	"github.com/kilnhq/kiln/cluster/ring"
)

// ErrNotLeader is returned by Apply on a node that is not the Raft leader.
var ErrNotLeader = errors.New("cluster: not the raft leader")

// raftTimeout bounds every Raft operation the cluster makes itself.
const raftTimeout = 5 * time.Second

// Cluster is one node's view of the cluster: gossip membership, the Raft
// metadata state and the ring computed from it.
type Cluster struct {
	cfg     Config
	logger  *slog.Logger
	metrics *metrics

	gossip     *gossipDelegate
	ml         *memberlist.Memberlist
	gossipAddr string

	raftConf    *raft.Config
	raftTrans   raft.Transport
	raftAddr    string
	logs        raft.LogStore
	stable      raft.StableStore
	snaps       raft.SnapshotStore
	store       io.Closer // the badger store, nil in memory
	fsm         *fsm
	raft        atomic.Pointer[raft.Raft]
	hasState    atomic.Bool
	joined      atomic.Bool
	ring        atomic.Pointer[ring.Ring]
	running     atomic.Bool
	closeOnce   sync.Once
	closeErr    error
	metaMu      sync.Mutex    // serialises changes of gossip.meta
	metaChanged chan struct{} // capacity 1: gossip the new metadata
	ringChanged chan struct{} // capacity 1: the mover looks at the new ring
	httpc       *fasthttp.Client
	bytesMoved  atomic.Int64
	moveETA     atomic.Int64 // nanoseconds
	// Owned by Run's goroutine.
	deadSince     map[string]time.Time
	lastLeader    raft.ServerID
	bootView      string
	bootViewSince time.Time
}

// New binds the gossip and Raft ports, opens the Raft store and starts
// answering gossip. Run joins the cluster; Close releases everything if Run
// is never called.
func New(cfg Config, reg prometheus.Registerer, logger *slog.Logger) (_ *Cluster, err error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	c := &Cluster{
		cfg: cfg, logger: logger.With("node", cfg.NodeName),
		metaChanged: make(chan struct{}, 1), ringChanged: make(chan struct{}, 1),
		deadSince: map[string]time.Time{},
		httpc: &fasthttp.Client{
			Name: "kiln-cluster", ReadTimeout: raftTimeout + time.Second, WriteTimeout: raftTimeout,
			MaxConnsPerHost: 4, NoDefaultUserAgentHeader: true,
		},
	}
	c.fsm = newFSM(c.onState)
	defer func() {
		if err != nil {
			_ = c.Close()
		}
	}()

	if err := c.openRaftStore(); err != nil {
		return nil, err
	}
	has, err := raft.HasExistingState(c.logs, c.stable, c.snaps)
	if err != nil {
		return nil, fmt.Errorf("cluster: read raft state: %w", err)
	}
	c.hasState.Store(has)

	gt, gossipHost, gossipPort, err := c.gossipTransport()
	if err != nil {
		return nil, err
	}
	c.gossipAddr = net.JoinHostPort(gossipHost, strconv.Itoa(gossipPort))
	if err := c.raftTransport(gossipHost); err != nil {
		_ = gt.Shutdown()
		return nil, err
	}

	c.gossip = newGossipDelegate(cfg.NodeName, nodeMeta{
		APIAddr: cfg.APIAddr, RaftAddr: c.raftAddr, Zone: cfg.Zone, HasState: has,
	}, c.logger)
	c.metrics = newMetrics(reg, c)

	mc := memberlist.DefaultLANConfig()
	mc.Name = cfg.NodeName
	mc.Label = cfg.ClusterName
	mc.Transport = gt
	mc.AdvertiseAddr, mc.AdvertisePort = gossipHost, gossipPort
	mc.Delegate = c.gossip
	mc.Events = c.gossip
	mc.Logger = newStdLogger(c.logger, "memberlist")
	if cfg.GossipTuning != nil {
		cfg.GossipTuning(mc)
	}
	c.ml, err = memberlist.Create(mc)
	if err != nil {
		_ = gt.Shutdown()
		return nil, fmt.Errorf("cluster: start gossip: %w", err)
	}

	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(cfg.NodeName)
	rc.Logger = hclog.New(&hclog.LoggerOptions{
		Name: "raft", Level: hclog.Info, DisableTime: true,
		Output: levelWriter{logger: c.logger, component: "raft"},
	})
	rc.SnapshotThreshold = 1024 // the log is small: snapshot and truncate often
	if cfg.RaftTuning != nil {
		cfg.RaftTuning(rc)
	}
	if err := raft.ValidateConfig(rc); err != nil {
		return nil, fmt.Errorf("%w: raft: %w", ErrConfig, err)
	}
	c.raftConf = rc
	return c, nil
}

func (c *Cluster) openRaftStore() error {
	if c.cfg.DataDir == "" {
		s := raft.NewInmemStore()
		c.logs, c.stable, c.snaps = s, s, raft.NewInmemSnapshotStore()
		return nil
	}
	if err := os.MkdirAll(c.cfg.DataDir, 0o755); err != nil {
		return fmt.Errorf("cluster: %w", err)
	}
	s, err := raftstore.Open(c.cfg.DataDir + "/raft-log")
	if err != nil {
		return err
	}
	c.store = s
	snaps, err := raft.NewFileSnapshotStore(c.cfg.DataDir, 2, levelWriter{logger: c.logger, component: "raft"})
	if err != nil {
		return fmt.Errorf("cluster: open raft snapshots: %w", err)
	}
	// Log reads during replication hit the cache, not badger.
	cache, err := raft.NewLogCache(128, s)
	if err != nil {
		return fmt.Errorf("cluster: %w", err)
	}
	c.logs, c.stable, c.snaps = cache, s, snaps
	return nil
}

// gossipTransport returns the transport and the advertised gossip address.
func (c *Cluster) gossipTransport() (memberlist.Transport, string, int, error) {
	if t := c.cfg.GossipTransport; t != nil {
		ip, port, err := t.FinalAdvertiseAddr("", 0)
		if err != nil {
			return nil, "", 0, fmt.Errorf("cluster: gossip transport: %w", err)
		}
		return t, ip.String(), port, nil
	}
	host, port, err := splitHostPort(c.cfg.BindAddr)
	if err != nil {
		return nil, "", 0, err
	}
	if host == "" {
		host = "0.0.0.0"
	}
	t, err := memberlist.NewNetTransport(&memberlist.NetTransportConfig{
		BindAddrs: []string{host}, BindPort: port, Logger: newStdLogger(c.logger, "memberlist"),
	})
	if err != nil {
		return nil, "", 0, fmt.Errorf("cluster: bind gossip %s: %w", c.cfg.BindAddr, err)
	}
	port = t.GetAutoBindPort()
	advHost, advPort := "", port
	if c.cfg.AdvertiseAddr != "" {
		h, p, err := splitHostPort(c.cfg.AdvertiseAddr)
		if err != nil {
			_ = t.Shutdown()
			return nil, "", 0, err
		}
		advHost = h
		if p != 0 {
			advPort = p
		}
	}
	ip, advPort, err := t.FinalAdvertiseAddr(advHost, advPort)
	if err != nil {
		_ = t.Shutdown()
		return nil, "", 0, fmt.Errorf("%w: gossip advertise address: %w", ErrConfig, err)
	}
	return t, ip.String(), advPort, nil
}

// raftTransport sets c.raftTrans and c.raftAddr.
func (c *Cluster) raftTransport(gossipAdvHost string) error {
	if t := c.cfg.RaftTransport; t != nil {
		c.raftTrans, c.raftAddr = t, string(t.LocalAddr())
		return nil
	}
	bind := c.cfg.RaftBindAddr
	if bind == "" {
		host, port, err := splitHostPort(c.cfg.BindAddr)
		if err != nil {
			return err
		}
		if port != 0 {
			port += raftPortOffset
		}
		bind = net.JoinHostPort(host, strconv.Itoa(port))
	}
	ln, err := net.Listen("tcp", bind)
	if err != nil {
		return fmt.Errorf("cluster: bind raft %s: %w", bind, err)
	}
	bindHost, _, _ := net.SplitHostPort(bind)
	port := ln.Addr().(*net.TCPAddr).Port
	advHost, advPort := gossipAdvHost, port
	if isSpecific(bindHost) {
		advHost = bindHost
	}
	if c.cfg.RaftAdvertiseAddr != "" {
		h, p, err := splitHostPort(c.cfg.RaftAdvertiseAddr)
		if err != nil {
			_ = ln.Close()
			return err
		}
		if h != "" {
			advHost = h
		}
		if p != 0 {
			advPort = p
		}
	}
	adv, err := net.ResolveTCPAddr("tcp", net.JoinHostPort(advHost, strconv.Itoa(advPort)))
	if err != nil || adv.IP.IsUnspecified() {
		_ = ln.Close()
		return fmt.Errorf("%w: raft advertise address %s:%d is not reachable by peers", ErrConfig, advHost, advPort)
	}
	c.raftAddr = adv.String()
	c.raftTrans = raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		Stream:  &streamLayer{Listener: ln, adv: adv},
		MaxPool: 3,
		Timeout: 10 * time.Second,
		Logger: hclog.New(&hclog.LoggerOptions{
			Name: "raft-net", Level: hclog.Warn, DisableTime: true,
			Output: levelWriter{logger: c.logger, component: "raft"},
		}),
	})
	return nil
}

// streamLayer is raft's TCP stream layer over a listener bound before the
// advertised address was known (port 0 picks the port).
type streamLayer struct {
	net.Listener
	adv net.Addr
}

func (s *streamLayer) Addr() net.Addr { return s.adv }

func (s *streamLayer) Dial(addr raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	return (&net.Dialer{Timeout: timeout}).Dial("tcp", string(addr))
}

// Self is this node's name.
func (c *Cluster) Self() string { return c.cfg.NodeName }

// Ring is the current assignment, nil before one is known. It never waits
// on Raft: the FSM publishes a new ring when it applies a membership change.
func (c *Cluster) Ring() *ring.Ring { return c.ring.Load() }

// Alive reports whether gossip considers the member reachable (suspect
// counts as alive). Self is always alive.
func (c *Cluster) Alive(name string) bool {
	if name == c.cfg.NodeName {
		return true
	}
	p, ok := c.gossip.peerMap()[name]
	return ok && p.alive()
}

// Ready reports whether the ring is known and contains this node.
func (c *Cluster) Ready() bool {
	_, ok := c.Ring().Member(c.cfg.NodeName)
	return ok
}

// GossipAddr is the advertised gossip host:port (what Peers should name).
func (c *Cluster) GossipAddr() string { return c.gossipAddr }

// RaftAddr is the advertised Raft address.
func (c *Cluster) RaftAddr() string { return c.raftAddr }

// State returns the replicated metadata as this node last applied it. It
// must not be changed.
func (c *Cluster) State() *State { return c.fsm.State() }

// RegisterHandler adds the handler of a new command type. It must be called
// before Run, identically on every node.
func (c *Cluster) RegisterHandler(t CommandType, h Handler) { c.fsm.register(t, h) }

// Apply replicates a command through Raft and waits until this node applied
// it. Only the leader can apply; others get ErrNotLeader.
func (c *Cluster) Apply(ctx context.Context, t CommandType, payload any) error {
	data, err := encodeCommand(t, payload)
	if err != nil {
		return fmt.Errorf("cluster: encode %s: %w", t, err)
	}
	return c.applyData(ctx, t, data)
}

// applyData applies an encoded command on the leader.
func (c *Cluster) applyData(ctx context.Context, t CommandType, data []byte) error {
	r := c.raft.Load()
	if r == nil || r.State() != raft.Leader {
		return ErrNotLeader
	}
	timeout := raftTimeout
	if d, ok := ctx.Deadline(); ok {
		// Raft reads a zero timeout as "wait forever".
		if timeout = time.Until(d); timeout <= 0 {
			return ctx.Err()
		}
	}
	f := r.Apply(data, timeout)
	if err := f.Error(); err != nil {
		if errors.Is(err, raft.ErrNotLeader) || errors.Is(err, raft.ErrLeadershipLost) {
			return fmt.Errorf("%w: %w", ErrNotLeader, err)
		}
		return fmt.Errorf("cluster: apply %s: %w", t, err)
	}
	if err, ok := f.Response().(error); ok && err != nil {
		return err
	}
	return ctx.Err()
}

// onState runs on the FSM goroutine after every change: it publishes the
// ring for the new assignment and gossips the applied epoch.
func (c *Cluster) onState(old, cur *State) {
	prev := c.ring.Load()
	if prev != nil && old.Epoch == cur.Epoch && old.ReplicationFactor == cur.ReplicationFactor &&
		sameAssignment(old.Partitions, cur.Partitions) {
		return
	}
	if cur.ReplicationFactor < 1 {
		return // not initialised yet
	}
	r, err := ring.NewAssigned(cur.nodes(), cur.ReplicationFactor, cur.Epoch, cur.Partitions)
	if err != nil {
		c.logger.Error("cannot compute ring", "epoch", cur.Epoch, "err", err)
		return
	}
	c.ring.Store(r)
	if prev.Epoch() != r.Epoch() {
		c.logger.Info("ring epoch changed", "epoch", r.Epoch(), "members", len(cur.Members), "leaving", len(cur.Leaving),
			"removed", len(cur.Former), "rf", r.RF(), "moving_partitions", r.MovingCount())
	}
	if prev.Epoch() != r.Epoch() || prev.MovingCount() != r.MovingCount() {
		c.updateMeta(func(m *nodeMeta) { m.Epoch, m.Moving = r.Epoch(), r.MovingCount() })
	}
	select {
	case c.ringChanged <- struct{}{}:
	default:
	}
}

// sameAssignment reports whether a and b are the same published slice.
func sameAssignment(a, b Assignment) bool {
	return len(a) == len(b) && (len(a) == 0 || &a[0] == &b[0])
}

// updateMeta changes this node's gossip metadata; Run's metadata loop
// broadcasts it.
func (c *Cluster) updateMeta(f func(*nodeMeta)) {
	c.metaMu.Lock()
	m := *c.gossip.meta.Load()
	f(&m)
	c.gossip.meta.Store(&m)
	c.metaMu.Unlock()
	select {
	case c.metaChanged <- struct{}{}:
	default:
	}
}

// Close releases what New opened. Run calls it when it returns; calling it
// while Run is running is an error.
func (c *Cluster) Close() error {
	if c.running.Load() {
		return errors.New("cluster: Close while Run is running; cancel its context")
	}
	c.closeOnce.Do(func() {
		var errs []error
		if c.ml != nil {
			errs = append(errs, c.ml.Shutdown())
		}
		if r := c.raft.Load(); r != nil {
			errs = append(errs, r.Shutdown().Error())
		} else if t, ok := c.raftTrans.(raft.WithClose); ok {
			errs = append(errs, t.Close())
		}
		if c.store != nil {
			errs = append(errs, c.store.Close())
		}
		c.closeErr = errors.Join(errs...)
	})
	return c.closeErr
}

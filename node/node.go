package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/common/model"
	"github.com/valyala/fasthttp"
	"golang.org/x/sync/errgroup"

	"github.com/kilnhq/kiln/cluster"
	"github.com/kilnhq/kiln/cluster/transfer"
	"github.com/kilnhq/kiln/ingest/remotewrite"
	"github.com/kilnhq/kiln/ingest/replicate"
	"github.com/kilnhq/kiln/ingest/scrape"
	"github.com/kilnhq/kiln/query/api"
	"github.com/kilnhq/kiln/query/fanout"
	"github.com/kilnhq/kiln/shard"
)

// Build information, set with -ldflags by `make build`.
var (
	Version   = "dev"
	Revision  = "unknown"
	Branch    = "unknown"
	BuildUser = "unknown"
	BuildDate = "unknown"
)

// Node is one running Kiln process: storage, cluster membership, ingest,
// query API and scraping behind one HTTP listener.
type Node struct {
	cfg     Config
	logger  *slog.Logger
	reg     *prometheus.Registry
	db      *shard.DB
	cluster *cluster.Cluster
	moves   *transfer.Transfer
	writer  *replicate.Writer
	reads   *fanout.Queryable
	api     *api.API
	rw      *remotewrite.Handler
	scraper *scrape.Scraper
	ln      net.Listener
	srv     *fasthttp.Server
	ready   atomic.Bool
	start   time.Time
	// leave is closed by POST /api/v1/admin/cluster/leave: the node hands
	// its partitions over and exits, as on SIGTERM.
	leave     chan struct{}
	leaveOnce sync.Once
}

// New opens the storage and builds every component; Run starts serving.
// The listener is opened here so the caller learns the bound address (port
// 0 in tests) before Run.
func New(cfg Config, logger *slog.Logger) (*Node, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	n := &Node{cfg: cfg, logger: logger, reg: prometheus.NewRegistry(), start: time.Now(), leave: make(chan struct{})}
	n.reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		collectors.NewBuildInfoCollector(),
	)

	ln, err := net.Listen("tcp", cfg.ListenAddress)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", cfg.ListenAddress, err)
	}
	n.ln = ln
	if cfg.Embedded {
		// Scrape the address actually bound (it differs with port 0).
		bound := ln.Addr().String()
		n.cfg.Prom = defaultPromConfig(bound, apiAdvertiseAddr(cfg.Cluster.APIAdvertiseAddress, bound, cfg.Cluster))
		n.cfg.ConfigYAML = n.cfg.Prom.String()
	}

	if err := os.MkdirAll(cfg.StoragePath, 0o755); err != nil {
		return nil, errors.Join(fmt.Errorf("create storage path: %w", err), ln.Close())
	}
	n.db, err = shard.Open(shard.Config{
		Path:         filepath.Join(cfg.StoragePath, "shard"),
		Retention:    cfg.Retention,
		SyncInterval: cfg.SyncInterval,
	}, n.reg, logger.With("component", "storage"))
	if err != nil {
		return nil, errors.Join(err, ln.Close())
	}
	if err := n.joinCluster(); err != nil {
		return nil, errors.Join(err, n.db.Close(), ln.Close())
	}
	if err := n.build(); err != nil {
		return nil, errors.Join(err, n.cluster.Close(), n.db.Close(), ln.Close())
	}
	return n, nil
}

// joinCluster creates this node's cluster member (gossip and Raft bound,
// not yet running).
func (n *Node) joinCluster() error {
	cl := n.cfg.Cluster
	name, err := resolveNodeName(cl.NodeName, n.cfg.StoragePath)
	if err != nil {
		return err
	}
	ccfg := cluster.Config{
		NodeName:           name,
		ClusterName:        cl.Name,
		BindAddr:           cl.ListenAddress,
		AdvertiseAddr:      cl.AdvertiseAddress,
		Peers:              cl.Peers,
		RaftBindAddr:       cl.RaftAddress,
		Zone:               cl.Zone,
		BootstrapExpect:    cl.BootstrapExpect,
		ReplicationFactor:  cl.ReplicationFactor,
		DataDir:            filepath.Join(n.cfg.StoragePath, "cluster"),
		DeadNodeTimeout:    cl.DeadNodeTimeout,
		MaxConcurrentMoves: cl.MaxConcurrentMoves,
		MoveRate:           cl.MoveRate,
	}
	// The cluster moves partitions through the storage; the topology the
	// mover needs is the cluster itself, set once it exists.
	topo := &lateTopology{}
	n.moves = transfer.New(transfer.Config{
		MoveRate:            cl.MoveRate,
		AntiEntropyInterval: cl.AntiEntropyInterval,
		Retention:           n.cfg.Retention,
	}, topo, n.db, n.reg, n.logger.With("component", "transfer"))
	ccfg.Mover = n.moves
	ccfg.APIAddr = apiAdvertiseAddr(cl.APIAdvertiseAddress, n.ln.Addr().String(), cl)
	n.cluster, err = cluster.New(ccfg, n.reg, n.logger.With("component", "cluster"))
	if err != nil {
		return fmt.Errorf("cluster: %w", err)
	}
	topo.Topology = n.cluster
	n.logger.Info("cluster member created", "name", name, "gossip", n.cluster.GossipAddr(), "raft", n.cluster.RaftAddr(), "api", ccfg.APIAddr)
	return nil
}

func (n *Node) build() error {
	var err error
	cl := n.cfg.Cluster
	n.writer, err = replicate.New(replicate.Config{
		WriteConsistency: cl.WriteConsistency,
		HintsDir:         filepath.Join(n.cfg.StoragePath, "hints"),
	}, n.cluster, n.db, n.reg, n.logger.With("component", "replicate"))
	if err != nil {
		return err
	}
	n.reads, err = fanout.New(fanout.Config{
		WriteConsistency: cl.WriteConsistency,
		Timeout:          n.cfg.QueryTimeout,
		PartialResponse:  n.cfg.PartialResponse,
	}, n.cluster, n.db, n.reg, n.logger.With("component", "fanout"))
	if err != nil {
		return err
	}
	n.rw, err = remotewrite.New(remotewrite.Config{}, n.writer, n.reg, n.logger.With("component", "remotewrite"))
	if err != nil {
		return err
	}
	n.api, err = api.New(api.Config{
		Timeout:        n.cfg.QueryTimeout,
		MaxSamples:     n.cfg.QueryMaxSamples,
		MaxConcurrency: n.cfg.QueryMaxConcurrency,
		Parallelism:    n.cfg.QueryParallelism,
		LookbackDelta:  n.cfg.LookbackDelta,
	}, api.Deps{
		Queryable: n.reads,
		Exemplars: n.reads,
		Metadata:  n.reads,
		Stats:     statsSource{n.db},
		Gatherer:  n.reg,
		Ready:     func() bool { return n.ready.Load() && n.cluster.Ready() },
		BuildInfo: api.BuildInfo{
			Version: Version, Revision: Revision, Branch: Branch,
			BuildUser: BuildUser, BuildDate: BuildDate, GoVersion: runtime.Version(),
		},
		Flags:            n.cfg.Flags(),
		ConfigYAML:       func() string { return n.cfg.ConfigYAML },
		StorageRetention: model.Duration(n.cfg.Retention).String(),
		StartTime:        n.start,
	}, n.reg, n.logger.With("component", "api"))
	if err != nil {
		return err
	}
	n.scraper, err = scrape.New(scrape.Config{Prom: n.cfg.Prom}, n.writer, n.reg, n.logger.With("component", "scrape"))
	if err != nil {
		return err
	}
	n.srv = &fasthttp.Server{
		Handler:               n.api.Handler(n.route),
		Name:                  "kiln",
		MaxRequestBodySize:    int(n.cfg.MaxRequestBytes),
		ReadTimeout:           5 * time.Minute,
		IdleTimeout:           5 * time.Minute,
		Logger:                fasthttpLogger{n.logger.With("component", "http")},
		NoDefaultServerHeader: true,
	}
	return nil
}

// route serves what the query API does not: remote write, the cluster
// status, internal RPC between nodes, and 404.
func (n *Node) route(ctx *fasthttp.RequestCtx) {
	path := string(ctx.Path())
	switch {
	case path == "/api/v1/write":
		n.rw.Handle(ctx)
	case path == "/api/v1/status/cluster":
		n.serveClusterStatus(ctx)
	case path == "/api/v1/admin/cluster/leave":
		n.serveLeave(ctx)
	case path == replicate.WritePath:
		n.writer.Handle(ctx)
	case strings.HasPrefix(path, "/internal/v1/cluster/"):
		n.cluster.Handle(ctx)
	case strings.HasPrefix(path, "/internal/v1/partition/"):
		n.moves.Handle(ctx)
	case strings.HasPrefix(path, "/internal/v1/"):
		n.reads.Handle(ctx)
	default:
		ctx.Error("404 page not found", fasthttp.StatusNotFound)
	}
}

// Addr is the address the HTTP API listens on.
func (n *Node) Addr() string { return n.ln.Addr().String() }

// DB exposes the storage, for tests and benchmarks in this module.
func (n *Node) DB() *shard.DB { return n.db }

// Run serves until ctx is cancelled, then shuts down in reverse order of
// start: stop accepting requests, stop scraping, close the storage (which
// persists the head).
func (n *Node) Run(ctx context.Context) error {
	runCtx, stopRun := context.WithCancel(ctx)
	defer stopRun()
	g, gctx := errgroup.WithContext(runCtx)
	g.Go(func() error {
		if err := n.srv.Serve(n.ln); err != nil && gctx.Err() == nil {
			return fmt.Errorf("http server: %w", err)
		}
		return nil
	})
	g.Go(func() error { return n.scraper.Run(gctx) })
	// The cluster, hint replay and anti-entropy stop after the HTTP server:
	// a leaving node still serves its peers' fetches while it hands over.
	clusterCtx, stopCluster := context.WithCancel(context.Background())
	defer stopCluster()
	cg, _ := errgroup.WithContext(clusterCtx)
	cg.Go(func() error { return n.cluster.Run(clusterCtx) })
	cg.Go(func() error { return n.writer.Run(clusterCtx) })
	cg.Go(func() error { return n.moves.Run(clusterCtx) })
	n.ready.Store(true)
	n.logger.Info("kiln is ready", "listen", n.Addr(), "storage", n.cfg.StoragePath, "version", Version,
		"startup", time.Since(n.start).Round(time.Millisecond))
	leaving := false
	select {
	case <-gctx.Done():
		leaving = ctx.Err() != nil && n.cfg.Cluster.LeaveOnShutdown
	case <-n.leave:
		leaving = true
	}
	if leaving {
		n.handOver()
	}
	stopRun()
	n.ready.Store(false)
	n.logger.Info("shutting down")
	// After the hand-over, which peers fetch from: the server's shutdown
	// waits for open streams, and an export at the move rate may be long.
	n.moves.StopExports()
	shutdownErr := n.srv.ShutdownWithContext(context.Background())
	err := g.Wait()
	stopCluster()
	clusterErr := cg.Wait()
	return errors.Join(err, shutdownErr, clusterErr, n.api.Close(), n.writer.Close(), n.db.Close())
}

// handOver leaves the cluster before exit: other nodes fetch this node's
// partitions, so every partition keeps its copies. A cluster of one has no
// one to hand over to.
func (n *Node) handOver() {
	ctx, cancel := context.WithTimeout(context.Background(), n.cfg.Cluster.LeaveTimeout)
	defer cancel()
	start := time.Now()
	n.logger.Info("leaving the cluster: handing partitions over", "timeout", n.cfg.Cluster.LeaveTimeout)
	switch err := n.cluster.Leave(ctx); {
	case errors.Is(err, cluster.ErrLastMember):
		n.logger.Info("last member of the cluster: nothing to hand over")
	case err != nil:
		n.logger.Warn("leaving the cluster did not complete", "err", err, "duration", time.Since(start).Round(time.Millisecond))
	default:
		n.logger.Info("left the cluster", "duration", time.Since(start).Round(time.Millisecond))
	}
}

// serveLeave is POST /api/v1/admin/cluster/leave: hand over, then exit.
func (n *Node) serveLeave(ctx *fasthttp.RequestCtx) {
	ctx.SetContentType("application/json")
	if !ctx.IsPost() && !ctx.IsPut() {
		ctx.SetStatusCode(fasthttp.StatusMethodNotAllowed)
		ctx.SetBodyString(`{"status":"error","errorType":"bad_data","error":"use POST"}`)
		return
	}
	n.leaveOnce.Do(func() { close(n.leave) })
	ctx.SetBodyString(`{"status":"success","data":{"leaving":true}}`)
}

// statsSource adapts shard statistics to the API's /status/tsdb shape.
type statsSource struct{ db *shard.DB }

func (s statsSource) TSDBStatus(_ context.Context, limit int) (api.TSDBStatus, error) {
	st := s.db.Stats(limit)
	conv := func(l []shard.NameCount) []api.TSDBStat {
		out := make([]api.TSDBStat, len(l))
		for i, e := range l {
			out[i] = api.TSDBStat{Name: e.Name, Value: e.Count}
		}
		return out
	}
	return api.TSDBStatus{
		HeadStats: api.HeadStats{
			NumSeries: st.NumSeries, NumLabelPairs: st.NumLabelPairs, ChunkCount: st.ChunkCount,
			MinTime: st.MinTime, MaxTime: st.MaxTime,
		},
		SeriesCountByMetricName:     conv(st.SeriesByMetric),
		LabelValueCountByLabelName:  conv(st.ValuesByLabel),
		MemoryInBytesByLabelName:    conv(st.BytesByLabel),
		SeriesCountByLabelValuePair: conv(st.SeriesByPair),
	}, nil
}

type fasthttpLogger struct{ l *slog.Logger }

func (f fasthttpLogger) Printf(format string, args ...any) { f.l.Debug(fmt.Sprintf(format, args...)) }

// clusterStatus is /api/v1/status/cluster: the cluster's view plus this
// node's hinted-handoff backlog per peer.
type clusterStatus struct {
	cluster.Status
	Handoff map[string]handoffStatus `json:"handoff"`
}

type handoffStatus struct {
	Hints         int     `json:"hints"`
	Bytes         int64   `json:"bytes"`
	OldestSeconds float64 `json:"oldest_seconds"`
}

func (n *Node) serveClusterStatus(ctx *fasthttp.RequestCtx) {
	ctx.SetContentType("application/json")
	if !ctx.IsGet() && !ctx.IsHead() {
		ctx.SetStatusCode(fasthttp.StatusMethodNotAllowed)
		ctx.SetBodyString(`{"status":"error","errorType":"bad_data","error":"method not allowed"}`)
		return
	}
	st := clusterStatus{Status: n.cluster.Status(), Handoff: map[string]handoffStatus{}}
	for peer, b := range n.writer.Backlog() {
		st.Handoff[peer] = handoffStatus{Hints: b.Hints, Bytes: b.Bytes, OldestSeconds: b.OldestAge.Seconds()}
	}
	body, err := json.Marshal(struct {
		Status string        `json:"status"`
		Data   clusterStatus `json:"data"`
	}{"success", st})
	if err != nil {
		ctx.SetStatusCode(fasthttp.StatusInternalServerError)
		ctx.SetBodyString(`{"status":"error","errorType":"internal","error":"encode cluster status"}`)
		return
	}
	ctx.SetBody(body)
}

package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/common/model"
	"github.com/valyala/fasthttp"
	"golang.org/x/sync/errgroup"

	"github.com/kilnhq/kiln/ingest/remotewrite"
	"github.com/kilnhq/kiln/ingest/scrape"
	"github.com/kilnhq/kiln/query/api"
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

// Node is one running Kiln process: storage, ingest, query API and scraping
// behind one HTTP listener.
type Node struct {
	cfg     Config
	logger  *slog.Logger
	reg     *prometheus.Registry
	db      *shard.DB
	api     *api.API
	rw      *remotewrite.Handler
	scraper *scrape.Scraper
	ln      net.Listener
	srv     *fasthttp.Server
	ready   atomic.Bool
	start   time.Time
}

// New opens the storage and builds every component; Run starts serving.
// The listener is opened here so the caller learns the bound address (port
// 0 in tests) before Run.
func New(cfg Config, logger *slog.Logger) (*Node, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	n := &Node{cfg: cfg, logger: logger, reg: prometheus.NewRegistry(), start: time.Now()}
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
		n.cfg.Prom = DefaultPromConfig(ln.Addr().String())
		n.cfg.ConfigYAML = n.cfg.Prom.String()
	}

	if err := os.MkdirAll(cfg.StoragePath, 0o755); err != nil {
		return nil, errors.Join(fmt.Errorf("create storage path: %w", err), ln.Close())
	}
	n.db, err = shard.Open(shard.Config{
		Path:      filepath.Join(cfg.StoragePath, "shard"),
		Retention: cfg.Retention,
	}, n.reg, logger.With("component", "storage"))
	if err != nil {
		return nil, errors.Join(err, ln.Close())
	}
	if err := n.build(); err != nil {
		return nil, errors.Join(err, n.db.Close(), ln.Close())
	}
	return n, nil
}

func (n *Node) build() error {
	var err error
	n.rw, err = remotewrite.New(remotewrite.Config{}, n.db, n.reg, n.logger.With("component", "remotewrite"))
	if err != nil {
		return err
	}
	n.api, err = api.New(api.Config{
		Timeout:        n.cfg.QueryTimeout,
		MaxSamples:     n.cfg.QueryMaxSamples,
		MaxConcurrency: n.cfg.QueryMaxConcurrency,
		LookbackDelta:  n.cfg.LookbackDelta,
	}, api.Deps{
		Queryable: n.db,
		Exemplars: n.db,
		Metadata:  n.db,
		Stats:     statsSource{n.db},
		Gatherer:  n.reg,
		Ready:     n.ready.Load,
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
	n.scraper, err = scrape.New(scrape.Config{Prom: n.cfg.Prom}, n.db, n.reg, n.logger.With("component", "scrape"))
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

// route serves what the query API does not: remote write, and 404.
func (n *Node) route(ctx *fasthttp.RequestCtx) {
	switch string(ctx.Path()) {
	case "/api/v1/write":
		n.rw.Handle(ctx)
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
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		if err := n.srv.Serve(n.ln); err != nil && gctx.Err() == nil {
			return fmt.Errorf("http server: %w", err)
		}
		return nil
	})
	g.Go(func() error { return n.scraper.Run(gctx) })
	n.ready.Store(true)
	n.logger.Info("kiln is ready", "listen", n.Addr(), "storage", n.cfg.StoragePath, "version", Version,
		"startup", time.Since(n.start).Round(time.Millisecond))
	<-gctx.Done()
	n.ready.Store(false)
	n.logger.Info("shutting down")
	shutdownErr := n.srv.ShutdownWithContext(context.Background())
	err := g.Wait()
	return errors.Join(err, shutdownErr, n.api.Close(), n.db.Close())
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

// Package scrape pulls metrics from targets the way Prometheus does, because
// it runs Prometheus's own discovery and scrape managers: target discovery,
// relabelling, staleness markers, the up and scrape_* series and the
// scrape_configs semantics all come from there. This package only wires the
// two managers together and appends into a storage the caller provides.
//
// Which service discoveries are available is decided by the importing
// binary (see node/config_sd.go); static_configs always are.
package scrape

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	config_util "github.com/prometheus/common/config"
	"github.com/prometheus/common/model"
	"github.com/prometheus/common/promslog"
	"github.com/prometheus/common/version"
	promconfig "github.com/prometheus/prometheus/config"
	"github.com/prometheus/prometheus/discovery"
	promscrape "github.com/prometheus/prometheus/scrape"
	"github.com/prometheus/prometheus/storage"
	"github.com/prometheus/prometheus/util/logging"
)

// ErrStopped is returned by ApplyConfig and Run once Run has returned.
var ErrStopped = errors.New("scrape: scraper stopped")

// Config configures a Scraper.
type Config struct {
	// Prom holds the scrape_configs (and global defaults) to run. It must
	// come from promconfig.Load or LoadFile: the scrape manager refuses
	// configs that skipped their validation.
	Prom *promconfig.Config

	// ReloadInterval bounds how often discovered target changes reach the
	// scrape loops. Zero keeps Prometheus's 5s; tests shorten it.
	ReloadInterval time.Duration

	// SDMetrics are the service-discovery metrics. They can be registered
	// only once per registry, so a process running another discovery
	// manager (the notifier's) creates them once and passes them to both.
	// Nil creates and registers them on the registerer given to New.
	SDMetrics *discovery.SDMetrics
}

type state int

const (
	stateNew state = iota
	stateRunning
	stateStopped
)

// Scraper discovers targets and scrapes them into a storage.AppendableV2.
type Scraper struct {
	logger    *slog.Logger
	discovery *discovery.Manager
	scrape    *promscrape.Manager
	// cancel stops the discovery manager, which takes its context at
	// construction rather than in Run.
	cancel context.CancelFunc

	mtx   sync.Mutex // Serialises ApplyConfig against Run's start and stop.
	state state
	cfg   *promconfig.Config
}

// New creates a Scraper appending to app. Nothing is discovered or scraped
// until Run.
//
// app is an AppendableV2 rather than an Appendable: Prometheus marks the
// latter for removal, and V2 carries metadata, exemplars and start
// timestamps in a single Append call.
func New(cfg Config, app storage.AppendableV2, reg prometheus.Registerer, logger *slog.Logger) (*Scraper, error) {
	if cfg.Prom == nil {
		return nil, errors.New("scrape: Config.Prom is nil")
	}
	if app == nil {
		return nil, errors.New("scrape: nil storage")
	}
	if logger == nil {
		logger = promslog.NewNopLogger()
	}
	if _, err := cfg.Prom.GetScrapeConfigs(); err != nil {
		return nil, fmt.Errorf("scrape: %w", err)
	}

	sdMetrics := cfg.SDMetrics
	if sdMetrics == nil {
		var err error
		if sdMetrics, err = discovery.CreateAndRegisterSDMetrics(reg); err != nil {
			return nil, fmt.Errorf("scrape: %w", err)
		}
	}
	opts := []func(*discovery.Manager){discovery.Name("scrape")}
	if cfg.ReloadInterval > 0 {
		opts = append(opts, discovery.Updatert(cfg.ReloadInterval))
	}
	ctx, cancel := context.WithCancel(context.Background())
	dm := discovery.NewManager(ctx, logger.With("component", "discovery manager scrape"), reg, sdMetrics, opts...)
	if dm == nil {
		cancel()
		// NewManager logs the reason; it can only be metric registration.
		return nil, errors.New("scrape: cannot create discovery manager (is another one registered on this registry?)")
	}

	sm, err := promscrape.NewManager(&promscrape.Options{
		DiscoveryReloadInterval: model.Duration(cfg.ReloadInterval),
		// Scrape as soon as the first targets are known rather than one
		// reload interval later: a freshly started node otherwise shows
		// nothing for its first seconds.
		DiscoveryReloadOnStartup: true,
		HTTPClientOptions: []config_util.HTTPClientOption{
			config_util.WithUserAgent(version.ComponentUserAgent("Kiln")),
		},
	},
		logger.With("component", "scrape manager"),
		logging.NewJSONFileLogger, // Honours scrape_failure_log_file.
		nil, app, reg)
	if err != nil {
		cancel()
		dm.UnregisterMetrics()
		return nil, fmt.Errorf("scrape: %w", err)
	}

	return &Scraper{
		logger:    logger,
		discovery: dm,
		scrape:    sm,
		cancel:    cancel,
		cfg:       cfg.Prom,
	}, nil
}

// Run applies the configuration, then discovers and scrapes until ctx is
// done. It returns nil after an orderly stop, once every scrape loop has
// ended. A Scraper runs once; a second Run returns ErrStopped or an error.
func (s *Scraper) Run(ctx context.Context) error {
	s.mtx.Lock()
	switch s.state {
	case stateRunning:
		s.mtx.Unlock()
		return errors.New("scrape: Run called twice")
	case stateStopped:
		s.mtx.Unlock()
		return ErrStopped
	}
	if err := s.apply(s.cfg); err != nil {
		s.state = stateStopped
		s.mtx.Unlock()
		s.cancel()
		s.scrape.Stop()
		return err
	}
	s.state = stateRunning
	s.mtx.Unlock()

	var wg sync.WaitGroup
	wg.Go(func() {
		// Returns ctx.Err() once cancelled, which is the normal way out.
		_ = s.discovery.Run()
	})
	wg.Go(func() {
		// Returns nil when discovery closes its channel or on Stop.
		_ = s.scrape.Run(s.discovery.SyncCh())
	})

	<-ctx.Done()
	s.mtx.Lock()
	s.state = stateStopped // No ApplyConfig may race with the shutdown.
	s.mtx.Unlock()
	s.cancel()
	s.scrape.Stop()
	wg.Wait()
	return nil
}

// ApplyConfig replaces the scrape configuration. Before Run it only records
// cfg; while running, unchanged scrape pools keep running and discovery
// providers whose configuration did not change are kept, as in Prometheus.
func (s *Scraper) ApplyConfig(cfg *promconfig.Config) error {
	if cfg == nil {
		return errors.New("scrape: nil config")
	}
	if _, err := cfg.GetScrapeConfigs(); err != nil {
		return fmt.Errorf("scrape: %w", err)
	}
	s.mtx.Lock()
	defer s.mtx.Unlock()
	switch s.state {
	case stateNew:
		s.cfg = cfg
		return nil
	case stateStopped:
		return ErrStopped
	}
	return s.apply(cfg)
}

// apply pushes cfg to both managers; s.mtx must be held. The scrape manager
// goes first so that the pools exist when discovery delivers their targets,
// the same order Prometheus reloads in.
func (s *Scraper) apply(cfg *promconfig.Config) error {
	if err := s.scrape.ApplyConfig(cfg); err != nil {
		return fmt.Errorf("scrape: apply scrape config: %w", err)
	}
	scfgs, err := cfg.GetScrapeConfigs()
	if err != nil {
		return fmt.Errorf("scrape: %w", err)
	}
	sd := make(map[string]discovery.Configs, len(scfgs))
	for _, sc := range scfgs {
		sd[sc.JobName] = sc.ServiceDiscoveryConfigs
	}
	if err := s.discovery.ApplyConfig(sd); err != nil {
		return fmt.Errorf("scrape: apply discovery config: %w", err)
	}
	s.cfg = cfg
	return nil
}

// TargetsActive returns the targets being scraped, by scrape pool, for
// /api/v1/targets.
func (s *Scraper) TargetsActive() map[string][]*promscrape.Target {
	return s.scrape.TargetsActive()
}

// TargetsDropped returns the targets relabelling dropped, by scrape pool.
func (s *Scraper) TargetsDropped() map[string][]*promscrape.Target {
	return s.scrape.TargetsDropped()
}

// TargetsDroppedCounts returns how many targets each pool dropped.
func (s *Scraper) TargetsDroppedCounts() map[string]int {
	return s.scrape.TargetsDroppedCounts()
}

// ScrapePoolConfig returns the configuration of one scrape pool.
func (s *Scraper) ScrapePoolConfig(pool string) (*promconfig.ScrapeConfig, error) {
	return s.scrape.ScrapePoolConfig(pool)
}

// Package api serves the Prometheus HTTP API v1 over valyala/fasthttp.
//
// Responses are byte-compatible with Prometheus v0.315 web/api/v1: the same
// envelope ({"status","data","errorType","error","warnings","infos"}), the
// same result encodings (string sample values, float-second timestamps,
// native histograms under "histogram"/"histograms") and the same HTTP status
// per error type. The query engine is the upstream promql.Engine, built in
// New from Config; storage comes in through Deps as a
// storage.SampleAndChunkQueryable, so the API runs unchanged over a single
// tsdb, a Kiln shard or a cluster fan-out.
//
// Query engine: @ modifiers and negative offsets are on and duration
// expressions parse, as in a default Prometheus v0.315; delayed name
// removal, experimental functions and per-step stats stay off, as they do
// there without feature flags. At most Config.MaxConcurrency queries run at
// once; the rest queue until their deadline and then fail with a 503
// "timeout" (see queryGate).
//
// Error classification: besides the promql error types, any storage error
// that has an `Unavailable() bool` method returning true is reported as
// errorType "unavailable" (503). That lets storage say "not ready / no
// quorum" without this package importing it.
//
// Partial responses: warnings are promql annotations. A fan-out querier can
// already surface per-node failures through SeriesSet.Warnings (the engine
// forwards them); handlers collect everything into apiFuncResult.warnings,
// where the fan-out's missing-partition warning arrives. The
// partial_response parameter (true/false, on every JSON endpoint and
// /federate) goes into the request context for the fan-out to read
// (fanout.WithPartialResponse); without it the fan-out's default applies.
package api

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/common/promslog"
	"github.com/prometheus/prometheus/model/metadata"
	"github.com/prometheus/prometheus/promql"
	"github.com/prometheus/prometheus/promql/parser"
	"github.com/prometheus/prometheus/storage"
	"github.com/prometheus/prometheus/util/annotations"
	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/fasthttpadaptor"
	"github.com/valyala/fasthttp/pprofhandler"

	"github.com/kilnhq/kiln/query/parallel"
)

// Config holds the query-path flags. A zero field takes the value from
// DefaultConfig, so callers only set what they override; where a limit can
// be switched off, a negative value does that (Prometheus's flags use 0,
// which here means "default").
type Config struct {
	Timeout        time.Duration // --query.timeout (default 2m)
	MaxSamples     int           // --query.max-samples (default 50e6)
	MaxConcurrency int           // --query.max-concurrency (default 20, negative: unlimited)
	LookbackDelta  time.Duration // --query.lookback-delta (default 5m)
	// Parallelism is how many slices of the partitions a sliceable
	// aggregation is evaluated in, concurrently (query/parallel), when
	// Deps.Queryable can read slices; 0 means GOMAXPROCS, 1 turns it off.
	Parallelism int // --query.parallelism

	// Remote read limits, as Prometheus's --storage.remote.read-* flags.
	RemoteReadSampleLimit      int // default 50e6, negative: unlimited; samples responses only
	RemoteReadConcurrencyLimit int // default 10, negative: unlimited
	RemoteReadMaxBytesInFrame  int // default 1 MiB; streamed responses only
}

// DefaultConfig returns Prometheus's defaults for the query flags.
func DefaultConfig() Config {
	return Config{
		Timeout:                    2 * time.Minute,
		MaxSamples:                 50_000_000,
		MaxConcurrency:             20,
		LookbackDelta:              5 * time.Minute,
		Parallelism:                runtime.GOMAXPROCS(0),
		RemoteReadSampleLimit:      50_000_000,
		RemoteReadConcurrencyLimit: 10,
		RemoteReadMaxBytesInFrame:  1 << 20,
	}
}

// MetadataSource returns metric metadata keyed by metric family name.
// metric == "" means all metrics. limit < 0 and limitPerMetric <= 0 mean
// unlimited; the API enforces both limits again on the result, so a source
// may ignore them.
type MetadataSource interface {
	Metadata(ctx context.Context, metric string, limit, limitPerMetric int) (map[string][]metadata.Metadata, error)
}

// StatsSource returns cardinality statistics for /api/v1/status/tsdb, with
// each top-N list cut to limit entries.
type StatsSource interface {
	TSDBStatus(ctx context.Context, limit int) (TSDBStatus, error)
}

// TSDBStatus mirrors the data of Prometheus's /api/v1/status/tsdb.
type TSDBStatus struct {
	HeadStats HeadStats `json:"headStats"`
	// SeriesCountByMetricName: metric name -> number of series.
	SeriesCountByMetricName []TSDBStat `json:"seriesCountByMetricName"`
	// LabelValueCountByLabelName: label name -> number of distinct values.
	LabelValueCountByLabelName []TSDBStat `json:"labelValueCountByLabelName"`
	// MemoryInBytesByLabelName: label name -> sum of the lengths of all its
	// values (Prometheus's estimate of the memory the values take).
	MemoryInBytesByLabelName []TSDBStat `json:"memoryInBytesByLabelName"`
	// SeriesCountByLabelValuePair: "name=value" -> number of series.
	SeriesCountByLabelValuePair []TSDBStat `json:"seriesCountByLabelValuePair"`
}

// HeadStats describes the in-memory (most recent) part of the storage.
type HeadStats struct {
	NumSeries     uint64 `json:"numSeries"`     // series in memory
	NumLabelPairs int    `json:"numLabelPairs"` // distinct name=value pairs
	ChunkCount    int64  `json:"chunkCount"`    // in-memory chunks
	MinTime       int64  `json:"minTime"`       // oldest sample, ms since epoch
	MaxTime       int64  `json:"maxTime"`       // newest sample, ms since epoch
}

// TSDBStat is one entry of a top-N cardinality list.
type TSDBStat struct {
	Name  string `json:"name"`
	Value uint64 `json:"value"`
}

// BuildInfo is served by /api/v1/status/buildinfo.
type BuildInfo struct {
	Version   string `json:"version"`
	Revision  string `json:"revision"`
	Branch    string `json:"branch"`
	BuildUser string `json:"buildUser"`
	BuildDate string `json:"buildDate"`
	GoVersion string `json:"goVersion"`
}

// Deps are the collaborators of the API. Only Queryable is required.
type Deps struct {
	Queryable        storage.SampleAndChunkQueryable
	Exemplars        storage.ExemplarQueryable // nil: empty exemplar results
	Metadata         MetadataSource            // nil: empty metadata
	Stats            StatsSource               // nil: /status/tsdb fails with 500
	Gatherer         prometheus.Gatherer       // for /metrics; nil: /metrics goes to next
	Ready            func() bool               // nil: always ready
	BuildInfo        BuildInfo
	Flags            map[string]string
	ConfigYAML       func() string
	StorageRetention string
	StartTime        time.Time
}

// API serves the Prometheus HTTP API. Create it with New.
type API struct {
	cfg     Config
	deps    Deps
	logger  *slog.Logger
	metrics *apiMetrics
	parser  parser.Parser
	engine  *promql.Engine
	sub     *promql.Engine     // evaluates the slices of sliced queries; nil if none
	queries promql.QueryEngine // engine, or a slicing engine around it
	gate    *queryGate         // nil when concurrency is unlimited

	routes      map[string]*route
	labelValues *route // /api/v1/label/<name>/values, matched by prefix
	pprof       *route // /debug/pprof/..., matched by prefix

	// baseCtx is the parent of every request context; Close cancels it so
	// in-flight queries stop instead of outliving the API.
	baseCtx context.Context
	cancel  context.CancelFunc

	now func() time.Time // replaced in tests
}

// New builds the API and its PromQL engine. Engine and handler metrics are
// registered on reg (which may be nil).
func New(cfg Config, deps Deps, reg prometheus.Registerer, logger *slog.Logger) (*API, error) {
	if deps.Queryable == nil {
		return nil, errors.New("query api: Deps.Queryable is required")
	}
	if logger == nil {
		logger = promslog.NewNopLogger()
	}
	cfg = withDefaults(cfg)

	// The engine and the remote read handler register with MustRegister;
	// route that through a wrapper so a duplicate registration becomes an
	// error from New rather than a panic.
	var creg *checkedRegisterer
	var metricsReg prometheus.Registerer
	if reg != nil {
		creg = &checkedRegisterer{Registerer: reg}
		metricsReg = creg
	}

	a := &API{
		cfg:    cfg,
		deps:   deps,
		logger: logger,
		// Duration expressions are on by default in Prometheus v0.315
		// (the feature flag is a no-op); experimental functions are not.
		parser: parser.NewParser(parser.Options{ExperimentalDurationExpr: true}),
		now:    time.Now,
	}
	a.metrics = newAPIMetrics(metricsReg)

	var tracker promql.QueryTracker
	if cfg.MaxConcurrency > 0 {
		a.gate = newQueryGate(cfg.MaxConcurrency, a.metrics.queryQueueTimeouts)
		tracker = a.gate
	}
	a.engine = promql.NewEngine(promql.EngineOpts{
		Logger:             logger.With("component", "query engine"),
		Reg:                metricsReg,
		MaxSamples:         cfg.MaxSamples,
		Timeout:            cfg.Timeout,
		ActiveQueryTracker: tracker,
		LookbackDelta:      cfg.LookbackDelta,
		// Prometheus uses the global evaluation_interval (default 1m) as
		// the step of subqueries written without one.
		NoStepSubqueryIntervalFn: func(int64) int64 { return time.Minute.Milliseconds() },
		// Always on in Prometheus since v2.33; the rest stay behind
		// feature flags there and are off here too.
		EnableAtModifier:     true,
		EnableNegativeOffset: true,
		Parser:               a.parser,
	})

	a.queries = a.engine
	if sq, ok := deps.Queryable.(SliceableQueryable); ok && sq.ReadsQuerySlices() && cfg.Parallelism > 1 {
		// Slices run inside a query the gate already admitted: their
		// engine has no gate (and no metrics of its own).
		// The slices of a query share its sample limit.
		perSlice := max(1, cfg.MaxSamples/cfg.Parallelism)
		sub := promql.NewEngine(promql.EngineOpts{
			Logger:                   logger.With("component", "query engine", "slices", true),
			MaxSamples:               perSlice,
			Timeout:                  cfg.Timeout,
			LookbackDelta:            cfg.LookbackDelta,
			NoStepSubqueryIntervalFn: func(int64) int64 { return time.Minute.Milliseconds() },
			EnableAtModifier:         true,
			EnableNegativeOffset:     true,
			Parser:                   a.parser,
		})
		a.sub = sub
		a.queries = parallel.New(parallel.Config{Slices: cfg.Parallelism, MaxSamples: perSlice, LookbackDelta: cfg.LookbackDelta}, a.engine, sub, a.parser, metricsReg, logger)
	}

	remoteRead := newRemoteReadHandler(cfg, deps.Queryable, metricsReg, logger)

	if creg != nil && creg.err != nil {
		_ = a.engine.Close()
		return nil, fmt.Errorf("query api: register metrics: %w", creg.err)
	}

	a.baseCtx, a.cancel = context.WithCancel(context.Background())
	a.buildRoutes(remoteRead)
	return a, nil
}

func withDefaults(cfg Config) Config {
	def := DefaultConfig()
	if cfg.Timeout <= 0 {
		cfg.Timeout = def.Timeout
	}
	if cfg.MaxSamples <= 0 {
		cfg.MaxSamples = def.MaxSamples
	}
	if cfg.MaxConcurrency == 0 {
		cfg.MaxConcurrency = def.MaxConcurrency
	}
	if cfg.LookbackDelta <= 0 {
		cfg.LookbackDelta = def.LookbackDelta
	}
	if cfg.Parallelism <= 0 {
		cfg.Parallelism = runtime.GOMAXPROCS(0)
	}
	if cfg.RemoteReadSampleLimit == 0 {
		cfg.RemoteReadSampleLimit = def.RemoteReadSampleLimit
	}
	if cfg.RemoteReadConcurrencyLimit == 0 {
		cfg.RemoteReadConcurrencyLimit = def.RemoteReadConcurrencyLimit
	}
	if cfg.RemoteReadMaxBytesInFrame <= 0 {
		cfg.RemoteReadMaxBytesInFrame = def.RemoteReadMaxBytesInFrame
	}
	return cfg
}

// Close cancels in-flight requests and releases the engine.
func (a *API) Close() error {
	a.cancel()
	if a.sub != nil {
		_ = a.sub.Close()
	}
	return a.engine.Close()
}

// SliceableQueryable is a Queryable whose Select honours
// shard.WithQuerySlice (Kiln's shard and its cluster fan-out); only over
// such storage does the API evaluate aggregations in slices, as any other
// would hand every slice all the series.
type SliceableQueryable interface {
	ReadsQuerySlices() bool
}

// route is one served path.
type route struct {
	name    string   // the "handler" label of the request metrics
	methods []string // allowed methods; HEAD is allowed wherever GET is
	gated   bool     // answer 503 until Deps.Ready reports true
	h       fasthttp.RequestHandler
}

func (a *API) buildRoutes(remoteRead fasthttp.RequestHandler) {
	get := []string{fasthttp.MethodGet}
	getPost := []string{fasthttp.MethodGet, fasthttp.MethodPost}
	post := []string{fasthttp.MethodPost}

	a.routes = map[string]*route{}
	add := func(path string, methods []string, gated bool, h fasthttp.RequestHandler) *route {
		r := &route{name: path, methods: methods, gated: gated, h: h}
		a.routes[path] = r
		return r
	}
	api := func(path string, methods []string, f apiFunc) {
		add(path, methods, true, a.jsonHandler(f))
	}

	api("/api/v1/query", getPost, a.query)
	api("/api/v1/query_range", getPost, a.queryRange)
	api("/api/v1/query_exemplars", getPost, a.queryExemplars)
	api("/api/v1/format_query", getPost, a.formatQuery)
	api("/api/v1/parse_query", getPost, a.parseQuery)
	api("/api/v1/labels", getPost, a.labelNames)
	api("/api/v1/series", getPost, a.series)
	api("/api/v1/metadata", get, a.metricMetadata)
	api("/api/v1/status/buildinfo", get, a.serveBuildInfo)
	api("/api/v1/status/runtimeinfo", get, a.serveRuntimeInfo)
	api("/api/v1/status/flags", get, a.serveFlags)
	api("/api/v1/status/config", get, a.serveConfig)
	api("/api/v1/status/tsdb", get, a.serveTSDBStatus)
	a.labelValues = &route{name: "/api/v1/label/:name/values", methods: get, gated: true, h: a.jsonHandler(a.labelValuesHandler)}
	// Go's runtime profiles, as Prometheus serves them: how a slow query or
	// ingest path is diagnosed on a running node without restarting it.
	a.pprof = &route{name: "/debug/pprof", methods: getPost, h: pprofhandler.PprofHandler}

	add("/api/v1/read", post, true, remoteRead)
	add("/federate", get, true, fasthttp.CompressHandler(a.federate))
	add("/-/healthy", get, false, a.healthy)
	add("/-/ready", get, false, a.readyHandler)
	if a.deps.Gatherer != nil {
		add("/metrics", get, false, fasthttpadaptor.NewFastHTTPHandler(
			promhttp.HandlerFor(a.deps.Gatherer, promhttp.HandlerOpts{ErrorLog: slog.NewLogLogger(a.logger.Handler(), slog.LevelError)})))
	}
}

// Handler serves the API's routes and passes every other path to next.
func (a *API) Handler(next fasthttp.RequestHandler) fasthttp.RequestHandler {
	return func(ctx *fasthttp.RequestCtx) {
		path := ctx.Path()
		r, ok := a.routes[string(path)] // no allocation: the compiler special-cases map[string(b)]
		if !ok && bytes.HasPrefix(path, labelValuesPrefix) && bytes.HasSuffix(path, labelValuesSuffix) {
			r, ok = a.labelValues, true
		}
		if !ok && bytes.HasPrefix(path, pprofPrefix) {
			r, ok = a.pprof, true
		}
		if !ok {
			next(ctx)
			return
		}
		a.serve(r, ctx)
	}
}

var (
	pprofPrefix       = []byte("/debug/pprof/")
	labelValuesPrefix = []byte("/api/v1/label/")
	labelValuesSuffix = []byte("/values")
)

func (a *API) serve(r *route, ctx *fasthttp.RequestCtx) {
	start := time.Now()
	defer func() {
		a.metrics.requests.WithLabelValues(r.name, strconv.Itoa(ctx.Response.StatusCode())).Inc()
		a.metrics.duration.WithLabelValues(r.name).Observe(time.Since(start).Seconds())
	}()

	if !methodAllowed(ctx, r.methods) {
		ctx.Error("Method Not Allowed", fasthttp.StatusMethodNotAllowed) // resets headers, so first
		ctx.Response.Header.Set(fasthttp.HeaderAllow, allowHeader(r.methods))
		return
	}
	if r.gated && !a.isReady() {
		ctx.Error("Service Unavailable", fasthttp.StatusServiceUnavailable)
		return
	}
	r.h(ctx)
}

func methodAllowed(ctx *fasthttp.RequestCtx, methods []string) bool {
	m := ctx.Method()
	for _, allowed := range methods {
		if string(m) == allowed || (allowed == fasthttp.MethodGet && string(m) == fasthttp.MethodHead) {
			return true
		}
	}
	return false
}

func allowHeader(methods []string) string {
	return strings.Join(methods, ", ")
}

func (a *API) isReady() bool {
	return a.deps.Ready == nil || a.deps.Ready()
}

func (*API) healthy(ctx *fasthttp.RequestCtx) {
	ctx.SetContentType("text/plain; charset=utf-8")
	if !ctx.IsHead() {
		ctx.SetBodyString("Kiln Server is Healthy.\n")
	}
}

func (a *API) readyHandler(ctx *fasthttp.RequestCtx) {
	ctx.SetContentType("text/plain; charset=utf-8")
	if !a.isReady() {
		ctx.SetStatusCode(fasthttp.StatusServiceUnavailable)
		ctx.SetBodyString("Service Unavailable")
		return
	}
	if !ctx.IsHead() {
		ctx.SetBodyString("Kiln Server is Ready.\n")
	}
}

// apiFuncResult is what a JSON handler produces. finalizer, when set, runs
// after the response is written (it releases query memory the encoder still
// reads).
type apiFuncResult struct {
	data      any
	err       *apiError
	warnings  annotations.Annotations
	finalizer func()
}

type apiFunc func(r *request) apiFuncResult

// jsonHandler adapts an apiFunc to fasthttp: it builds the request context,
// writes the envelope and gzip/deflate-compresses it when asked to, as
// Prometheus's CompressionHandler does.
func (a *API) jsonHandler(f apiFunc) fasthttp.RequestHandler {
	return fasthttp.CompressHandler(func(fctx *fasthttp.RequestCtx) {
		ctx, cancel := context.WithCancel(a.baseCtx)
		defer cancel()
		r := &request{fctx: fctx, ctx: ctx}

		if err := r.partialResponse(); err != nil {
			a.respondError(fctx, &apiError{errorBadData, err}, nil)
			return
		}
		res := a.callRecovering(f, r)
		if res.finalizer != nil {
			defer res.finalizer()
		}
		switch {
		case res.err != nil:
			a.respondError(fctx, res.err, res.data)
		case res.data != nil:
			a.respond(fctx, res.data, res.warnings, r.formValue("query"))
		default:
			fctx.SetStatusCode(fasthttp.StatusNoContent)
		}
	})
}

// callRecovering turns a handler panic into a 500: fasthttp, unlike
// net/http, does not recover panics and would take the process down.
func (a *API) callRecovering(f apiFunc, r *request) (res apiFuncResult) {
	defer func() {
		if p := recover(); p != nil {
			a.logger.Error("panic in API handler", "path", string(r.fctx.Path()), "panic", p, "stack", string(debug.Stack()))
			res = apiFuncResult{err: &apiError{errorInternal, fmt.Errorf("internal error: %v", p)}}
		}
	}()
	return f(r)
}

// checkedRegisterer records registration errors instead of panicking.
type checkedRegisterer struct {
	prometheus.Registerer
	err error
}

func (r *checkedRegisterer) MustRegister(cs ...prometheus.Collector) {
	for _, c := range cs {
		if err := r.Register(c); err != nil && r.err == nil {
			r.err = err
		}
	}
}

type apiMetrics struct {
	requests           *prometheus.CounterVec
	duration           *prometheus.HistogramVec
	federationErrors   prometheus.Counter
	federationWarnings prometheus.Counter
	queryQueueTimeouts prometheus.Counter
}

func newAPIMetrics(reg prometheus.Registerer) *apiMetrics {
	f := promauto.With(reg)
	return &apiMetrics{
		requests: f.NewCounterVec(prometheus.CounterOpts{
			Name: "kiln_http_requests_total",
			Help: "Requests served by the query API, by handler and HTTP status code.",
		}, []string{"handler", "code"}),
		duration: f.NewHistogramVec(prometheus.HistogramOpts{
			Name:                        "kiln_http_request_duration_seconds",
			Help:                        "Latency of the query API, by handler.",
			Buckets:                     []float64{.005, .025, .1, .5, 2, 10, 60, 120},
			NativeHistogramBucketFactor: 1.1,
		}, []string{"handler"}),
		federationErrors: f.NewCounter(prometheus.CounterOpts{
			Name: "kiln_federation_errors_total",
			Help: "Errors while sending federation responses.",
		}),
		federationWarnings: f.NewCounter(prometheus.CounterOpts{
			Name: "kiln_federation_warnings_total",
			Help: "Storage warnings while sending federation responses.",
		}),
		// The engine already exports prometheus_engine_queries (running
		// plus queued) and prometheus_engine_queries_concurrent_max.
		queryQueueTimeouts: f.NewCounter(prometheus.CounterOpts{
			Name: "kiln_query_queue_timeouts_total",
			Help: "Queries that gave up waiting for a concurrency slot.",
		}),
	}
}

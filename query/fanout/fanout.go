// Package fanout answers PromQL on any node of a Kiln cluster: its Queryable
// reads each partition from enough live replicas to see every acknowledged
// write, the local storage directly and peers over POST /internal/v1/*, and
// merges the replicas so every sample counts once.
//
// # Plan
//
// Per Select (or label query) the plan takes the current ring and, for each
// of the 1024 partitions, R = RF − W + 1 live owners, W being the write
// quorum of Config.WriteConsistency: this node first when it owns the
// partition, then peers rotated by partition number so reads spread
// deterministically. Partitions are grouped by node: one local querier over
// a partition set, one request per peer. A query that touches only this node
// makes no network call and runs on the local querier as is. Peers read for
// partitions this node also holds send a digest first (digest.go), and only
// the partitions whose replicas differ cross the network whole.
//
// # Failures and partial responses
//
// Peers are queried in parallel, each with Config.Timeout (and the caller's
// context). The partitions of a failed peer are retried once on owners not
// yet used. A partition left without any replica — no live owner at plan
// time, or every chosen owner failed — fails the query with an error
// wrapping ErrPartitionsUnavailable, unless partial response is on
// (WithPartialResponse, or Config.PartialResponse by default): then the
// query answers from the rest, with a warning naming the missing partitions.
package fanout

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	"github.com/prometheus/prometheus/model/metadata"
	"github.com/prometheus/prometheus/storage"
	"github.com/valyala/fasthttp"

	"github.com/kilnhq/kiln/cluster/ring"
	"github.com/kilnhq/kiln/shard"
)

// Topology is what this package needs to know of the cluster.
type Topology interface {
	Self() string           // this node's name (a ring.Member.Name)
	Ring() *ring.Ring       // current assignment; nil before one is known
	Alive(name string) bool // gossip says the member is reachable now (Self is always alive)
}

// Local is this node's storage; *shard.DB satisfies it.
type Local interface {
	PartitionQuerier(mint, maxt int64, parts *shard.PartitionSet) storage.Querier
	PartitionChunkQuerier(mint, maxt int64, parts *shard.PartitionSet) storage.ChunkQuerier
	Metadata(ctx context.Context, metric string, limit, limitPerMetric int) (map[string][]metadata.Metadata, error)
	// PartitionCells appends partition p's cell digests over [mint, maxt]
	// to dst; false when they are not valid (shard/cells.go).
	PartitionCells(p uint16, mint, maxt int64, dst []shard.CellDigest) ([]shard.CellDigest, bool)
	storage.ExemplarQueryable
}

// Config configures the fan-out.
type Config struct {
	// WriteConsistency is the write path's acknowledgement level: "one",
	// "quorum" (default) or "all". Reads ask R = RF − W + 1 replicas per
	// partition, so read and write sets overlap.
	WriteConsistency string
	// Timeout bounds each peer request. Default 30s.
	Timeout time.Duration
	// PartialResponse is the default when a request does not say.
	PartialResponse bool
}

// ErrPartitionsUnavailable is wrapped by the error of a query that found no
// reachable replica for some partitions.
var ErrPartitionsUnavailable = errors.New("partitions unavailable")

// MissingPartitionsError names the partitions a query could not read.
type MissingPartitionsError struct {
	Partitions []uint16 // sorted
}

func (e *MissingPartitionsError) Error() string {
	return fmt.Sprintf("%s: %s", ErrPartitionsUnavailable, describeMissing(e.Partitions))
}

func (e *MissingPartitionsError) Unwrap() error { return ErrPartitionsUnavailable }

// Unavailable makes the query API answer 503 "unavailable".
func (e *MissingPartitionsError) Unavailable() bool { return true }

func describeMissing(parts []uint16) string {
	const show = 8
	ids := make([]string, 0, show)
	for _, p := range parts[:min(len(parts), show)] {
		ids = append(ids, fmt.Sprint(p))
	}
	more := ""
	if len(parts) > show {
		more = ", …"
	}
	return fmt.Sprintf("%d of %d partitions have no reachable replica (partitions %s%s)",
		len(parts), shard.NumPartitions, strings.Join(ids, ", "), more)
}

type partialKey struct{}

// WithPartialResponse sets whether queries under ctx may answer from the
// partitions that are reachable (with a warning) instead of failing.
func WithPartialResponse(ctx context.Context, on bool) context.Context {
	return context.WithValue(ctx, partialKey{}, on)
}

func (q *Queryable) partial(ctx context.Context) bool {
	if v, ok := ctx.Value(partialKey{}).(bool); ok {
		return v
	}
	return q.cfg.PartialResponse
}

// Queryable is the cluster-wide storage.SampleAndChunkQueryable.
type Queryable struct {
	cfg     Config
	topo    Topology
	local   Local
	client  *fasthttp.Client
	metrics *metrics
	logger  *slog.Logger
	// noDigests turns digest-first reads off (digest.go), for tests and
	// benchmarks that compare with whole reads.
	noDigests bool
}

var (
	_ storage.SampleAndChunkQueryable = (*Queryable)(nil)
	_ storage.ExemplarQueryable       = (*Queryable)(nil)
)

// New builds the Queryable. Metrics go to reg (nil: not registered).
func New(cfg Config, topo Topology, local Local, reg prometheus.Registerer, logger *slog.Logger) (*Queryable, error) {
	if topo == nil || local == nil {
		return nil, errors.New("fanout: topology and local storage are required")
	}
	switch cfg.WriteConsistency {
	case "":
		cfg.WriteConsistency = "quorum"
	case "one", "quorum", "all":
	default:
		return nil, fmt.Errorf("fanout: unknown write consistency %q (want one, quorum or all)", cfg.WriteConsistency)
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 30 * time.Second
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Queryable{
		cfg:   cfg,
		topo:  topo,
		local: local,
		client: &fasthttp.Client{
			Name:                     "kiln-fanout",
			MaxConnsPerHost:          64,
			MaxIdleConnDuration:      time.Minute,
			MaxResponseBodySize:      1 << 30,
			NoDefaultUserAgentHeader: true,
		},
		metrics: newMetrics(reg),
		logger:  logger,
	}, nil
}

// readReplicas is R for replication factor rf: the smallest read set that
// overlaps every write set of size W.
func (q *Queryable) readReplicas(rf int) int {
	var w int
	switch q.cfg.WriteConsistency {
	case "one":
		w = 1
	case "all":
		w = rf
	default:
		w = rf/2 + 1
	}
	return max(1, min(rf, rf-w+1))
}

type metrics struct {
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
	errors   *prometheus.CounterVec
	missing  prometheus.Counter
	digests  *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	f := promauto.With(reg)
	return &metrics{
		requests: f.NewCounterVec(prometheus.CounterOpts{
			Name: "kiln_cluster_fanout_requests_total",
			Help: "Read requests sent to peers, by peer and endpoint.",
		}, []string{"peer", "endpoint"}),
		duration: f.NewHistogramVec(prometheus.HistogramOpts{
			Name:                        "kiln_cluster_fanout_duration_seconds",
			Help:                        "Latency of read requests to peers, by endpoint.",
			Buckets:                     []float64{.001, .005, .025, .1, .5, 2, 10, 60},
			NativeHistogramBucketFactor: 1.1,
		}, []string{"endpoint"}),
		errors: f.NewCounterVec(prometheus.CounterOpts{
			Name: "kiln_cluster_fanout_errors_total",
			Help: "Failed read requests to peers, by peer.",
		}, []string{"peer"}),
		missing: f.NewCounter(prometheus.CounterOpts{
			Name: "kiln_cluster_query_missing_partitions_total",
			Help: "Partitions queries could not read from any replica, summed over queries.",
		}),
		digests: f.NewCounterVec(prometheus.CounterOpts{
			Name: "kiln_cluster_fanout_digest_partitions_total",
			Help: "Partitions of Selects whose peer replica was compared with the local one, by outcome (cells_equal: cell digests agreed, read locally; equal: the Select's digests agreed, read locally; different: fetched whole and merged).",
		}, []string{"result"}),
	}
}

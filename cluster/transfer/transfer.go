// Package transfer moves partition data between nodes and keeps replicas
// converged.
//
// It is the data plane under the cluster's move protocol: the cluster
// decides which partitions a node must fetch or may drop (cluster.Mover),
// this package streams them. A fetch is an HTTP GET of
// /internal/v1/partition/export on a settled owner, whose body is the
// storage's partition stream (shard.ExportPartition, rate limited), loaded
// with shard.ImportPartition: idempotent, so a repeated or partial fetch is
// harmless.
//
// Anti-entropy: every Config.AntiEntropyInterval each node compares, for
// every partition it is a settled owner of, per-bucket digests
// (shard.PartitionDigest, /internal/v1/partition/digest) with each other
// alive settled owner, and pulls the buckets that differ. Every node does
// the same, so differences in either direction converge; a conflicting
// value at one timestamp keeps each node's first write (the storage's
// duplicate rule). A partition whose local copy cannot be read (corrupt
// chunks) is dropped and fetched whole.
package transfer

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	"github.com/valyala/fasthttp"

	"github.com/kilnhq/kiln/cluster/ring"
	"github.com/kilnhq/kiln/shard"
)

// Paths served by Handle.
const (
	ExportPath = "/internal/v1/partition/export"
	DigestPath = "/internal/v1/partition/digest"
)

// ErrNotOwner is returned when the peer asked for a partition is not a
// settled owner of it, so its copy may be incomplete or already dropped.
var ErrNotOwner = errors.New("peer is not a settled owner of the partition")

// Store is the node's storage; *shard.DB satisfies it.
type Store interface {
	ExportPartition(ctx context.Context, p uint16, mint, maxt int64, w io.Writer, opts shard.ExportOptions) (shard.ExportStats, error)
	ImportPartition(ctx context.Context, r io.Reader) (shard.ImportStats, error)
	DropPartition(ctx context.Context, p uint16) error
	PartitionDigest(ctx context.Context, p uint16, mint, maxt, step int64) ([]shard.BucketDigest, error)
}

// Topology is what transfer needs of the cluster.
type Topology interface {
	Self() string
	Ring() *ring.Ring
	Alive(name string) bool
}

// Config configures a Transfer.
type Config struct {
	// MoveRate caps the bytes per second one export streams; 0 = unlimited.
	MoveRate int64
	// AntiEntropyInterval is the pause between two full anti-entropy
	// passes; 0 disables the loop (CheckAll still works).
	AntiEntropyInterval time.Duration
	// DigestStep is the width of a digest bucket; default 2h.
	DigestStep time.Duration
	// Retention bounds the window anti-entropy compares:
	// [now-Retention, now-SettleLag).
	Retention time.Duration
	// SettleLag keeps the newest data out of the comparison (default 15m):
	// writes still in flight, or hints about to be replayed, would make
	// the newest bucket differ on every pass and be pulled for nothing.
	SettleLag time.Duration
	// Timeout bounds a digest request; fetches are bounded by their context.
	Timeout time.Duration
	Now     func() time.Time
}

// Transfer implements cluster.Mover and runs anti-entropy.
type Transfer struct {
	cfg    Config
	topo   Topology
	store  Store
	client *http.Client
	logger *slog.Logger
	m      metrics
	// exports is the context of the partition exports this node serves;
	// StopExports cancels it.
	exports     context.Context
	stopExports context.CancelFunc
}

type metrics struct {
	fetchedBytes  prometheus.Counter
	exportedBytes prometheus.Counter
	passes        prometheus.Counter
	passSeconds   prometheus.Gauge
	repaired      *prometheus.CounterVec
	differing     prometheus.Counter
}

// StopExports ends the partition exports this node is serving, and fails
// those asked for later: a node shutting down must not wait for a peer's
// fetch at the move rate, which can take minutes. The peer sees a stream
// without its trailer, an error, and fetches from another owner.
func (t *Transfer) StopExports() { t.stopExports() }

// New returns a Transfer over store.
func New(cfg Config, topo Topology, store Store, reg prometheus.Registerer, logger *slog.Logger) *Transfer {
	if cfg.DigestStep <= 0 {
		cfg.DigestStep = 2 * time.Hour
	}
	if cfg.Retention <= 0 {
		cfg.Retention = 15 * 24 * time.Hour
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = time.Minute
	}
	if cfg.SettleLag <= 0 {
		cfg.SettleLag = 15 * time.Minute
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	f := promauto.With(reg)
	exports, stopExports := context.WithCancel(context.Background())
	return &Transfer{
		cfg: cfg, topo: topo, store: store, logger: logger,
		exports: exports, stopExports: stopExports,
		// No overall timeout: a partition stream may take minutes at the
		// move rate; contexts bound each call. A peer that does not answer
		// at all (paused, cut off) fails the dial or the header wait.
		client: &http.Client{Transport: &http.Transport{
			MaxIdleConnsPerHost:   4,
			DialContext:           (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 15 * time.Second}).DialContext,
			ResponseHeaderTimeout: cfg.Timeout,
		}},
		m: metrics{
			fetchedBytes:  f.NewCounter(prometheus.CounterOpts{Name: "kiln_cluster_transfer_fetched_bytes_total", Help: "Partition stream bytes fetched from peers (moves and repairs)."}),
			exportedBytes: f.NewCounter(prometheus.CounterOpts{Name: "kiln_cluster_transfer_exported_bytes_total", Help: "Partition stream bytes served to peers."}),
			passes:        f.NewCounter(prometheus.CounterOpts{Name: "kiln_cluster_antientropy_passes_total", Help: "Completed anti-entropy passes."}),
			passSeconds:   f.NewGauge(prometheus.GaugeOpts{Name: "kiln_cluster_antientropy_last_pass_seconds", Help: "Duration of the last anti-entropy pass."}),
			repaired:      f.NewCounterVec(prometheus.CounterOpts{Name: "kiln_cluster_antientropy_repairs_total", Help: "Partition buckets pulled from a peer because digests differed, by result."}, []string{"result"}),
			differing:     f.NewCounter(prometheus.CounterOpts{Name: "kiln_cluster_antientropy_differing_buckets_total", Help: "Digest buckets found different from a peer's."}),
		},
	}
}

// Fetch copies partition p from from, durably (cluster.Mover).
func (t *Transfer) Fetch(ctx context.Context, p uint16, from ring.Member) (int64, error) {
	return t.pull(ctx, p, from, math.MinInt64, math.MaxInt64)
}

// Drop deletes partition p here (cluster.Mover).
func (t *Transfer) Drop(ctx context.Context, p uint16) error {
	return t.store.DropPartition(ctx, p)
}

// pull imports partition p's data in [mint, maxt] from a peer.
func (t *Transfer) pull(ctx context.Context, p uint16, from ring.Member, mint, maxt int64) (int64, error) {
	body, err := t.open(ctx, p, from, mint, maxt)
	if err != nil {
		return 0, err
	}
	defer func() { _ = body.Close() }()
	cr := &countingReader{r: body}
	st, err := t.store.ImportPartition(ctx, cr)
	t.m.fetchedBytes.Add(float64(cr.n))
	if err != nil {
		return cr.n, fmt.Errorf("import partition %d from %s: %w", p, from.Name, err)
	}
	t.logger.Debug("partition imported", "partition", p, "from", from.Name, "bytes", cr.n, "series", st.Series, "samples", st.Samples, "duplicates", st.Duplicates)
	return cr.n, nil
}

// download copies partition p's stream from a peer into w.
func (t *Transfer) download(ctx context.Context, p uint16, from ring.Member, mint, maxt int64, w io.Writer) error {
	body, err := t.open(ctx, p, from, mint, maxt)
	if err != nil {
		return err
	}
	defer func() { _ = body.Close() }()
	n, err := io.Copy(w, body)
	t.m.fetchedBytes.Add(float64(n))
	return err
}

// open starts the export of partition p on a peer.
func (t *Transfer) open(ctx context.Context, p uint16, from ring.Member, mint, maxt int64) (io.ReadCloser, error) {
	q := url.Values{"p": {strconv.Itoa(int(p))}, "mint": {strconv.FormatInt(mint, 10)}, "maxt": {strconv.FormatInt(maxt, 10)}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+from.Addr+ExportPath+"?"+q.Encode(), nil)
	if err != nil {
		return nil, err
	}
	resp, err := t.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("fetch partition %d from %s: %w", p, from.Name, err)
	}
	switch resp.StatusCode {
	case http.StatusOK:
		return resp.Body, nil
	case http.StatusConflict:
		_ = resp.Body.Close()
		return nil, fmt.Errorf("fetch partition %d from %s: %w", p, from.Name, ErrNotOwner)
	default:
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		_ = resp.Body.Close()
		return nil, fmt.Errorf("fetch partition %d from %s: status %d: %s", p, from.Name, resp.StatusCode, msg)
	}
}

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(b []byte) (int, error) {
	n, err := c.r.Read(b)
	c.n += int64(n)
	return n, err
}

// Handle serves ExportPath and DigestPath to peers.
func (t *Transfer) Handle(ctx *fasthttp.RequestCtx) {
	args := ctx.QueryArgs()
	p, err := strconv.ParseUint(string(args.Peek("p")), 10, 16)
	if err != nil || p >= shard.NumPartitions {
		ctx.Error("bad partition", fasthttp.StatusBadRequest)
		return
	}
	mint, err1 := strconv.ParseInt(string(args.Peek("mint")), 10, 64)
	maxt, err2 := strconv.ParseInt(string(args.Peek("maxt")), 10, 64)
	if err1 != nil || err2 != nil || mint > maxt {
		ctx.Error("bad time range", fasthttp.StatusBadRequest)
		return
	}
	part := uint16(p)
	switch string(ctx.Path()) {
	case ExportPath:
		// Only a settled owner's copy is known complete; a node that was
		// assigned the partition but has not fetched it yet, or has
		// dropped it, must not be copied from.
		if !t.topo.Ring().Owns(t.topo.Self(), part) {
			ctx.Error(ErrNotOwner.Error(), fasthttp.StatusConflict)
			return
		}
		ctx.SetContentType("application/octet-stream")
		ctx.SetBodyStreamWriter(func(w *bufio.Writer) {
			cw := &countingWriter{w: w}
			// The stream ends with a trailer frame: an export cut short
			// is an error on the importing side, not silent data loss.
			if _, err := t.store.ExportPartition(t.exports, part, mint, maxt, cw, shard.ExportOptions{BytesPerSecond: t.cfg.MoveRate}); err != nil {
				t.logger.Warn("partition export failed", "partition", part, "err", err)
			}
			t.m.exportedBytes.Add(float64(cw.n))
		})
	case DigestPath:
		step, err := strconv.ParseInt(string(args.Peek("step")), 10, 64)
		if err != nil || step <= 0 {
			ctx.Error("bad step", fasthttp.StatusBadRequest)
			return
		}
		ds, err := t.store.PartitionDigest(ctx, part, mint, maxt, step)
		if err != nil {
			ctx.Error(err.Error(), fasthttp.StatusInternalServerError)
			return
		}
		ctx.SetContentType("application/octet-stream")
		ctx.SetBody(encodeDigests(ds))
	default:
		ctx.Error("not found", fasthttp.StatusNotFound)
	}
}

type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(b []byte) (int, error) {
	n, err := c.w.Write(b)
	c.n += int64(n)
	return n, err
}

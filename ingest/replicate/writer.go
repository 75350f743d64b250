package replicate

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/prometheus/storage"
	"github.com/valyala/fasthttp"
)

// Writer is the replicated write path: a storage.AppendableV2 for the
// remote-write handler and the scraper, the handler of peers' forwarded
// writes, and the hinted-handoff replayer. Safe for concurrent use.
type Writer struct {
	cfg    Config
	topo   Topology
	local  storage.AppendableV2
	logger *slog.Logger
	m      *metrics

	enc    *zstd.Encoder
	dec    *zstd.Decoder
	client *fasthttp.Client
	hints  *hintStore
	tables tables

	mu    sync.Mutex
	peers map[string]*peer

	// batchHint is the size of the largest recent peer batch: new batches
	// start with that capacity, as growing them sample by sample was a
	// tenth of the coordinator's CPU (copying on every doubling).
	batchHint atomic.Int64
	batches   sync.Pool // *batch, reset
	encBufs   sync.Pool // *encodeBufs
}

// newBatch returns an empty peer batch with one holder, a reused one or
// one sized like recent ones.
func (w *Writer) newBatch() *batch {
	b, ok := w.batches.Get().(*batch)
	if !ok {
		b = &batch{}
		if n := int(w.batchHint.Load()); n > 0 {
			slots := 64
			for slots < 2*n {
				slots *= 2
			}
			b.series, b.slots, b.floats = make([]bseries, 0, n), make([]int32, slots), make([]fsample, 0, n)
		}
	}
	b.refs.Store(1)
	return b
}

// releaseBatch drops one holder of b; the last one makes it reusable.
func (w *Writer) releaseBatch(b *batch) {
	if b.refs.Add(-1) != 0 {
		return
	}
	if cap(b.series) > 1<<17 || cap(b.floats) > 1<<17 || cap(b.hists) > 1<<14 {
		return // an outsized request does not pin its memory
	}
	b.reset()
	w.batches.Put(b)
}

// sawBatch updates the size hint: it follows the largest batch, decaying
// by an eighth per batch so one huge request does not pin it.
func (w *Writer) sawBatch(b *batch) {
	n := int64(max(len(b.floats), len(b.series)))
	old := w.batchHint.Load()
	next := max(n, old-old/8)
	if next != old {
		w.batchHint.CompareAndSwap(old, next)
	}
}

// New returns a Writer appending this node's share to local.
func New(cfg Config, topo Topology, local storage.AppendableV2, reg prometheus.Registerer, logger *slog.Logger) (*Writer, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	if topo == nil || local == nil {
		return nil, errors.New("replicate: nil Topology or local storage")
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	w := &Writer{cfg: cfg, topo: topo, local: local, logger: logger, m: newMetrics(reg), peers: map[string]*peer{}}
	// SpeedDefault: 2.36 rather than 2.64 bytes per sample over SpeedFastest
	// for a loadgen batch (TestWireBytesPerSample).
	if w.enc, err = zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedDefault), zstd.WithEncoderConcurrency(1)); err != nil {
		return nil, err
	}
	if w.dec, err = zstd.NewReader(nil, zstd.WithDecoderConcurrency(0), zstd.WithDecoderMaxMemory(maxPayload)); err != nil {
		return nil, err
	}
	w.client = &fasthttp.Client{
		Name:                "kiln-replicate",
		MaxConnsPerHost:     cfg.MaxInflightPerPeer,
		ReadTimeout:         cfg.Timeout,
		WriteTimeout:        cfg.Timeout,
		MaxIdleConnDuration: time.Minute,
		// Requests are not idempotent at the HTTP layer's discretion: the
		// caller decides about retries (resync, hints).
		RetryIfErr: func(*fasthttp.Request, int, error) (bool, bool) { return false, false },
	}
	if w.hints, err = openHints(cfg.HintsDir, cfg.MaxHintBytesPerPeer, cfg.Now, w.m, logger); err != nil {
		return nil, err
	}
	return w, nil
}

// Close releases the Writer's resources. Hints stay on disk for the next
// start.
func (w *Writer) Close() error {
	w.client.CloseIdleConnections()
	w.dec.Close()
	return w.enc.Close()
}

// Backlog reports the hints waiting per peer (peers with none are omitted).
func (w *Writer) Backlog() map[string]HintBacklog {
	return w.hints.backlog()
}

// Run replays hints to their peers until ctx is done: oldest first, one
// peer's hints in order, a hint deleted only once the peer acknowledged it,
// with exponential backoff (1s to 30s) after a failure.
func (w *Writer) Run(ctx context.Context) error {
	t := time.NewTicker(w.cfg.replayInterval)
	defer t.Stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	gone := map[string]time.Time{} // peer with hints -> first seen outside the ring
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		w.hints.mu.Lock()
		names := make([]string, 0, len(w.hints.queues))
		for n := range w.hints.queues {
			names = append(names, n)
		}
		w.hints.mu.Unlock()
		for _, name := range names {
			if w.forgetGone(name, gone) {
				continue
			}
			q := w.hints.queue(name)
			q.mu.Lock()
			ready := len(q.hints) > 0 && !q.replaying && !w.cfg.Now().Before(q.notBefore)
			if ready {
				q.replaying = true
			}
			q.mu.Unlock()
			if !ready {
				continue // nothing due, or a replay of this queue is running
			}
			if !w.topo.Alive(name) {
				w.setReplaying(q, false)
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer w.setReplaying(q, false)
				w.replay(ctx, name, q)
			}()
		}
	}
}

// forgetGone deletes the hints of a peer that has not been a ring member
// for HintsForgetAfter: the cluster removed it (dead-node timeout or leave)
// and re-replicates its partitions from their other owners, so the hints
// would only fill the disk. A ring not known yet forgets nothing.
func (w *Writer) forgetGone(name string, gone map[string]time.Time) bool {
	r := w.topo.Ring()
	if r == nil || len(r.Members()) == 0 {
		return false
	}
	if _, member := r.Member(name); member {
		delete(gone, name)
		return false
	}
	now := w.cfg.Now()
	since, ok := gone[name]
	if !ok {
		gone[name] = now
		return false
	}
	if now.Sub(since) < w.cfg.HintsForgetAfter {
		return false
	}
	delete(gone, name)
	if n, b := w.hints.forget(name); n > 0 {
		w.logger.Info("deleted the hints of a node no longer in the cluster", "peer", name, "hints", n, "bytes", b)
	}
	return true
}

func (w *Writer) setReplaying(q *hintQueue, v bool) {
	q.mu.Lock()
	q.replaying = v
	q.mu.Unlock()
}

const (
	minBackoff = time.Second
	maxBackoff = 30 * time.Second
)

// replay sends peer's hints in order until one fails or none is left.
func (w *Writer) replay(ctx context.Context, name string, q *hintQueue) {
	p := w.peer(name)
	for ctx.Err() == nil {
		h, ok := w.hints.oldest(name)
		if !ok {
			return
		}
		m, ok := w.topo.Ring().Member(name)
		if !ok {
			return // not in the current ring: keep the hints for when it is
		}
		body, err := w.hints.read(name, h)
		if err != nil {
			w.logger.Warn("Dropping unreadable hint", "peer", name, "err", err)
			w.m.hintsDropped.Inc()
			w.hints.done(name, h)
			continue
		}
		rej, err := w.send(ctx, p, m.Addr, body)
		if err != nil {
			q.mu.Lock()
			q.backoff = min(max(2*q.backoff, minBackoff), maxBackoff)
			q.notBefore = w.cfg.Now().Add(q.backoff)
			q.mu.Unlock()
			w.logger.Debug("Hint replay failed", "peer", name, "err", err)
			return
		}
		if len(rej) > 0 {
			// The peer already holds other values at those timestamps:
			// nothing a later replay could change.
			w.logger.Warn("Peer refused replayed samples", "peer", name, "count", len(rej), "first", rej[0].msg)
		}
		q.mu.Lock()
		q.backoff = 0
		q.mu.Unlock()
		w.hints.done(name, h)
		w.m.hintsReplayed.Inc()
	}
}

// AppenderV2 returns an appender routing samples to their owners. When the
// ring is this node alone it is the local storage's own appender: a single
// node pays nothing for replication.
func (w *Writer) AppenderV2(ctx context.Context) storage.AppenderV2 {
	r := w.topo.Ring()
	self := w.topo.Self()
	if ms := r.Members(); len(ms) == 1 && ms[0].Name == self {
		return w.local.AppenderV2(ctx)
	}
	a := &appender{w: w, ctx: ctx, ring: r, self: -1}
	for i, m := range r.Members() {
		if m.Name == self {
			a.self = int32(i)
		}
	}
	return a
}

func (w *Writer) String() string { return fmt.Sprintf("replicate.Writer(%s)", w.topo.Self()) }

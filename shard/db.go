package shard

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/storage"
	"github.com/prometheus/prometheus/tsdb"
)

// Config configures a DB.
type Config struct {
	// Path is the data directory: badger's files, and the write-ahead
	// segments under wal/. Empty runs badger in memory without a
	// write-ahead log (tests).
	Path string
	// Retention is how long samples are kept; 0 keeps them forever.
	Retention time.Duration
	// FlushInterval is how often chunks are persisted and the write-ahead
	// records they cover deleted. Default 1m.
	FlushInterval time.Duration
	// FlushBytes triggers a flush early once this many write-ahead bytes
	// accumulated. Default 256 MiB.
	FlushBytes int64
	// HeadWindow is how far behind the newest sample persisted chunks stay
	// in memory for fast queries. Default 3h.
	HeadWindow time.Duration
	// RetentionInterval is how often expired data is deleted. Default 5m.
	RetentionInterval time.Duration
	// MaxExemplars sizes the in-memory exemplar ring. Default 100000.
	MaxExemplars int64
	// SyncInterval 0 (the default) fsyncs every commit before it is
	// acknowledged. A positive interval acknowledges a commit once it is
	// in the OS page cache (written to the segment file; badger writes
	// new series through mmap: a killed process loses nothing) and fsyncs
	// every interval, so a power cut or kernel crash loses at most that
	// much: the durability of Prometheus's WAL, which is not fsynced per
	// write either.
	SyncInterval time.Duration
	// MemTableSize overrides badger's memtable size (64 MiB); tests that
	// open many DBs set it small.
	MemTableSize int64
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

func (c *Config) setDefaults() {
	if c.FlushInterval <= 0 {
		c.FlushInterval = time.Minute
	}
	if c.FlushBytes <= 0 {
		c.FlushBytes = 256 << 20
	}
	if c.HeadWindow <= 0 {
		c.HeadWindow = 3 * time.Hour
	}
	if c.RetentionInterval <= 0 {
		c.RetentionInterval = 5 * time.Minute
	}
	if c.MaxExemplars <= 0 {
		c.MaxExemplars = 100000
	}
	if c.Now == nil {
		c.Now = time.Now
	}
}

const stripeCount = 1 << 10

// DB is the storage engine of one node. It implements storage.Storage.
type DB struct {
	appendBufs sync.Pool // *appendBufs
	cfg        Config
	bdb        *badger.DB
	wal        *wal // nil in memory
	logger     *slog.Logger
	metrics    *metrics

	stripes [stripeCount]struct {
		sync.Mutex
		t seriesTable
	}
	refsMu sync.RWMutex
	refs   []*memSeries // by ref; refs[0] unused
	// refTag marks the refs this instance hands to appenders' callers
	// (see extRef).
	refTag uint64
	index  *index

	meta      *metadataStore
	exemplars tsdb.ExemplarStorage

	// commitMu orders commits against flushes: commits hold it shared while
	// they write and apply a write-ahead record, so a flush that takes it
	// exclusively and rotates the write-ahead segment knows every record in
	// the older segments is applied to memory.
	commitMu sync.RWMutex
	chunkSeq atomic.Uint64
	walBytes atomic.Int64
	maxTime  atomic.Int64 // newest sample timestamp seen
	cells    cellState

	flushMu  sync.Mutex // one flush at a time
	flushReq chan struct{}
	cancel   context.CancelFunc
	wg       sync.WaitGroup
	closed   atomic.Bool

	// legacyWAL is set when start-up replayed badger W keys written by an
	// older Kiln; the first flush deletes them. Guarded by flushMu.
	legacyWAL bool
}

// Open opens or creates the DB, replays its write-ahead records and starts
// the background flush and retention loops.
func Open(cfg Config, reg prometheus.Registerer, logger *slog.Logger) (*DB, error) {
	cfg.setDefaults()
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	start := time.Now()
	opts := badger.DefaultOptions(cfg.Path).
		WithInMemory(cfg.Path == "").
		// A write is acknowledged only after it is on disk, unless
		// SyncInterval trades that for page-cache durability.
		WithSyncWrites(cfg.SyncInterval <= 0).
		// Write-only transactions never conflict; skip the bookkeeping.
		WithDetectConflicts(false).
		// Chunks and series stay in the LSM tree; only rare large values
		// (and legacy W records) go to the value log.
		WithValueThreshold(16 << 10).
		// Small value-log files let GC hand back the space of deleted
		// large values soon: badger never rewrites the active file.
		WithValueLogFileSize(16 << 20).
		WithNumVersionsToKeep(1).
		WithLogger(badgerLogger{logger.With("component", "badger")}).
		WithMetricsEnabled(false)
	if cfg.Path == "" {
		// In memory there is no value log: every value stays in the tree.
		opts = opts.WithValueThreshold(512 << 10)
	}
	if cfg.MemTableSize > 0 {
		opts = opts.WithMemTableSize(cfg.MemTableSize).WithNumMemtables(2).WithBlockCacheSize(1 << 20).WithNumCompactors(2)
	}
	bdb, err := badger.Open(opts)
	if err != nil {
		return nil, fmt.Errorf("open badger at %q: %w", cfg.Path, err)
	}
	db := &DB{
		cfg:      cfg,
		bdb:      bdb,
		logger:   logger,
		index:    newIndex(),
		refs:     make([]*memSeries, 1),
		refTag:   uint64(rand.Uint32()|1) << 32,
		meta:     newMetadataStore(),
		flushReq: make(chan struct{}, 1),
	}
	if cfg.Path != "" {
		db.wal = newWAL(filepath.Join(cfg.Path, walDirName), logger)
	}
	db.maxTime.Store(math.MinInt64)
	db.exemplars, err = tsdb.NewCircularExemplarStorage(cfg.MaxExemplars, tsdb.NewExemplarMetrics(reg), 0)
	if err != nil {
		return nil, errors.Join(err, bdb.Close())
	}
	db.metrics = newMetrics(db, reg)
	stats, err := db.load()
	if err != nil {
		if db.wal != nil && db.wal.f != nil {
			err = errors.Join(err, db.wal.f.Close())
		}
		return nil, errors.Join(fmt.Errorf("load %q: %w", cfg.Path, err), bdb.Close())
	}
	// Cell digests did not see what was loaded.
	db.cells.from.Store(math.MinInt64)
	db.cells.invalidateThrough(db.maxTime.Load())
	dur := time.Since(start)
	db.metrics.startupSeconds.Set(dur.Seconds())
	logger.Info("storage opened", "path", cfg.Path, "duration", dur, "series", stats.series,
		"chunks_on_disk", stats.chunks, "wal_segments", stats.walSegments, "wal_records", stats.walRecords, "wal_samples_replayed", stats.walSamples)

	ctx, cancel := context.WithCancel(context.Background())
	db.cancel = cancel
	db.every(ctx, cfg.FlushInterval, db.flushReq, "flush", db.flush)
	db.every(ctx, cfg.RetentionInterval, nil, "retention", func() error { return db.applyRetention(ctx) })
	if cfg.SyncInterval > 0 && cfg.Path != "" {
		db.every(ctx, cfg.SyncInterval, nil, "periodic fsync", db.syncAll)
	}
	return db, nil
}

// every runs fn in the background every interval, and whenever kick (which
// may be nil) fires, until ctx ends; failures are logged as "<what> failed".
func (db *DB) every(ctx context.Context, interval time.Duration, kick <-chan struct{}, what string, fn func() error) {
	db.wg.Add(1)
	go func() {
		defer db.wg.Done()
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			case <-kick:
			}
			if err := fn(); err != nil {
				db.logger.Error(what+" failed", "err", err)
			}
		}
	}()
}

// syncAll fsyncs badger and the write-ahead segment (SyncInterval, when
// commits do not fsync themselves). Badger goes first: it holds the series
// records that write-ahead records refer to.
func (db *DB) syncAll() error {
	if err := db.bdb.Sync(); err != nil {
		return fmt.Errorf("badger: %w", err)
	}
	if err := db.wal.sync(); err != nil {
		return fmt.Errorf("write-ahead segment: %w", err)
	}
	return nil
}

// Close stops the background loops, persists the head and closes badger.
func (db *DB) Close() error {
	if db.closed.Swap(true) {
		return nil
	}
	db.cancel()
	db.wg.Wait()
	err := db.flush()
	if db.wal != nil {
		err = errors.Join(err, db.wal.close())
	}
	return errors.Join(err, db.bdb.Close())
}

// StartTime implements storage.Storage: the oldest timestamp held.
func (db *DB) StartTime() (int64, error) {
	mint := int64(math.MaxInt64)
	db.forEachSeries(func(s *memSeries) {
		s.mu.Lock()
		if s.minT < mint {
			mint = s.minT
		}
		s.mu.Unlock()
	})
	if mint == math.MaxInt64 {
		return db.cfg.Now().UnixMilli(), nil
	}
	return mint, nil
}

// minValidTime is the oldest timestamp accepted: retention bounds writes too.
func (db *DB) minValidTime() int64 {
	if db.cfg.Retention <= 0 {
		return math.MinInt64
	}
	return db.cfg.Now().Add(-db.cfg.Retention).UnixMilli()
}

// extRef is the storage.SeriesRef appenders return for s: its ref tagged
// with this instance's random refTag in the high 32 bits. A series ref is
// never reused within an instance, so a tagged ref names its series for
// good and the next append with it needs no comparison of labels: that
// comparison was a cache miss per sample (12% of an append over 100k
// series). An untagged ref (from elsewhere, or one too large to tag) is
// checked against the labels.
func (db *DB) extRef(s *memSeries) storage.SeriesRef {
	if s.ref > refMask {
		return storage.SeriesRef(s.ref)
	}
	return storage.SeriesRef(s.ref | db.refTag)
}

const refMask = 1<<32 - 1

// seriesByExtRef resolves an appender's ref: trusted is set when it was
// tagged by this instance.
func (db *DB) seriesByExtRef(ref storage.SeriesRef) (s *memSeries, trusted bool) {
	if r := uint64(ref); r&^refMask == db.refTag {
		return db.seriesByRef(r & refMask), true
	}
	return db.seriesByRef(uint64(ref)), false
}

func (db *DB) seriesByRef(ref uint64) *memSeries {
	db.refsMu.RLock()
	defer db.refsMu.RUnlock()
	if ref >= uint64(len(db.refs)) {
		return nil
	}
	return db.refs[ref]
}

// forEachSeries calls fn for every live series.
func (db *DB) forEachSeries(fn func(*memSeries)) {
	db.refsMu.RLock()
	all := make([]*memSeries, 0, len(db.refs))
	for _, s := range db.refs {
		if s != nil {
			all = append(all, s)
		}
	}
	db.refsMu.RUnlock()
	for _, s := range all {
		fn(s)
	}
}

// getOrCreate returns the series for ls, creating and indexing it if new.
func (db *DB) getOrCreate(ls labels.Labels, h uint64, hashed bool) (*memSeries, error) {
	if !hashed {
		// An empty value is no label, as in Prometheus: stripped before
		// hashing, or every append of such a series made another one.
		ls = ls.WithoutEmpty()
		h = labels.StableHash(ls)
	}
	st := &db.stripes[h%stripeCount]
	st.Lock()
	defer st.Unlock()
	if s := st.t.get(h, ls); s != nil {
		return s, nil
	}
	if ls.IsEmpty() {
		return nil, fmt.Errorf("empty label set: %w", ErrInvalidLabels)
	}
	if _, dup := ls.HasDuplicateLabelNames(); dup {
		return nil, fmt.Errorf("duplicate label names in %s: %w", ls, ErrInvalidLabels)
	}
	db.refsMu.Lock()
	ref := uint64(len(db.refs))
	s := newMemSeries(ref, uint16(h%NumPartitions), ls, h) // == PartitionOf(ls)
	db.refs = append(db.refs, s)
	// Indexing under refsMu keeps refs in postings in increasing order.
	db.index.add(ref, ls)
	db.refsMu.Unlock()
	st.t.add(h, s)
	db.metrics.seriesCreated.Inc()
	return s, nil
}

// removeSeries drops a series from memory (its keys are deleted by the caller).
func (db *DB) removeSeries(s *memSeries) {
	h := s.stableHash
	st := &db.stripes[h%stripeCount]
	st.Lock()
	st.t.remove(h, s)
	st.Unlock()
	db.refsMu.Lock()
	if s.ref < uint64(len(db.refs)) && db.refs[s.ref] == s {
		db.refs[s.ref] = nil
	}
	db.refsMu.Unlock()
	db.index.remove(s.ref, s.lset)
	db.metrics.seriesRemoved.Inc()
}

func (db *DB) newChunkSeq() uint64 { return db.chunkSeq.Add(1) }

// commit makes an appender's batch durable, then applies it to memory.
func (db *DB) commit(a *appender) error {
	if db.closed.Load() {
		return errClosed
	}
	if !a.empty() {
		if err := db.commitDurable(a); err != nil {
			return err
		}
	}
	for _, pe := range a.exemplars {
		// Exemplars live in memory only, like in Prometheus before its
		// exemplar WAL; an invalid or duplicate one must not fail the write.
		_ = db.exemplars.AddExemplar(pe.lset, pe.e)
	}
	return nil
}

var errClosed = errors.New("storage closed")

func (db *DB) commitDurable(a *appender) (err error) {
	start := time.Now()
	db.commitMu.RLock()
	defer db.commitMu.RUnlock()

	// Series records and metadata go to badger first, so they are durable
	// no later than the write-ahead record that refers to them. Most
	// commits have none and skip badger entirely.
	err = db.saveSeries(a)
	walLen := 0
	var synced <-chan error
	if err == nil {
		walLen, synced, err = db.writeWAL(a)
	}
	if err != nil {
		db.metrics.commitFailures.Inc()
		return fmt.Errorf("commit write-ahead record: %w", err)
	}
	// The samples are applied while the fsync runs: they are with the OS
	// already (a killed process replays them), and the caller hears of
	// success only once the fsync has returned. If it fails, the commit
	// fails though its samples stay readable, which a retry, an exact
	// duplicate, leaves as they are.
	defer func() {
		if synced != nil {
			if serr := <-synced; serr != nil && err == nil {
				db.metrics.commitFailures.Inc()
				err = fmt.Errorf("commit write-ahead record: %w", serr)
			}
		}
		if err == nil {
			db.metrics.commitDuration.Observe(time.Since(start).Seconds())
		}
	}()

	appended := 0
	maxT := int64(math.MinInt64)
	apply := func(s *memSeries, sm sample) {
		s.mu.Lock()
		ok, err := s.append(sm, db.newChunkSeq)
		if ok && !s.deleted {
			a.cellAdds = db.cells.collect(a.cellAdds, s, sm)
		}
		s.mu.Unlock()
		switch {
		case err != nil:
			// Lost a race with a concurrent commit of the same timestamp.
			db.metrics.rejected.WithLabelValues("duplicate_timestamp").Inc()
		case ok:
			appended++
			if sm.t > maxT {
				maxT = sm.t
			}
		default:
			db.metrics.duplicates.Inc()
		}
	}
	for i, r := range a.samples {
		apply(a.sseries[i], sample{st: r.ST, t: r.T, f: r.V})
	}
	for i, r := range a.hists {
		apply(a.hseries[i], sample{st: r.ST, t: r.T, h: r.H})
	}
	for i, r := range a.fhists {
		apply(a.fhseries[i], sample{st: r.ST, t: r.T, fh: r.FH})
	}
	db.cells.addAll(a.cellAdds)
	db.metrics.samplesAppended.Add(float64(appended))
	for {
		cur := db.maxTime.Load()
		if maxT <= cur || db.maxTime.CompareAndSwap(cur, maxT) {
			break
		}
	}
	if db.walBytes.Add(int64(walLen)) > db.cfg.FlushBytes {
		select {
		case db.flushReq <- struct{}{}:
		default:
		}
	}
	return nil
}

// saveSeries writes the records of the appender's series not yet on disk,
// and changed metadata, in badger transactions (synced unless SyncInterval
// says otherwise).
func (db *DB) saveSeries(a *appender) error {
	var txn *badger.Txn
	set := func(k, v []byte) error {
		if txn == nil {
			txn = db.bdb.NewTransaction(true)
		}
		err := txn.Set(k, v)
		if errors.Is(err, badger.ErrTxnTooBig) {
			// Series and metadata records are independent; committing a
			// part on its own is harmless if the rest then fails.
			if err = txn.Commit(); err != nil {
				txn = nil
				return err
			}
			txn = db.bdb.NewTransaction(true)
			err = txn.Set(k, v)
		}
		return err
	}
	var err error
	for s := range a.touched {
		if !s.saved.Load() {
			if err = set(seriesKey(s.part, s.ref), encodeLabels(nil, s.lset)); err != nil {
				break
			}
		}
	}
	for fam, m := range a.meta {
		if err != nil {
			break
		}
		err = set(metadataKey(fam), encodeMetadata(m))
	}
	if txn != nil {
		if err == nil {
			err = txn.Commit()
		} else {
			txn.Discard()
		}
	}
	if err != nil {
		return err
	}
	for s := range a.touched {
		s.saved.Store(true)
	}
	for fam, m := range a.meta {
		db.meta.set(fam, m)
	}
	return nil
}

// writeWAL appends the appender's samples to the write-ahead segment in one
// write call and, unless SyncInterval is set, starts an fsync covering them,
// whose result it returns on a channel. It returns the bytes written.
func (db *DB) writeWAL(a *appender) (int, <-chan error, error) {
	vals := a.encodeWAL()
	n := 0
	frames := a.frames[:0]
	for _, v := range vals {
		n += len(v)
		if db.wal != nil {
			frames = appendFrame(frames, v)
		}
	}
	a.frames = frames
	if len(frames) == 0 {
		return n, nil, nil
	}
	pos, err := db.wal.append(frames)
	if err != nil || db.cfg.SyncInterval > 0 || db.wal.synced.Load() >= pos {
		return n, nil, err
	}
	synced := make(chan error, 1)
	go func() { synced <- db.wal.syncTo(pos) }()
	return n, synced, nil
}

// ExemplarQuerier implements storage.ExemplarQueryable.
func (db *DB) ExemplarQuerier(ctx context.Context) (storage.ExemplarQuerier, error) {
	return db.exemplars.ExemplarQuerier(ctx)
}

// badgerLogger routes badger's logs to slog; badger is chatty at info.
type badgerLogger struct{ l *slog.Logger }

func (b badgerLogger) Errorf(f string, a ...any)   { b.l.Error(fmt.Sprintf(f, a...)) }
func (b badgerLogger) Warningf(f string, a ...any) { b.l.Warn(fmt.Sprintf(f, a...)) }
func (b badgerLogger) Infof(f string, a ...any)    { b.l.Debug(fmt.Sprintf(f, a...)) }
func (b badgerLogger) Debugf(string, ...any)       {}

package shard

// Partition transfer: ExportPartition streams one partition out of a node,
// ImportPartition loads such a stream into another, DropPartition deletes a
// partition and Partitions lists the ones held.
//
// # Stream format, version 1
//
// A stream is an 8-byte preamble followed by frames. All fixed-width integers
// are big-endian; "varint" is Go's zig-zag signed varint, "uvarint" the
// unsigned one (encoding/binary).
//
//	stream   = "KILNPRT" version:u8(=1) frame*
//	frame    = type:u8 length:uvarint payload:length bytes crc:u32
//
// crc is the CRC32-C (Castagnoli) of the type byte, the length bytes and the
// payload. A payload is at most 8 MiB. Frame types, in stream order:
//
//	'H' header, exactly once, first:
//	    partition:u16 mint:i64 maxt:i64      (the exported window, inclusive)
//	'M' metadata of a metric family present in the partition, zero or more:
//	    family, type, unit, help              (each uvarint length + bytes)
//	'S' series, zero or more, sorted by labels:
//	    labels as in the S records of docs/storage.md (uvarint count, then
//	    uvarint-length-prefixed name and value, sorted by name, no duplicate
//	    names, no empty values; the series must hash to the header's partition)
//	'C' chunk of the latest series, one or more after each 'S':
//	    encoding:u8 mint:varint maxt:varint samples:uvarint chunk bytes
//	    (the rest of the payload: Prometheus tsdb/chunkenc bytes of that
//	    encoding; XOR/XOR2 floats, histogram, float histogram, with or without
//	    start timestamps). mint/maxt are the first and last sample
//	    timestamps; the chunks of a series are in time order and do not
//	    overlap (mint > the previous chunk's maxt), every sample lies in the
//	    header's window, and duplicates are already resolved.
//	'E' end, exactly once, last: series:uvarint chunks:uvarint samples:uvarint
//	    (totals of the stream, so a truncated stream is detected).
//
// A reader rejects an unknown version or frame type, a bad checksum, a frame
// out of order and totals that do not match. New frame types need a new
// version. The reader stops after 'E'; if the reader passed to
// ImportPartition implements io.ByteReader (a *bufio.Reader), nothing past
// 'E' is consumed, so a stream can be followed by other data.

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math"
	"slices"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/metadata"
	"github.com/prometheus/prometheus/storage"
	"github.com/prometheus/prometheus/tsdb/chunkenc"
)

const (
	transferMagic   = "KILNPRT"
	transferVersion = 1
	maxFrameLen     = 8 << 20

	frameHeader   byte = 'H'
	frameMetadata byte = 'M'
	frameSeries   byte = 'S'
	frameChunk    byte = 'C'
	frameEnd      byte = 'E'
)

// ErrBadStream is returned by ImportPartition for a stream that is corrupt,
// truncated or not a partition stream.
var ErrBadStream = errors.New("malformed partition stream")

// ExportOptions tunes ExportPartition.
type ExportOptions struct {
	// BytesPerSecond caps the rate the stream is written at; 0 is unlimited.
	BytesPerSecond int64

	clock clock // tests inject a fake one; zero is the real clock
}

// ExportStats counts what ExportPartition wrote.
type ExportStats struct {
	Series, Chunks, Samples int
	Bytes                   int64
}

// ImportStats counts what ImportPartition read and did. Samples are the
// samples appended (new to this node); Duplicates were already held with the
// same value; Conflicts were held with another value, which was kept; TooOld
// were older than retention and skipped.
type ImportStats struct {
	Series, Samples, Conflicts int
	Duplicates, TooOld         int
	Bytes                      int64
}

// clock is the time source of the rate limiter.
type clock struct {
	now   func() time.Time
	sleep func(context.Context, time.Duration) error
}

func (c clock) orReal() clock {
	if c.now == nil {
		c.now = time.Now
	}
	if c.sleep == nil {
		c.sleep = sleepCtx
	}
	return c
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// ExportPartition streams every series of partition p with its samples in
// [mint, maxt] (math.MinInt64, math.MaxInt64 for all) to w in the format
// above, with the metadata of the metric families present.
//
// It reads a consistent view: each series' chunks in memory are snapshotted
// first, then one badger read transaction is opened while no flush runs, so
// a chunk evicted from memory after persisting is seen on disk. Out-of-order
// and overlapping chunks are merged as queries merge them (the first write
// of a timestamp wins) and re-encoded; other chunks go out as stored. No
// lock is held while writing to w; series locks are taken one at a time,
// briefly, and the flush lock only to open the transaction.
func (db *DB) ExportPartition(ctx context.Context, p uint16, mint, maxt int64, w io.Writer, opts ExportOptions) (ExportStats, error) {
	var st ExportStats
	if p >= NumPartitions {
		return st, fmt.Errorf("partition %d out of range", p)
	}
	if mint > maxt {
		return st, fmt.Errorf("export window: mint %d after maxt %d", mint, maxt)
	}
	if db.closed.Load() {
		return st, errClosed
	}
	v := db.viewPartition(p, mint, maxt, true)
	defer v.close()

	out := w
	if opts.BytesPerSecond > 0 {
		out = &rateLimitedWriter{ctx: ctx, w: w, rate: opts.BytesPerSecond, clk: opts.clock.orReal()}
	}
	bw := bufio.NewWriterSize(out, 32<<10)
	fw := &frameWriter{w: bw}
	if err := fw.raw(append([]byte(transferMagic), transferVersion)); err != nil {
		return st, err
	}
	b := binary.BigEndian.AppendUint16(nil, p)
	b = binary.BigEndian.AppendUint64(b, uint64(mint))
	b = binary.BigEndian.AppendUint64(b, uint64(maxt))
	if err := fw.frame(frameHeader, b); err != nil {
		return st, err
	}
	for _, fm := range db.familiesOf(v.series) {
		b = appendString(b[:0], fm.family)
		b = append(b, encodeMetadata(fm.m)...)
		if err := fw.frame(frameMetadata, b); err != nil {
			return st, err
		}
	}
	var cs, outChunks []readChunk
	for i := range v.series {
		if i%64 == 0 {
			if err := ctx.Err(); err != nil {
				return st, err
			}
		}
		var err error
		if cs, err = v.chunks(i, cs[:0]); err != nil {
			return st, err
		}
		if outChunks, err = exportChunks(cs, mint, maxt, outChunks[:0]); err != nil {
			return st, fmt.Errorf("series %s: %w", v.series[i].s.lset, err)
		}
		if len(outChunks) == 0 {
			continue
		}
		if err := fw.frame(frameSeries, encodeLabels(b[:0], v.series[i].s.lset)); err != nil {
			return st, err
		}
		st.Series++
		for _, c := range outChunks {
			n := c.chk.NumSamples()
			b = append(b[:0], byte(c.chk.Encoding()))
			b = binary.AppendVarint(b, c.mint)
			b = binary.AppendVarint(b, c.maxt)
			b = binary.AppendUvarint(b, uint64(n))
			b = append(b, c.chk.Bytes()...)
			if err := fw.frame(frameChunk, b); err != nil {
				return st, err
			}
			st.Chunks++
			st.Samples += n
		}
	}
	b = binary.AppendUvarint(b[:0], uint64(st.Series))
	b = binary.AppendUvarint(b, uint64(st.Chunks))
	b = binary.AppendUvarint(b, uint64(st.Samples))
	if err := fw.frame(frameEnd, b); err != nil {
		return st, err
	}
	err := bw.Flush()
	st.Bytes = fw.n
	return st, err
}

// exportChunks returns cs as non-overlapping chunks in time order holding
// only samples in [mint, maxt]. A chunk that overlaps no other and lies in
// the window goes out as it is; the rest are merged the way queries merge
// them and re-encoded.
func exportChunks(cs []readChunk, mint, maxt int64, out []readChunk) ([]readChunk, error) {
	slices.SortFunc(cs, func(a, b readChunk) int {
		if c := cmpInt64(a.mint, b.mint); c != 0 {
			return c
		}
		return cmpUint64(a.seq, b.seq)
	})
	var ss []sample
	for i := 0; i < len(cs); {
		j, end := i+1, cs[i].maxt
		for j < len(cs) && cs[j].mint <= end {
			end = max(end, cs[j].maxt)
			j++
		}
		if c := cs[i]; j == i+1 && c.mint >= mint && c.maxt <= maxt {
			if c.chk.NumSamples() > 0 {
				out = append(out, c)
			}
			i = j
			continue
		}
		it := newSeriesIterator(cs[i:j], mint, maxt, nil)
		ss = ss[:0]
		for vt := it.Next(); vt != chunkenc.ValNone; vt = it.Next() {
			ss = append(ss, sampleAt(it, vt))
		}
		if err := it.Err(); err != nil {
			return out, err
		}
		for len(ss) > 0 {
			n := runLen(ss)
			if c := encodeSamples(ss[:n], 0); c != nil {
				out = append(out, readChunk{chk: c.chk, mint: c.mint, maxt: c.maxt})
			}
			ss = ss[n:]
		}
		i = j
	}
	return out, nil
}

// sampleAt returns the sample an iterator is at.
func sampleAt(it chunkenc.Iterator, vt chunkenc.ValueType) sample {
	sm := sample{st: it.AtST()}
	switch vt {
	case chunkenc.ValHistogram:
		sm.t, sm.h = it.AtHistogram(nil)
	case chunkenc.ValFloatHistogram:
		sm.t, sm.fh = it.AtFloatHistogram(nil)
	default:
		sm.t, sm.f = it.At()
	}
	return sm
}

type familyMeta struct {
	family string
	m      metadata.Metadata
}

// familiesOf returns the metadata of the metric families of series, sorted
// by family name. A family is the metric name, or for classic histograms,
// summaries and counters the name without its series suffix.
func (db *DB) familiesOf(series []viewSeries) []familyMeta {
	seen, added := map[string]bool{}, map[string]bool{}
	var out []familyMeta
	for _, vs := range series {
		name := vs.s.lset.Get(model.MetricNameLabel)
		if name == "" || seen[name] {
			continue
		}
		seen[name] = true
		cands := []string{name}
		for _, suf := range []string{"_bucket", "_count", "_sum", "_created"} {
			if len(name) > len(suf) && name[len(name)-len(suf):] == suf {
				cands = append(cands, name[:len(name)-len(suf)])
			}
		}
		for _, fam := range cands {
			m, ok := db.meta.get(fam)
			if ok && familyName(name, m) == fam && !added[fam] {
				added[fam] = true
				out = append(out, familyMeta{fam, m})
			}
		}
	}
	slices.SortFunc(out, func(a, b familyMeta) int { return cmpString(a.family, b.family) })
	return out
}

func cmpString(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

// viewSeries is one series of a partitionView: its in-memory chunks
// snapshotted when the view was made.
type viewSeries struct {
	s        *memSeries
	mem      []readChunk
	memSeqs  map[uint64]struct{}
	needDisk bool
}

// partitionView is a consistent read view of the series of one partition in
// [mint, maxt]; see ExportPartition.
type partitionView struct {
	db         *DB
	mint, maxt int64
	series     []viewSeries
	txn        *badger.Txn
	it         *badger.Iterator
	waitFlush  bool
	opened     time.Time // when txn was opened
}

// viewTxnMaxAge bounds how long a view keeps one read transaction. An open
// transaction keeps badger from reclaiming what was deleted since (chunks
// rewritten by flushes, write-ahead values), which matters for a slow,
// rate-limited export. A newer transaction is as good for the view: it
// holds every chunk the old one did except those retention deleted, and
// chunks persisted since are either in the memory snapshot (same seq,
// skipped) or new out-of-order chunks whose samples the merge dedups.
var viewTxnMaxAge = 30 * time.Second // a variable for tests

// partitionSeries returns the live series of partition p sorted by labels.
func (db *DB) partitionSeries(p uint16) []*memSeries {
	var out []*memSeries
	db.refsMu.RLock()
	for _, s := range db.refs {
		if s != nil && s.part == p {
			out = append(out, s)
		}
	}
	db.refsMu.RUnlock()
	slices.SortFunc(out, func(a, b *memSeries) int { return labels.Compare(a.lset, b.lset) })
	return out
}

// viewPartition snapshots the in-memory chunks of every series of p, then
// opens the read transaction for the disk part. Memory first: a chunk gone
// from memory by then was evicted by a flush that persisted it, and with
// waitFlush the transaction is opened while no flush runs, so it sees that
// chunk. Without waitFlush a chunk evicted by a flush still writing may be
// missed (good enough for the importer's duplicate check).
func (db *DB) viewPartition(p uint16, mint, maxt int64, waitFlush bool) *partitionView {
	v := &partitionView{db: db, mint: mint, maxt: maxt, waitFlush: waitFlush}
	need := false
	for _, s := range db.partitionSeries(p) {
		if vs, ok := snapshotSeries(s, mint, maxt); ok {
			v.series = append(v.series, vs)
			need = need || vs.needDisk
		}
	}
	if need {
		v.openTxn()
	}
	return v
}

func snapshotSeries(s *memSeries, mint, maxt int64) (viewSeries, bool) {
	s.mu.Lock()
	dead := s.deleted || s.maxT < mint || s.minT > maxt
	s.mu.Unlock()
	if dead {
		return viewSeries{}, false
	}
	mem, seqs, needDisk := s.snapshot(mint, maxt, nil)
	return viewSeries{s: s, mem: mem, memSeqs: seqs, needDisk: needDisk}, true
}

func (v *partitionView) openTxn() {
	if v.waitFlush {
		v.db.flushMu.Lock()
		defer v.db.flushMu.Unlock()
	}
	v.txn = v.db.bdb.NewTransaction(false)
	v.opened = time.Now()
}

// chunks appends series i's chunks overlapping [mint, maxt], from memory
// and disk, to out.
func (v *partitionView) chunks(i int, out []readChunk) ([]readChunk, error) {
	vs := &v.series[i]
	out = append(out, vs.mem...)
	if !vs.needDisk || v.txn == nil {
		return out, nil
	}
	if time.Since(v.opened) > viewTxnMaxAge {
		v.close()
		v.openTxn()
	}
	if v.it == nil {
		v.it = v.txn.NewIterator(badger.IteratorOptions{PrefetchValues: false, Prefix: []byte{tagChunk}})
	}
	s := vs.s
	prefix := seriesChunkPrefix(s.part, s.ref)
	for v.it.Seek(seriesChunkSeek(s.part, s.ref, v.mint)); v.it.ValidForPrefix(prefix); v.it.Next() {
		item := v.it.Item()
		k, err := parseChunkKey(item.Key())
		if err != nil {
			return out, err
		}
		if k.maxt-maxChunkRange > v.maxt {
			break // chunks span < maxChunkRange: none further starts before maxt
		}
		if _, ok := vs.memSeqs[k.seq]; ok || k.mint > v.maxt {
			continue
		}
		val, err := item.ValueCopy(nil)
		if err != nil {
			return out, err
		}
		chk, err := chunkFromValue(val)
		if err != nil {
			return out, fmt.Errorf("series %d chunk %d: %w", s.ref, k.seq, err)
		}
		out = append(out, readChunk{chk: chk, mint: k.mint, maxt: k.maxt, seq: k.seq})
	}
	return out, nil
}

func (v *partitionView) close() {
	if v.it != nil {
		v.it.Close()
		v.it = nil
	}
	if v.txn != nil {
		v.txn.Discard()
		v.txn = nil
	}
}

// frameWriter writes frames and counts the bytes.
type frameWriter struct {
	w   io.Writer
	buf []byte
	n   int64
}

func (fw *frameWriter) raw(b []byte) error {
	n, err := fw.w.Write(b)
	fw.n += int64(n)
	return err
}

func (fw *frameWriter) frame(typ byte, payload []byte) error {
	if len(payload) > maxFrameLen {
		return fmt.Errorf("frame %q of %d bytes exceeds %d", typ, len(payload), maxFrameLen)
	}
	b := append(fw.buf[:0], typ)
	b = binary.AppendUvarint(b, uint64(len(payload)))
	b = append(b, payload...)
	b = binary.BigEndian.AppendUint32(b, crc32.Checksum(b, castagnoli))
	fw.buf = b
	return fw.raw(b)
}

// rateLimitedWriter paces writes to rate bytes per second: after each piece
// it sleeps until the bytes written so far are due, so n bytes take n/rate.
// Credit is not saved up while the caller is slow, which keeps bursts to
// one piece.
type rateLimitedWriter struct {
	ctx  context.Context
	w    io.Writer
	rate int64
	clk  clock
	next time.Time // when the bytes written so far are due
}

func (l *rateLimitedWriter) Write(p []byte) (int, error) {
	// Pieces of ~50 ms of budget keep the pace smooth at any rate.
	piece := int(min(max(l.rate/20, 512), 64<<10))
	n := 0
	for len(p) > 0 {
		k := min(len(p), piece)
		m, err := l.w.Write(p[:k])
		n += m
		if err != nil {
			return n, err
		}
		p = p[k:]
		now := l.clk.now()
		if l.next.Before(now) {
			l.next = now
		}
		l.next = l.next.Add(time.Duration(int64(k) * int64(time.Second) / l.rate))
		if d := l.next.Sub(now); d > 0 {
			if err := l.clk.sleep(l.ctx, d); err != nil {
				return n, err
			}
		}
	}
	return n, nil
}

// ImportPartition reads a stream written by ExportPartition and appends its
// samples through the normal durable write path: it returns only after every
// appended sample is fsynced. It is idempotent: a sample the node already
// holds with the same value is skipped (Duplicates), one it holds with
// another value keeps the held value (Conflicts), and samples older than
// retention are skipped (TooOld). Metadata of a family is set only when the
// node has none.
//
// A stream that turns out corrupt fails with ErrBadStream after the samples
// before the corruption were appended; importing a good stream again
// completes the import.
func (db *DB) ImportPartition(ctx context.Context, r io.Reader) (ImportStats, error) {
	imp := &importer{db: db, ctx: ctx}
	err := imp.run(r)
	if err != nil && imp.app != nil {
		_ = imp.app.Rollback()
	}
	return imp.st, err
}

// importBatch is how many samples a commit holds: large enough to amortise
// the fsync, small enough to keep the write-ahead value modest.
const importBatch = 20000

type importer struct {
	db  *DB
	ctx context.Context
	st  ImportStats
	dec streamDecoder

	part       uint16
	mint, maxt int64
	app        *appender
	pending    int

	// Current series.
	lset    labels.Labels
	ref     uint64
	local   chunkenc.Iterator // the node's samples of the series, or nil
	localVT chunkenc.ValueType
	lastT   int64
	buf     []sample
	// Totals checked against the end frame.
	nSeries, nChunks, nSamples uint64
}

func (imp *importer) run(r io.Reader) error {
	imp.dec.init(r)
	defer func() { imp.st.Bytes = imp.dec.n }()
	if err := imp.dec.preamble(); err != nil {
		return err
	}
	typ, b, err := imp.dec.next()
	if err != nil {
		return err
	}
	if typ != frameHeader || len(b) != 18 {
		return fmt.Errorf("want header frame: %w", ErrBadStream)
	}
	imp.part = binary.BigEndian.Uint16(b)
	imp.mint = int64(binary.BigEndian.Uint64(b[2:]))
	imp.maxt = int64(binary.BigEndian.Uint64(b[10:]))
	if imp.part >= NumPartitions || imp.mint > imp.maxt {
		return fmt.Errorf("header: partition %d window [%d, %d]: %w", imp.part, imp.mint, imp.maxt, ErrBadStream)
	}
	imp.app = imp.db.newAppender(imp.ctx)
	var sb labels.ScratchBuilder
	inSeries := false
	for {
		typ, b, err := imp.dec.next()
		if err != nil {
			return err
		}
		switch typ {
		case frameMetadata:
			if inSeries {
				return fmt.Errorf("metadata after series: %w", ErrBadStream)
			}
			if err := imp.metadata(b); err != nil {
				return err
			}
		case frameSeries:
			ls, err := decodeLabels(b, &sb)
			// Empty values would be dropped on append, moving the series to
			// another partition; an exporter never writes them.
			if err != nil || ls.IsEmpty() || ls.Has("") || ls.WithoutEmpty().Len() != ls.Len() {
				return fmt.Errorf("series labels: %w", ErrBadStream)
			}
			if PartitionOf(ls) != imp.part {
				return fmt.Errorf("series %s is not in partition %d: %w", ls, imp.part, ErrBadStream)
			}
			if inSeries && labels.Compare(ls, imp.lset) <= 0 {
				return fmt.Errorf("series %s out of order: %w", ls, ErrBadStream)
			}
			inSeries = true
			imp.startSeries(ls)
		case frameChunk:
			if !inSeries {
				return fmt.Errorf("chunk before series: %w", ErrBadStream)
			}
			if err := imp.chunk(b); err != nil {
				return err
			}
		case frameEnd:
			return imp.end(b)
		default:
			return fmt.Errorf("frame type %q: %w", typ, ErrBadStream)
		}
	}
}

func (imp *importer) metadata(b []byte) error {
	fam, b, ok := readString(b)
	if !ok || fam == "" {
		return fmt.Errorf("metadata: %w", ErrBadStream)
	}
	m, err := decodeMetadata(b)
	if err != nil {
		return fmt.Errorf("metadata: %w", ErrBadStream)
	}
	if _, held := imp.db.meta.get(fam); !held {
		imp.app.setMetadata(fam, m)
	}
	return nil
}

func (imp *importer) startSeries(ls labels.Labels) {
	imp.nSeries++
	imp.st.Series++
	imp.lset, imp.ref, imp.lastT = ls, 0, math.MinInt64
	imp.local, imp.localVT = nil, chunkenc.ValNone
	s := imp.db.lookup(ls)
	if s == nil {
		return
	}
	imp.ref = s.ref
	vs, ok := snapshotSeries(s, imp.mint, imp.maxt)
	if !ok {
		return
	}
	v := &partitionView{db: imp.db, mint: imp.mint, maxt: imp.maxt, series: []viewSeries{vs}}
	if vs.needDisk {
		v.openTxn()
	}
	defer v.close()
	cs, err := v.chunks(0, nil)
	if err != nil || len(cs) == 0 {
		// Without the node's samples every sample is appended; the
		// appender and the reader still drop duplicates.
		return
	}
	imp.local = newSeriesIterator(cs, imp.mint, imp.maxt, nil)
	imp.localVT = imp.local.Next()
}

func (imp *importer) chunk(b []byte) error {
	if len(b) < 1 {
		return fmt.Errorf("chunk: %w", ErrBadStream)
	}
	enc := chunkenc.Encoding(b[0])
	b = b[1:]
	cmint, k := binary.Varint(b)
	if k <= 0 {
		return fmt.Errorf("chunk mint: %w", ErrBadStream)
	}
	b = b[k:]
	cmaxt, k := binary.Varint(b)
	if k <= 0 {
		return fmt.Errorf("chunk maxt: %w", ErrBadStream)
	}
	b = b[k:]
	n, k := binary.Uvarint(b)
	if k <= 0 || n == 0 {
		return fmt.Errorf("chunk samples: %w", ErrBadStream)
	}
	b = b[k:]
	if cmint > cmaxt || cmint < imp.mint || cmaxt > imp.maxt || cmint <= imp.lastT || len(b) < 2 || !chunkenc.IsValidEncoding(enc) {
		return fmt.Errorf("chunk [%d, %d] encoding %d: %w", cmint, cmaxt, enc, ErrBadStream)
	}
	imp.nChunks++
	// The chunk decoders trust their input and the checksum guards only
	// against corruption, not a malicious peer: decode to a slice first,
	// converting a decoder panic into an error, before anything is appended.
	ss, err := decodeChunk(enc, slices.Clone(b), int(n), cmint, cmaxt, imp.buf[:0])
	if err != nil {
		return err
	}
	imp.buf = ss
	imp.nSamples += n
	imp.lastT = cmaxt
	for _, sm := range ss {
		if err := imp.sample(sm); err != nil {
			return err
		}
	}
	if imp.pending >= importBatch {
		return imp.commit()
	}
	return imp.ctx.Err()
}

// decodeChunk returns the samples of a chunk from a stream, checking that
// they are n, in strictly increasing time order from mint to maxt, and
// valid histograms.
func decodeChunk(enc chunkenc.Encoding, b []byte, n int, mint, maxt int64, ss []sample) (out []sample, err error) {
	defer func() {
		if r := recover(); r != nil {
			out, err = nil, fmt.Errorf("chunk decoder: %v: %w", r, ErrBadStream)
		}
	}()
	if encodingValueType(enc) != chunkenc.ValFloat {
		if err := checkHistogramLayout(b); err != nil {
			return nil, err
		}
	}
	chk, err := chunkenc.FromData(enc, b)
	if err != nil {
		return nil, fmt.Errorf("chunk: %v: %w", err, ErrBadStream)
	}
	if chk.NumSamples() != n {
		return nil, fmt.Errorf("chunk holds %d samples, frame says %d: %w", chk.NumSamples(), n, ErrBadStream)
	}
	ss = slices.Grow(ss[:0], n)
	it := chk.Iterator(nil)
	prev := int64(math.MinInt64)
	for vt := it.Next(); vt != chunkenc.ValNone; vt = it.Next() {
		sm := sampleAt(it, vt)
		if len(ss) == n || sm.t <= prev || sm.t < mint || sm.t > maxt {
			return nil, fmt.Errorf("chunk sample %d at %d: %w", len(ss), sm.t, ErrBadStream)
		}
		if (sm.h != nil && sm.h.Validate() != nil) || (sm.fh != nil && sm.fh.Validate() != nil) {
			return nil, fmt.Errorf("chunk sample %d: invalid histogram: %w", len(ss), ErrBadStream)
		}
		prev = sm.t
		ss = append(ss, sm)
	}
	if it.Err() != nil || len(ss) != n || prev != maxt || ss[0].t != mint {
		return nil, fmt.Errorf("chunk: %d of %d samples decoded: %w", len(ss), n, ErrBadStream)
	}
	return ss, nil
}

// sample appends one sample unless the node holds its timestamp already.
func (imp *importer) sample(sm sample) error {
	if sm.t < imp.db.minValidTime() {
		imp.st.TooOld++
		return nil
	}
	if imp.local != nil && imp.localVT != chunkenc.ValNone {
		if imp.local.AtT() < sm.t {
			imp.localVT = imp.local.Seek(sm.t)
		}
		if imp.localVT != chunkenc.ValNone && imp.local.AtT() == sm.t {
			if sameValue(sampleAt(imp.local, imp.localVT), sm) {
				imp.st.Duplicates++
			} else {
				imp.st.Conflicts++
			}
			return nil
		}
	}
	ref, err := imp.app.add(storage.SeriesRef(imp.ref), imp.lset, sm)
	if ref != 0 {
		imp.ref = uint64(ref)
	}
	switch {
	case errors.Is(err, storage.ErrDuplicateSampleForTimestamp):
		imp.st.Conflicts++ // written meanwhile, by a concurrent writer
	case errors.Is(err, storage.ErrOutOfBounds):
		imp.st.TooOld++ // retention moved on since the check
	case err != nil:
		return fmt.Errorf("append to %s: %w", imp.lset, err)
	default:
		imp.pending++
	}
	return nil
}

func (imp *importer) commit() error {
	n := imp.pending
	err := imp.app.Commit()
	imp.app = imp.db.newAppender(imp.ctx)
	imp.pending = 0
	if err != nil {
		return err
	}
	imp.st.Samples += n
	return nil
}

func (imp *importer) end(b []byte) error {
	var tot [3]uint64
	for i := range tot {
		v, k := binary.Uvarint(b)
		if k <= 0 {
			return fmt.Errorf("end frame: %w", ErrBadStream)
		}
		tot[i], b = v, b[k:]
	}
	if len(b) != 0 || tot != [3]uint64{imp.nSeries, imp.nChunks, imp.nSamples} {
		return fmt.Errorf("end frame totals %v, stream held %d series, %d chunks, %d samples: %w",
			tot, imp.nSeries, imp.nChunks, imp.nSamples, ErrBadStream)
	}
	return imp.commit()
}

// lookup returns the series with labels ls, or nil.
func (db *DB) lookup(ls labels.Labels) *memSeries {
	h := labels.StableHash(ls)
	st := &db.stripes[h%stripeCount]
	st.Lock()
	defer st.Unlock()
	return st.t.get(h, ls)
}

// streamDecoder reads the preamble and frames of a stream, checking each
// frame's length and checksum. Its buffer grows with the bytes actually
// read, so a corrupt length cannot make it allocate much.
type streamDecoder struct {
	r   io.ByteReader
	rr  io.Reader
	buf []byte
	n   int64
}

type byteReader interface {
	io.Reader
	io.ByteReader
}

func (d *streamDecoder) init(r io.Reader) {
	br, ok := r.(byteReader)
	if !ok {
		br = bufio.NewReaderSize(r, 64<<10)
	}
	d.r, d.rr = br, br
}

func (d *streamDecoder) preamble() error {
	var b [len(transferMagic) + 1]byte
	if _, err := io.ReadFull(d.rr, b[:]); err != nil {
		return fmt.Errorf("preamble: %w: %w", err, ErrBadStream)
	}
	d.n += int64(len(b))
	if string(b[:len(transferMagic)]) != transferMagic {
		return fmt.Errorf("not a partition stream: %w", ErrBadStream)
	}
	if b[len(transferMagic)] != transferVersion {
		return fmt.Errorf("stream version %d, want %d: %w", b[len(transferMagic)], transferVersion, ErrBadStream)
	}
	return nil
}

// next returns the next frame's type and payload; the payload is valid
// until the following call.
func (d *streamDecoder) next() (byte, []byte, error) {
	typ, err := d.r.ReadByte()
	if err != nil {
		return 0, nil, fmt.Errorf("frame: %w: %w", noEOF(err), ErrBadStream)
	}
	n, err := binary.ReadUvarint(d.r)
	if err != nil {
		return 0, nil, fmt.Errorf("frame length: %w: %w", noEOF(err), ErrBadStream)
	}
	if n > maxFrameLen {
		return 0, nil, fmt.Errorf("frame of %d bytes: %w", n, ErrBadStream)
	}
	hdr := binary.AppendUvarint([]byte{typ}, n)
	d.buf = d.buf[:0]
	for len(d.buf) < int(n) {
		k := min(int(n)-len(d.buf), max(len(d.buf), 64<<10))
		d.buf = slices.Grow(d.buf, k)
		start := len(d.buf)
		d.buf = d.buf[:start+k]
		if _, err := io.ReadFull(d.rr, d.buf[start:]); err != nil {
			return 0, nil, fmt.Errorf("frame payload: %w: %w", noEOF(err), ErrBadStream)
		}
	}
	var sum [4]byte
	if _, err := io.ReadFull(d.rr, sum[:]); err != nil {
		return 0, nil, fmt.Errorf("frame checksum: %w: %w", noEOF(err), ErrBadStream)
	}
	d.n += int64(len(hdr)) + int64(n) + 4
	crc := crc32.Update(crc32.Checksum(hdr, castagnoli), castagnoli, d.buf)
	if crc != binary.BigEndian.Uint32(sum[:]) {
		return 0, nil, fmt.Errorf("frame %q checksum mismatch: %w", typ, ErrBadStream)
	}
	return typ, d.buf, nil
}

func noEOF(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}

// DropPartition deletes every series and chunk of partition p: from memory,
// the index and disk (the S·p and C·p prefixes). Queries running meanwhile
// keep the series they already matched and may or may not see their data.
//
// Write-ahead records are not per partition; dropped series are made
// unreachable instead. Their series records are deleted, so a replay skips
// the samples of their refs, and a flush after the delete removes the
// records covering them, so a ref reused after a restart never meets them.
// A write racing with the drop may land in memory of the dropped series and
// be lost. If DropPartition fails or the node crashes meanwhile, part of the
// partition may remain; calling it again finishes the job.
func (db *DB) DropPartition(ctx context.Context, p uint16) error {
	if p >= NumPartitions {
		return fmt.Errorf("partition %d out of range", p)
	}
	if db.closed.Load() {
		return errClosed
	}
	// No flush may persist chunks of the series while they are removed (it
	// would rewrite keys just deleted), and no commit may be between writing
	// its record and applying it.
	db.flushMu.Lock()
	db.commitMu.Lock()
	db.cells.drop(p)
	series := db.partitionSeries(p)
	for _, s := range series {
		s.mu.Lock()
		s.deleted = true
		s.mu.Unlock()
		// An appender holding the series must not write its record again.
		s.saved.Store(true)
		db.removeSeries(s)
	}
	db.commitMu.Unlock()
	db.flushMu.Unlock()

	for _, tag := range []byte{tagSeries, tagChunk} {
		if err := db.deletePrefix(ctx, partitionPrefix(tag, p)); err != nil {
			return fmt.Errorf("drop partition %d: %w", p, err)
		}
	}
	if err := db.flush(); err != nil {
		return fmt.Errorf("drop partition %d: %w", p, err)
	}
	db.logger.Info("partition dropped", "partition", p, "series", len(series))
	return nil
}

// deletePrefix deletes every key under prefix in batches, reading keys
// only, so ingest and queries go on meanwhile (badger's DropPrefix would
// block writes).
func (db *DB) deletePrefix(ctx context.Context, prefix []byte) error {
	const batch = 10000
	for {
		var keys [][]byte
		err := db.bdb.View(func(txn *badger.Txn) error {
			it := txn.NewIterator(badger.IteratorOptions{PrefetchValues: false, Prefix: prefix})
			defer it.Close()
			for it.Rewind(); it.Valid() && len(keys) < batch; it.Next() {
				keys = append(keys, it.Item().KeyCopy(nil))
			}
			return nil
		})
		if err != nil {
			return err
		}
		if err := db.deleteKeys(keys); err != nil {
			return err
		}
		if len(keys) < batch {
			return nil
		}
		if err := ctx.Err(); err != nil {
			return err
		}
	}
}

// Partitions returns the partitions that hold at least one series.
func (db *DB) Partitions() PartitionSet {
	var set PartitionSet
	db.refsMu.RLock()
	defer db.refsMu.RUnlock()
	for _, s := range db.refs {
		if s != nil {
			set.Add(s.part)
		}
	}
	return set
}

// checkHistogramLayout reads the bucket layout at the start of a (float)
// histogram chunk, which the chunk iterator sizes its bucket slices by, and
// rejects one with more buckets than the chunk has bits: a valid chunk
// spends at least a bit on each bucket of its first sample. Without this a
// forged span length makes the iterator allocate gigabytes. The layout is
// the one of tsdb/chunkenc histogram_meta.go: after the 3-byte chunk
// header, the zero threshold (a byte, or 0xff and 64 bits), the schema
// (varbit int), positive then negative spans (varbit count, then varbit
// length and varbit int offset of each).
func checkHistogramLayout(chk []byte) error {
	const headerSize = 3
	if len(chk) < headerSize+1 {
		return fmt.Errorf("histogram chunk of %d bytes: %w", len(chk), ErrBadStream)
	}
	br := bitReader{b: chk[headerSize:]}
	if zt := br.bits(8); zt == 0xff {
		br.bits(64)
	}
	br.varbit() // schema
	buckets := uint64(0)
	for range 2 {
		n := br.varbit()
		for i := uint64(0); i < n && br.err == nil; i++ {
			buckets += br.varbit() & math.MaxUint32 // length; the reader keeps 32 bits
			br.varbit()                             // offset
		}
	}
	if br.err != nil || buckets > uint64(len(chk))*8 {
		return fmt.Errorf("histogram chunk layout of %d buckets in %d bytes: %w", buckets, len(chk), ErrBadStream)
	}
	return nil
}

// bitReader reads big-endian bit fields; reading past the end sets err
// and yields zeros.
type bitReader struct {
	b   []byte
	pos uint64 // in bits
	err error
}

func (r *bitReader) bits(n uint8) uint64 {
	if r.err != nil {
		return 0
	}
	if r.pos+uint64(n) > uint64(len(r.b))*8 {
		r.err = io.ErrUnexpectedEOF
		return 0
	}
	v := uint64(0)
	for range n {
		bit := r.b[r.pos/8] >> (7 - r.pos%8) & 1
		v = v<<1 | uint64(bit)
		r.pos++
	}
	return v
}

// varbit reads a varbit-encoded value's bits (chunkenc varbit.go): a
// prefix of up to 8 ones ended by a zero picks the width.
func (r *bitReader) varbit() uint64 {
	ones := 0
	for ones < 8 && r.bits(1) == 1 {
		ones++
	}
	if width := [9]uint8{0, 3, 6, 9, 12, 18, 25, 56, 64}[ones]; width > 0 {
		return r.bits(width)
	}
	return 0
}

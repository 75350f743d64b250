package shard

import (
	"bufio"
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// The write-ahead log lives in append-only segment files under <Path>/wal
// rather than in badger: badger keeps deleted values in its value log until
// compactions have recorded them as garbage, which left ~13 bytes per sample
// on disk for ~1.6 in the LSM tables, and a badger transaction per commit
// was a large part of the ingest CPU. A flush now deletes whole files.
//
// A segment is a sequence of records:
//
//	record = length:uvarint crc32c(payload):u32 payload
//
// where payload is a write-ahead value as encodeWAL builds it. Segments are
// named by a decimal sequence number, %08d, and numbered without gaps.
//
// The current segment is zero-filled ahead of its records, walPrealloc at a
// time, and written in place: an fdatasync of records landing on blocks the
// file already has needs no journal commit, which on ext4 also waits for
// every other file's dirty data (badger's tables). It halved the per-commit
// sync on this project's host. Zeros read as the end of the records (a zero
// length is never written); rotation and close cut the file to its records,
// and replay cuts a crashed segment's zero tail without a warning.

const (
	// walSegmentSize is the size after which the next commit starts a new
	// segment. A flush rotates too, so most segments end far smaller.
	walSegmentSize = 128 << 20
	// walMaxRecord bounds a record's length read from disk, so a corrupt
	// length cannot make replay allocate gigabytes. encodeWAL keeps values
	// under ~512 KiB.
	walMaxRecord = 64 << 20
	walDirName   = "wal"
	// walPrealloc is how far ahead of its records the current segment is
	// zero-filled.
	walPrealloc = 4 << 20
)

// errBadFrame marks a record whose framing fails its checks: a torn write
// at the end of the last segment, corruption anywhere else.
var errBadFrame = fmt.Errorf("malformed write-ahead segment record: %w", ErrCorrupt)

// wal is the segment writer. Appends are serialised by mu; fsyncs are
// shared: a commit that finds its record already covered by another
// commit's fsync does not issue one of its own (group commit).
type wal struct {
	dir         string
	logger      *slog.Logger
	fsync       prometheus.Histogram
	segmentSize int64 // walSegmentSize; tests set it small

	mu      sync.Mutex
	f       *os.File
	seg     uint64 // number of the segment f
	size    int64  // bytes of records in f
	alloc   int64  // bytes of f, zeros after size
	written uint64 // records written, over all segments
	err     error  // sticky: a write that could not be undone, or a failed fsync

	syncMu sync.Mutex    // one fsync at a time, so waiting commits share the next
	synced atomic.Uint64 // written as of the last completed fsync

	// Exported to metrics: segments and their bytes on disk.
	segments atomic.Int64
	bytes    atomic.Int64

	zeros []byte // a zero buffer for preallocate
}

// walSegment is one segment file found at start-up.
type walSegment struct {
	n    uint64
	path string
}

func segmentName(n uint64) string { return fmt.Sprintf("%08d", n) }

// listSegments returns the segments of dir in order. A gap in the numbers
// means a lost file, which replay cannot recover from.
func listSegments(dir string) ([]walSegment, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var segs []walSegment
	for _, e := range ents {
		n, err := strconv.ParseUint(e.Name(), 10, 64)
		if err != nil || !e.Type().IsRegular() {
			continue // not ours
		}
		segs = append(segs, walSegment{n: n, path: filepath.Join(dir, e.Name())})
	}
	slices.SortFunc(segs, func(a, b walSegment) int { return cmp.Compare(a.n, b.n) })
	for i := 1; i < len(segs); i++ {
		if segs[i].n != segs[i-1].n+1 {
			return nil, fmt.Errorf("write-ahead segment %d missing: %w", segs[i-1].n+1, ErrCorrupt)
		}
	}
	return segs, nil
}

// replayWALDir reads every segment in order and calls fn with each record's
// payload. A torn or corrupt tail of the last segment (a crash mid-write) is
// truncated away with a warning; damage anywhere else is ErrCorrupt. It
// returns the segments found, so the writer continues after them.
func replayWALDir(dir string, logger *slog.Logger, fn func(payload []byte) error) ([]walSegment, error) {
	segs, err := listSegments(dir)
	if err != nil {
		return nil, err
	}
	for i, s := range segs {
		f, err := os.Open(s.path)
		if err != nil {
			return nil, err
		}
		fi, err := f.Stat()
		if err != nil {
			_ = f.Close()
			return nil, err
		}
		sr := newSegmentReader(f, fi.Size())
		for {
			var rec []byte
			if rec, err = sr.next(); err != nil {
				break
			}
			if err = fn(rec); err != nil {
				err = fmt.Errorf("write-ahead segment %d offset %d: %w", s.n, sr.off, err)
				break
			}
		}
		_ = f.Close()
		switch {
		case errors.Is(err, io.EOF):
		case errors.Is(err, errBadFrame) && i == len(segs)-1:
			if zero, zerr := zeroFrom(s.path, sr.off); zerr != nil {
				return nil, zerr
			} else if zero {
				logger.Debug("cutting the preallocated tail of the last write-ahead segment",
					"segment", s.path, "offset", sr.off, "bytes", fi.Size()-sr.off)
			} else {
				logger.Warn("truncating torn write-ahead segment tail (crash mid-write)",
					"segment", s.path, "offset", sr.off, "dropped_bytes", fi.Size()-sr.off, "err", err)
			}
			if err := truncateSync(s.path, sr.off); err != nil {
				return nil, fmt.Errorf("truncate write-ahead segment %d: %w", s.n, err)
			}
		case errors.Is(err, errBadFrame):
			return nil, fmt.Errorf("write-ahead segment %d offset %d (not the last segment): %w", s.n, sr.off, err)
		default:
			return nil, err
		}
	}
	return segs, nil
}

// zeroFrom reports whether the file at path holds only zeros from off on.
func zeroFrom(path string, off int64) (bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return false, err
	}
	defer func() { _ = f.Close() }()
	r := bufio.NewReaderSize(io.NewSectionReader(f, off, math.MaxInt64-off), 64<<10)
	for {
		c, err := r.ReadByte()
		if errors.Is(err, io.EOF) {
			return true, nil
		}
		if err != nil {
			return false, err
		}
		if c != 0 {
			return false, nil
		}
	}
}

func truncateSync(path string, size int64) error {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	err = f.Truncate(size)
	if err == nil {
		err = f.Sync()
	}
	return errors.Join(err, f.Close())
}

// segmentReader reads records from one segment of known size. Input is
// untrusted: lengths are checked against the bytes left before allocating.
type segmentReader struct {
	r    *bufio.Reader
	left int64 // bytes not yet read
	off  int64 // offset of the next record: the end of the last good one
	buf  []byte
}

func newSegmentReader(r io.Reader, size int64) *segmentReader {
	return &segmentReader{r: bufio.NewReaderSize(r, 1<<20), left: size}
}

// next returns the next record's payload, valid until the following call;
// io.EOF at a clean end, errBadFrame for a short or corrupt record.
func (sr *segmentReader) next() ([]byte, error) {
	if sr.left == 0 {
		return nil, io.EOF
	}
	var hdr [binary.MaxVarintLen64 + 4]byte
	k := 0
	var n uint64
	for {
		if k == binary.MaxVarintLen64 || int64(k) == sr.left {
			return nil, fmt.Errorf("length: %w", errBadFrame)
		}
		c, err := sr.r.ReadByte()
		if err != nil {
			return nil, fmt.Errorf("length: %v: %w", err, errBadFrame)
		}
		hdr[k] = c
		k++
		if c < 0x80 {
			var m int
			n, m = binary.Uvarint(hdr[:k])
			// The writer's encoding is minimal; anything else is garbage.
			if m <= 0 || m != len(binary.AppendUvarint(hdr[k:k], n)) {
				return nil, fmt.Errorf("length: %w", errBadFrame)
			}
			break
		}
	}
	// A zero length is never written; zeros are what a torn, preallocated
	// or unwritten tail reads as.
	if n == 0 || n > walMaxRecord || int64(n)+4 > sr.left-int64(k) {
		return nil, fmt.Errorf("length %d with %d bytes left: %w", n, sr.left-int64(k), errBadFrame)
	}
	if _, err := io.ReadFull(sr.r, hdr[k:k+4]); err != nil {
		return nil, fmt.Errorf("checksum: %v: %w", err, errBadFrame)
	}
	if cap(sr.buf) < int(n) {
		sr.buf = make([]byte, n)
	}
	sr.buf = sr.buf[:n]
	if _, err := io.ReadFull(sr.r, sr.buf); err != nil {
		return nil, fmt.Errorf("payload: %v: %w", err, errBadFrame)
	}
	if crc32.Checksum(sr.buf, castagnoli) != binary.BigEndian.Uint32(hdr[k:]) {
		return nil, fmt.Errorf("checksum mismatch: %w", errBadFrame)
	}
	used := int64(k) + 4 + int64(n)
	sr.left -= used
	sr.off += used
	return sr.buf, nil
}

// appendFrame frames payload as one segment record onto b.
func appendFrame(b, payload []byte) []byte {
	b = binary.AppendUvarint(b, uint64(len(payload)))
	b = binary.BigEndian.AppendUint32(b, crc32.Checksum(payload, castagnoli))
	return append(b, payload...)
}

func newWAL(dir string, logger *slog.Logger) *wal {
	return &wal{dir: dir, logger: logger, segmentSize: walSegmentSize}
}

// open starts a new segment after the existing ones, which replay has read.
func (w *wal) open(existing []walSegment) error {
	next := uint64(1)
	for _, s := range existing {
		fi, err := os.Stat(s.path)
		if err != nil {
			return err
		}
		w.bytes.Add(fi.Size())
		next = s.n + 1
	}
	w.segments.Store(int64(len(existing)))
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.startSegment(next)
}

// startSegment creates segment n and makes it current. Caller holds mu and
// has closed the previous segment.
func (w *wal) startSegment(n uint64) error {
	f, err := os.OpenFile(filepath.Join(w.dir, segmentName(n)), os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
	if err != nil {
		return fmt.Errorf("create write-ahead segment: %w", err)
	}
	// The new name must survive a power cut before records in it are
	// acknowledged as durable.
	if err := syncDir(w.dir); err != nil {
		return errors.Join(fmt.Errorf("sync write-ahead directory: %w", err), f.Close())
	}
	w.f, w.seg, w.size, w.alloc = f, n, 0, 0
	w.segments.Add(1)
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	return errors.Join(d.Sync(), d.Close())
}

// append writes a commit's framed records with one write call, so they are
// with the OS (and survive a killed process) when it returns. It returns
// the commit's position for syncTo.
func (w *wal) append(frames []byte) (uint64, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.err != nil {
		return 0, w.err
	}
	if w.size > 0 && w.size+int64(len(frames)) > w.segmentSize {
		if err := w.rotateLocked(); err != nil {
			return 0, err
		}
	}
	if need := w.size + int64(len(frames)); need > w.alloc {
		if err := w.preallocate(need + min(walPrealloc, w.segmentSize)); err != nil {
			return 0, fmt.Errorf("preallocate write-ahead segment: %w", err)
		}
	}
	if _, err := w.f.WriteAt(frames, w.size); err != nil {
		// Part of the frames may be in the file. Later records must not
		// follow a torn one, or replay would truncate them away with it.
		if terr := w.f.Truncate(w.size); terr != nil {
			w.err = fmt.Errorf("write-ahead segment %d unusable after a failed write (restart to recover): %w", w.seg, errors.Join(err, terr))
			w.logger.Error("write-ahead log failed", "err", w.err)
		}
		w.bytes.Add(w.size - w.alloc)
		w.alloc = w.size
		return 0, fmt.Errorf("write write-ahead record: %w", err)
	}
	w.size += int64(len(frames)) // w.bytes counted them as preallocated
	w.written++
	return w.written, nil
}

// preallocate zero-fills the current segment up to size. The next sync
// makes the new length durable with the records it covers. Caller holds mu.
func (w *wal) preallocate(size int64) error {
	if w.zeros == nil {
		w.zeros = make([]byte, 256<<10)
	}
	for w.alloc < size {
		n := min(int64(len(w.zeros)), size-w.alloc)
		if _, err := w.f.WriteAt(w.zeros[:n], w.alloc); err != nil {
			return err
		}
		w.alloc += n
		w.bytes.Add(n)
	}
	return nil
}

// trim cuts the current segment to its records, so that a closed segment
// ends with its last record. Caller holds mu.
func (w *wal) trim() error {
	if w.alloc == w.size {
		return nil
	}
	if err := w.f.Truncate(w.size); err != nil {
		return err
	}
	w.bytes.Add(w.size - w.alloc)
	w.alloc = w.size
	return nil
}

// syncTo returns once the records up to pos are fsynced. Commits waiting
// meanwhile share one fsync: whoever holds syncMu syncs everything written
// so far, and the others find themselves covered.
func (w *wal) syncTo(pos uint64) error {
	if w.synced.Load() >= pos {
		return nil
	}
	w.syncMu.Lock()
	defer w.syncMu.Unlock()
	if w.synced.Load() >= pos {
		return nil
	}
	return w.syncCurrent()
}

// syncCurrent fsyncs the current segment. Caller holds syncMu.
func (w *wal) syncCurrent() error {
	w.mu.Lock()
	f, upto, err := w.f, w.written, w.err
	w.mu.Unlock()
	if err != nil {
		return err
	}
	start := time.Now()
	err = datasync(f)
	w.fsync.Observe(time.Since(start).Seconds())
	if errors.Is(err, os.ErrClosed) {
		// Rotated meanwhile: rotation fsyncs the segment before closing
		// it, under mu, and records a failure in w.err.
		w.mu.Lock()
		err = w.err
		w.mu.Unlock()
		return err
	}
	if err != nil {
		// After a failed fsync the kernel may have dropped dirty pages and
		// a retry can report success for data that is gone: refuse
		// further writes rather than acknowledge them on a hole.
		w.mu.Lock()
		if w.err == nil {
			w.err = fmt.Errorf("fsync write-ahead segment (restart to recover): %w", err)
			w.logger.Error("write-ahead log failed", "err", w.err)
		}
		err = w.err
		w.mu.Unlock()
		return err
	}
	advance(&w.synced, upto)
	return nil
}

// sync fsyncs everything written so far (the periodic sync of SyncInterval).
func (w *wal) sync() error {
	w.syncMu.Lock()
	defer w.syncMu.Unlock()
	return w.syncCurrent()
}

func advance(a *atomic.Uint64, v uint64) {
	for {
		cur := a.Load()
		if v <= cur || a.CompareAndSwap(cur, v) {
			return
		}
	}
}

// rotate closes the current segment, unless it is empty, and starts the
// next. It returns the current segment's number afterwards: every record
// written before the call is in an older segment.
func (w *wal) rotate() (uint64, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.err != nil {
		return 0, w.err
	}
	if w.size == 0 {
		return w.seg, nil
	}
	if err := w.rotateLocked(); err != nil {
		return 0, err
	}
	return w.seg, nil
}

// rotateLocked fsyncs and closes the current segment and starts the next.
// The fsync lets syncTo treat everything written so far as durable once the
// file is closed under it. Caller holds mu.
func (w *wal) rotateLocked() error {
	start := time.Now()
	err := w.trim()
	err = errors.Join(err, w.f.Sync())
	w.fsync.Observe(time.Since(start).Seconds())
	err = errors.Join(err, w.f.Close())
	if err != nil {
		w.err = fmt.Errorf("close write-ahead segment %d (restart to recover): %w", w.seg, err)
		return w.err
	}
	advance(&w.synced, w.written)
	if err := w.startSegment(w.seg + 1); err != nil {
		w.err = err
		return err
	}
	return nil
}

// deleteBefore removes every segment older than seg: their records are
// covered by persisted chunks.
func (w *wal) deleteBefore(seg uint64) error {
	segs, err := listSegments(w.dir)
	if err != nil {
		return err
	}
	var freed int64
	removed := int64(0)
	for _, s := range segs {
		if s.n >= seg {
			break
		}
		fi, err := os.Stat(s.path)
		if err != nil {
			return err
		}
		if err := os.Remove(s.path); err != nil {
			return err
		}
		freed += fi.Size()
		removed++
	}
	w.bytes.Add(-freed)
	w.segments.Add(-removed)
	return nil
}

// close fsyncs and closes the current segment.
func (w *wal) close() error {
	w.syncMu.Lock()
	defer w.syncMu.Unlock()
	w.mu.Lock()
	defer w.mu.Unlock()
	err := w.trim()
	err = errors.Join(err, w.f.Sync())
	return errors.Join(err, w.f.Close())
}

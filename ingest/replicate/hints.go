package replicate

import (
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Hint files: HintsDir/<url-escaped peer>/<seq, 16 hex digits>.hint, each
// holding created-at (unix ns, u64 LE), CRC32-C of the body (u32 LE) and a
// self-contained request body. A file appears only complete (written to a
// .tmp name, fsynced, renamed, directory fsynced).
const (
	hintExt       = ".hint"
	hintHeaderLen = 12
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

var errHintCorrupt = errors.New("corrupt hint")

type hint struct {
	seq     uint64
	size    int64
	created time.Time
	body    []byte // in-memory mode only
}

type hintQueue struct {
	mu        sync.Mutex // guards the fields below; file I/O happens outside it
	hints     []hint     // in seq order
	bytes     int64
	nextSeq   uint64
	backoff   time.Duration
	notBefore time.Time
	replaying bool
	warned    atomic.Int64 // over-limit drops logged, to log one in 100
}

// hintStore keeps the hints of every peer.
type hintStore struct {
	dir    string
	max    int64
	now    func() time.Time
	m      *metrics
	logger *slog.Logger

	mu     sync.Mutex
	queues map[string]*hintQueue
}

func openHints(dir string, maxBytes int64, now func() time.Time, m *metrics, logger *slog.Logger) (*hintStore, error) {
	hs := &hintStore{dir: dir, max: maxBytes, now: now, m: m, logger: logger, queues: map[string]*hintQueue{}}
	if dir == "" {
		return hs, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("hints dir: %w", err)
	}
	peers, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("hints dir: %w", err)
	}
	for _, pd := range peers {
		if !pd.IsDir() {
			continue
		}
		name, err := url.PathUnescape(pd.Name())
		if err != nil {
			continue
		}
		files, err := os.ReadDir(filepath.Join(dir, pd.Name()))
		if err != nil {
			return nil, fmt.Errorf("hints dir: %w", err)
		}
		q := hs.queue(name)
		for _, f := range files {
			path := filepath.Join(dir, pd.Name(), f.Name())
			if strings.HasSuffix(f.Name(), ".tmp") {
				_ = os.Remove(path) // a write that never completed
				continue
			}
			seq, err := strconv.ParseUint(strings.TrimSuffix(f.Name(), hintExt), 16, 64)
			if err != nil || !strings.HasSuffix(f.Name(), hintExt) {
				continue
			}
			h, err := readHintHeader(path)
			if err != nil {
				logger.Warn("Dropping unreadable hint", "file", path, "err", err)
				_ = os.Remove(path)
				m.hintsDropped.Inc()
				continue
			}
			h.seq = seq
			q.hints = append(q.hints, h)
			q.bytes += h.size
			q.nextSeq = max(q.nextSeq, seq+1)
		}
		slices.SortFunc(q.hints, func(a, b hint) int { return cmpU64(a.seq, b.seq) })
		hs.gauges(name, q)
	}
	return hs, nil
}

func cmpU64(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func readHintHeader(path string) (hint, error) {
	f, err := os.Open(path)
	if err != nil {
		return hint{}, err
	}
	defer func() { _ = f.Close() }()
	var hdr [hintHeaderLen]byte
	if _, err := f.ReadAt(hdr[:], 0); err != nil {
		return hint{}, fmt.Errorf("%v: %w", err, errHintCorrupt)
	}
	fi, err := f.Stat()
	if err != nil {
		return hint{}, err
	}
	return hint{size: fi.Size(), created: time.Unix(0, int64(binary.LittleEndian.Uint64(hdr[:8])))}, nil
}

func (hs *hintStore) queue(peer string) *hintQueue {
	hs.mu.Lock()
	defer hs.mu.Unlock()
	q := hs.queues[peer]
	if q == nil {
		q = &hintQueue{}
		hs.queues[peer] = q
	}
	return q
}

func (hs *hintStore) peerDir(peer string) string {
	return filepath.Join(hs.dir, url.PathEscape(peer))
}

func (hs *hintStore) file(peer string, seq uint64) string {
	return filepath.Join(hs.peerDir(peer), fmt.Sprintf("%016x%s", seq, hintExt))
}

func (hs *hintStore) gauges(peer string, q *hintQueue) {
	hs.m.hintsPending.WithLabelValues(peer).Set(float64(len(q.hints)))
	hs.m.hintBytes.WithLabelValues(peer).Set(float64(q.bytes))
}

// add stores body durably as the newest hint for peer, then drops the
// oldest hints beyond the byte limit. The file is written and fsynced
// outside the queue's lock: while a peer is down every write touching its
// partitions adds a hint, and serialising their fsyncs would throttle all
// ingest to one request per fsync pair.
func (hs *hintStore) add(peer string, body []byte) error {
	q := hs.queue(peer)
	q.mu.Lock()
	h := hint{seq: q.nextSeq, created: hs.now()}
	q.nextSeq++
	q.mu.Unlock()
	if hs.dir == "" {
		h.body = body
		h.size = int64(len(body))
	} else {
		n, err := hs.write(peer, h, body)
		if err != nil {
			return err
		}
		h.size = n
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	// Concurrent adds finish in any order; the queue stays in seq order.
	i, _ := slices.BinarySearchFunc(q.hints, h.seq, func(x hint, seq uint64) int { return cmp.Compare(x.seq, seq) })
	q.hints = slices.Insert(q.hints, i, h)
	q.bytes += h.size
	dropped := 0
	for q.bytes > hs.max && len(q.hints) > 0 {
		old := q.hints[0]
		q.hints = q.hints[1:]
		q.bytes -= old.size
		hs.remove(peer, old)
		hs.m.hintsDropped.Inc()
		dropped++
	}
	if dropped > 0 && q.warned.Add(1)%100 == 1 {
		hs.logger.Warn("Dropped the oldest hints: over the per-peer limit; anti-entropy repairs what they held", "peer", peer, "dropped", dropped, "times", q.warned.Load())
	}
	hs.gauges(peer, q)
	return nil
}

func (hs *hintStore) write(peer string, h hint, body []byte) (int64, error) {
	dir := hs.peerDir(peer)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return 0, fmt.Errorf("write hint: %w", err)
	}
	final := hs.file(peer, h.seq)
	tmp := final + ".tmp"
	buf := make([]byte, hintHeaderLen, hintHeaderLen+len(body))
	binary.LittleEndian.PutUint64(buf, uint64(h.created.UnixNano()))
	binary.LittleEndian.PutUint32(buf[8:], crc32.Checksum(body, castagnoli))
	buf = append(buf, body...)
	err := func() error {
		f, err := os.OpenFile(tmp, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
		if err != nil {
			return err
		}
		if _, err := f.Write(buf); err != nil {
			_ = f.Close()
			return err
		}
		if err := f.Sync(); err != nil {
			_ = f.Close()
			return err
		}
		if err := f.Close(); err != nil {
			return err
		}
		if err := os.Rename(tmp, final); err != nil {
			return err
		}
		d, err := os.Open(dir)
		if err != nil {
			return err
		}
		defer func() { _ = d.Close() }()
		return d.Sync()
	}()
	if err != nil {
		_ = os.Remove(tmp)
		return 0, fmt.Errorf("write hint: %w", err)
	}
	return int64(len(buf)), nil
}

func (hs *hintStore) remove(peer string, h hint) {
	if hs.dir == "" {
		return
	}
	if err := os.Remove(hs.file(peer, h.seq)); err != nil && !errors.Is(err, os.ErrNotExist) {
		hs.logger.Warn("Cannot delete hint", "peer", peer, "err", err)
	}
}

// read returns the body of h.
func (hs *hintStore) read(peer string, h hint) ([]byte, error) {
	if hs.dir == "" {
		return h.body, nil
	}
	b, err := os.ReadFile(hs.file(peer, h.seq))
	if err != nil {
		return nil, err
	}
	if len(b) < hintHeaderLen || crc32.Checksum(b[hintHeaderLen:], castagnoli) != binary.LittleEndian.Uint32(b[8:]) {
		return nil, errHintCorrupt
	}
	return b[hintHeaderLen:], nil
}

// oldest returns peer's oldest hint.
func (hs *hintStore) oldest(peer string) (hint, bool) {
	q := hs.queue(peer)
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.hints) == 0 {
		return hint{}, false
	}
	return q.hints[0], true
}

// done deletes h (delivered or unreadable) if it is still queued.
func (hs *hintStore) done(peer string, h hint) {
	q := hs.queue(peer)
	q.mu.Lock()
	defer q.mu.Unlock()
	i := slices.IndexFunc(q.hints, func(x hint) bool { return x.seq == h.seq })
	if i < 0 {
		return // dropped meanwhile
	}
	q.hints = slices.Delete(q.hints, i, i+1)
	q.bytes -= h.size
	hs.remove(peer, h)
	hs.gauges(peer, q)
}

// forget deletes every hint of peer: it left the ring, and the partitions
// it owned are copied from the owners that acknowledged those writes. A
// replay running meanwhile finds its hint gone and stops (done is a no-op).
func (hs *hintStore) forget(peer string) (n int, bytes int64) {
	q := hs.queue(peer)
	q.mu.Lock()
	dropped := q.hints
	n, bytes = len(q.hints), q.bytes
	q.hints, q.bytes = nil, 0
	hs.gauges(peer, q)
	q.mu.Unlock()
	for _, h := range dropped {
		hs.remove(peer, h)
	}
	if hs.dir != "" {
		_ = os.Remove(hs.peerDir(peer)) // only if empty; a hint added meanwhile stays
	}
	return n, bytes
}

// HintBacklog is what one peer has waiting in hints.
type HintBacklog struct {
	Hints     int           `json:"hints"`
	Bytes     int64         `json:"bytes"`
	OldestAge time.Duration `json:"oldestAge"`
}

func (hs *hintStore) backlog() map[string]HintBacklog {
	hs.mu.Lock()
	names := make([]string, 0, len(hs.queues))
	qs := make([]*hintQueue, 0, len(hs.queues))
	for n, q := range hs.queues {
		names = append(names, n)
		qs = append(qs, q)
	}
	hs.mu.Unlock()
	now := hs.now()
	out := make(map[string]HintBacklog, len(names))
	for i, q := range qs {
		q.mu.Lock()
		b := HintBacklog{Hints: len(q.hints), Bytes: q.bytes}
		if len(q.hints) > 0 {
			b.OldestAge = max(0, now.Sub(q.hints[0].created))
		}
		q.mu.Unlock()
		if b.Hints > 0 {
			out[names[i]] = b
		}
	}
	return out
}

package shard

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/storage"
	"github.com/prometheus/prometheus/tsdb/chunkenc"
	"github.com/prometheus/prometheus/tsdb/chunks"
	"github.com/prometheus/prometheus/tsdb/record"
	"github.com/stretchr/testify/require"
)

func walDir(db *DB) string { return filepath.Join(db.cfg.Path, walDirName) }

func segmentFiles(t *testing.T, dir string) []walSegment {
	t.Helper()
	segs, err := listSegments(dir)
	require.NoError(t, err)
	return segs
}

func ramp(from, to int64) []pt {
	var out []pt
	for i := from; i < to; i++ {
		out = append(out, pt{i * 1000, float64(i)})
	}
	return out
}

func TestWALReplayAfterCrashAcrossSegments(t *testing.T) {
	for _, sync := range []time.Duration{0, time.Hour} {
		t.Run(fmt.Sprint("sync=", sync), func(t *testing.T) {
			dir := t.TempDir()
			db := open(t, Config{Path: dir, SyncInterval: sync})
			db.wal.segmentSize = 512 // a few commits per segment
			ls := labels.FromStrings("__name__", "m")
			want := ramp(0, 300)
			for i := 0; i < len(want); i += 10 {
				appendFloats(t, db, ls, want[i:i+10]...)
				if i == 150 {
					require.NoError(t, db.flush())
				}
			}
			require.Greater(t, len(segmentFiles(t, walDir(db))), 3)
			crash(t, db)

			db = open(t, Config{Path: dir, SyncInterval: sync})
			require.Equal(t, want, queryFloats(t, db, math.MinInt64, math.MaxInt64, labels.MustNewMatcher(labels.MatchEqual, "__name__", "m"))[ls.String()])
			// Appends continue in a new segment and survive another crash.
			appendFloats(t, db, ls, pt{300_000, 300})
			crash(t, db)
			db = open(t, Config{Path: dir, SyncInterval: sync})
			defer func() { _ = db.Close() }()
			got := queryFloats(t, db, math.MinInt64, math.MaxInt64, labels.MustNewMatcher(labels.MatchEqual, "__name__", "m"))[ls.String()]
			require.Equal(t, append(want, pt{300_000, 300}), got)
		})
	}
}

// Many concurrent commits share fsyncs and race with flushes (segment
// rotation and deletion); every acknowledged sample survives a crash.
func TestWALConcurrentCommitsAndFlushes(t *testing.T) {
	dir := t.TempDir()
	db := open(t, Config{Path: dir})
	db.wal.segmentSize = 4 << 10
	const writers, per = 4, 200
	var wg sync.WaitGroup
	stop := make(chan struct{})
	wg.Add(writers)
	for w := 0; w < writers; w++ {
		go func() {
			defer wg.Done()
			ls := labels.FromStrings("__name__", "m", "w", fmt.Sprint(w))
			for i := int64(0); i < per; i++ {
				app := db.Appender(context.Background())
				_, err := app.Append(0, ls, i, float64(i))
				if err == nil {
					err = app.Commit()
				}
				if err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	flushed := make(chan struct{})
	go func() {
		defer close(flushed)
		for {
			select {
			case <-stop:
				return
			default:
			}
			if err := db.flush(); err != nil {
				panic(err)
			}
			time.Sleep(time.Millisecond)
		}
	}()
	wg.Wait()
	close(stop)
	<-flushed
	crash(t, db)

	db = open(t, Config{Path: dir})
	defer func() { _ = db.Close() }()
	got := queryFloats(t, db, math.MinInt64, math.MaxInt64, labels.MustNewMatcher(labels.MatchEqual, "__name__", "m"))
	require.Len(t, got, writers)
	for _, pts := range got {
		require.Len(t, pts, per)
	}
}

func TestWALTornTailIsTruncated(t *testing.T) {
	for name, damage := range map[string]func(b []byte) []byte{
		"short payload": func(b []byte) []byte { return b[:len(b)-3] },
		"short header":  func(b []byte) []byte { return append(b, 0x80) },
		"bad checksum":  func(b []byte) []byte { b[len(b)-1] ^= 0xff; return b },
		"zero tail":     func(b []byte) []byte { return append(b, make([]byte, 4096)...) },
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			db := open(t, Config{Path: dir})
			ls := labels.FromStrings("__name__", "m")
			want := ramp(0, 20)
			appendFloats(t, db, ls, want[:10]...)
			appendFloats(t, db, ls, want[10:]...)
			segs := segmentFiles(t, walDir(db))
			records := db.wal.size
			crash(t, db)
			last := segs[len(segs)-1].path
			b, err := os.ReadFile(last)
			require.NoError(t, err)
			require.Greater(t, int64(len(b)), records, "preallocated")
			require.Zero(t, bytes.Count(b[records:], []byte{0})-len(b[records:]), "preallocated with zeros")
			b = b[:records]
			good := int64(len(b))
			require.NoError(t, os.WriteFile(last, damage(b), 0o644))
			if name != "zero tail" && name != "short header" {
				good = -1 // the second commit's record is the damaged one
				want = want[:10]
			}

			db = open(t, Config{Path: dir})
			require.Equal(t, want, queryFloats(t, db, math.MinInt64, math.MaxInt64, labels.MustNewMatcher(labels.MatchEqual, "__name__", "m"))[ls.String()])
			fi, err := os.Stat(last)
			require.NoError(t, err)
			if good >= 0 {
				require.Equal(t, good, fi.Size())
			}
			// The truncated segment is no longer the last one, and it is clean.
			appendFloats(t, db, ls, pt{100_000, 1})
			crash(t, db)
			db = open(t, Config{Path: dir})
			defer func() { _ = db.Close() }()
			got := queryFloats(t, db, math.MinInt64, math.MaxInt64, labels.MustNewMatcher(labels.MatchEqual, "__name__", "m"))[ls.String()]
			require.Equal(t, append(want, pt{100_000, 1}), got)
		})
	}
}

func TestWALCorruptionBeforeTheLastSegmentIsAnError(t *testing.T) {
	dir := t.TempDir()
	db := open(t, Config{Path: dir})
	db.wal.segmentSize = 1
	ls := labels.FromStrings("__name__", "m")
	for i := int64(0); i < 3; i++ {
		appendFloats(t, db, ls, pt{i, 1})
	}
	segs := segmentFiles(t, walDir(db))
	require.Len(t, segs, 3)
	crash(t, db)
	b, err := os.ReadFile(segs[0].path)
	require.NoError(t, err)
	b[len(b)-1] ^= 1
	require.NoError(t, os.WriteFile(segs[0].path, b, 0o644))
	_, err = Open(Config{Path: dir, MemTableSize: 8 << 20}, nil, nil)
	require.ErrorIs(t, err, ErrCorrupt)

	// A missing segment in the middle is corruption too.
	require.NoError(t, os.Remove(segs[0].path))
	require.NoError(t, os.Remove(segs[1].path))
	require.NoError(t, os.WriteFile(segs[0].path, nil, 0o644))
	_, err = Open(Config{Path: dir, MemTableSize: 8 << 20}, nil, nil)
	require.ErrorIs(t, err, ErrCorrupt)
}

// A data directory of an older Kiln holds its write-ahead records as badger
// W keys: they are replayed once and deleted by the first flush.
func TestLegacyWALKeysAreReplayed(t *testing.T) {
	dir := t.TempDir()
	db := open(t, Config{Path: dir})
	ls := labels.FromStrings("__name__", "m")
	appendFloats(t, db, ls, pt{1000, 1})
	ref := chunks.HeadSeriesRef(db.seriesByRef(1).ref)
	legacy := &appender{samples: []record.RefSample{{Ref: ref, T: 2000, V: 2}, {Ref: ref, T: 3000, V: 3}}}
	require.NoError(t, db.bdb.Update(func(txn *badger.Txn) error {
		for i, v := range legacy.encodeWAL() {
			if err := txn.Set(walKey(uint64(i+1)), v); err != nil {
				return err
			}
		}
		return nil
	}))
	crash(t, db)

	want := []pt{{1000, 1}, {2000, 2}, {3000, 3}}
	db = open(t, Config{Path: dir})
	require.True(t, db.legacyWAL)
	require.Equal(t, want, queryFloats(t, db, math.MinInt64, math.MaxInt64, labels.MustNewMatcher(labels.MatchEqual, "__name__", "m"))[ls.String()])
	require.NoError(t, db.flush())
	require.False(t, db.legacyWAL)
	require.NoError(t, db.bdb.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte{tagWAL}})
		defer it.Close()
		it.Rewind()
		require.False(t, it.Valid(), "legacy W keys deleted")
		return nil
	}))
	crash(t, db)
	db = open(t, Config{Path: dir})
	defer func() { _ = db.Close() }()
	require.False(t, db.legacyWAL)
	require.Equal(t, want, queryFloats(t, db, math.MinInt64, math.MaxInt64, labels.MustNewMatcher(labels.MatchEqual, "__name__", "m"))[ls.String()])
}

// Flushes delete whole segments: the write-ahead directory stays as small
// as the data written since the last flush, however much is ingested.
func TestFlushDeletesOldSegments(t *testing.T) {
	dir := t.TempDir()
	db := open(t, Config{Path: dir})
	defer func() { _ = db.Close() }()
	ls := make([]labels.Labels, 100)
	for i := range ls {
		ls[i] = labels.FromStrings("__name__", "m", "i", fmt.Sprint(i))
	}
	round := func(r int64) {
		app := db.Appender(context.Background())
		for _, l := range ls {
			_, err := app.Append(0, l, r*15000, float64(r))
			require.NoError(t, err)
		}
		require.NoError(t, app.Commit())
	}
	var perFlush int64
	for f := int64(0); f < 20; f++ {
		for r := f * 50; r < (f+1)*50; r++ {
			round(r)
		}
		size := dirBytes(t, walDir(db))
		if f == 0 {
			perFlush = size
		}
		require.LessOrEqual(t, size, perFlush*2, "flush %d", f)
		require.NoError(t, db.flush())
		segs := segmentFiles(t, walDir(db))
		require.Len(t, segs, 1, "only the segment rotated to remains")
		require.Equal(t, int64(0), dirBytes(t, walDir(db)))
		require.Equal(t, int64(1), db.wal.segments.Load())
		require.Equal(t, int64(0), db.wal.bytes.Load())
	}
	// A flush with nothing written keeps the empty segment.
	require.NoError(t, db.flush())
	require.Len(t, segmentFiles(t, walDir(db)), 1)
}

func dirBytes(t *testing.T, dir string) int64 {
	t.Helper()
	var n int64
	for _, s := range segmentFiles(t, dir) {
		fi, err := os.Stat(s.path)
		require.NoError(t, err)
		n += fi.Size()
	}
	return n
}

// FuzzSegmentReader reads arbitrary bytes as a segment, as start-up does
// with a file on disk: it must never panic or over-allocate, and every
// record it returns must be one that was framed.
func FuzzSegmentReader(f *testing.F) {
	a := &appender{samples: []record.RefSample{{Ref: 1, T: 5, V: 1.5}, {Ref: 2, ST: 1, T: 6, V: 2}}, hasST: true}
	var seg []byte
	for _, v := range a.encodeWAL() {
		seg = appendFrame(seg, v)
	}
	seg = appendFrame(seg, []byte{walVersion})
	f.Add(seg)
	f.Add(seg[:len(seg)-2])
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01})
	f.Add([]byte{0, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		sr := newSegmentReader(bytes.NewReader(b), int64(len(b)))
		var reframed []byte
		for {
			rec, err := sr.next()
			if err != nil {
				if !errors.Is(err, io.EOF) {
					require.ErrorIs(t, err, errBadFrame)
					require.ErrorIs(t, err, ErrCorrupt)
				}
				break
			}
			reframed = appendFrame(reframed, rec)
		}
		// The good prefix is exactly the records read, framed again.
		require.True(t, bytes.Equal(b[:sr.off], reframed), "good prefix %x, reframed %x", b[:sr.off], reframed)
	})
}

// A commit without start timestamps is written as a V1 record, one with
// them as V2: replay restores both, start timestamps included.
func TestWALReplayKeepsStartTimestamps(t *testing.T) {
	dir := t.TempDir()
	db := open(t, Config{Path: dir})
	ls := labels.FromStrings("__name__", "m")
	appendFloats(t, db, ls, pt{1000, 1}, pt{2000, 2}) // no ST
	app := db.AppenderV2(context.Background())
	for _, ts := range []int64{3000, 4000} {
		_, err := app.Append(0, ls, 2500, ts, float64(ts), nil, nil, storage.AOptions{})
		require.NoError(t, err)
	}
	require.NoError(t, app.Commit())
	crash(t, db)

	db = open(t, Config{Path: dir})
	defer func() { _ = db.Close() }()
	var got [][2]int64 // t, st
	onlySeries(t, db, labels.MustNewMatcher(labels.MatchEqual, "__name__", "m"), func(it chunkenc.Iterator) {
		for it.Next() != chunkenc.ValNone {
			ts, _ := it.At()
			got = append(got, [2]int64{ts, it.AtST()})
		}
	})
	require.Equal(t, [][2]int64{{1000, 0}, {2000, 0}, {3000, 2500}, {4000, 2500}}, got)
}

func TestDatasyncReportsAClosedFileAsClosed(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "seg"))
	require.NoError(t, err)
	_, err = f.Write([]byte("x"))
	require.NoError(t, err)
	require.NoError(t, datasync(f))
	require.NoError(t, f.Close())
	require.ErrorIs(t, datasync(f), os.ErrClosed)
}

// levelCounter counts log records by level.
type levelCounter struct {
	mu sync.Mutex
	n  map[slog.Level]int
}

func (h *levelCounter) Enabled(context.Context, slog.Level) bool { return true }
func (h *levelCounter) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.n[r.Level]++
	return nil
}
func (h *levelCounter) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *levelCounter) WithGroup(string) slog.Handler      { return h }

// A crashed segment ends in preallocated zeros: replay keeps every record,
// cuts the zeros without a warning, and rotated segments carry no zeros.
func TestWALPreallocatedTailIsNotATornWrite(t *testing.T) {
	dir := t.TempDir()
	db := open(t, Config{Path: dir})
	db.wal.segmentSize = 8 << 10 // a few segments, so rotations are covered
	ls := labels.FromStrings("__name__", "m")
	want := ramp(0, 2000)
	for i := 0; i < len(want); i += 100 {
		appendFloats(t, db, ls, want[i:i+100]...)
	}
	segs := segmentFiles(t, walDir(db))
	require.Greater(t, len(segs), 2)
	var onDisk int64
	for _, s := range segs {
		fi, err := os.Stat(s.path)
		require.NoError(t, err)
		onDisk += fi.Size()
	}
	require.Equal(t, onDisk, db.wal.bytes.Load(), "the segment bytes metric counts preallocated zeros")
	for _, s := range segs[:len(segs)-1] {
		b, err := os.ReadFile(s.path)
		require.NoError(t, err)
		sr := newSegmentReader(bytes.NewReader(b), int64(len(b)))
		for {
			if _, err := sr.next(); err != nil {
				require.ErrorIs(t, err, io.EOF, "segment %d ends with its last record", s.n)
				break
			}
		}
	}
	crash(t, db)

	logs := &levelCounter{n: map[slog.Level]int{}}
	db, err := Open(Config{Path: dir, MemTableSize: 8 << 20}, prometheus.NewRegistry(), slog.New(logs))
	require.NoError(t, err)
	defer func() { _ = db.Close() }()
	require.Equal(t, want, queryFloats(t, db, math.MinInt64, math.MaxInt64, labels.MustNewMatcher(labels.MatchEqual, "__name__", "m"))[ls.String()])
	logs.mu.Lock()
	defer logs.mu.Unlock()
	require.Zero(t, logs.n[slog.LevelWarn]+logs.n[slog.LevelError], "no warning for a preallocated tail")
}

package shard

import (
	"bufio"
	"bytes"
	"context"
	"encoding/hex"
	"fmt"
	"math"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/prometheus/model/histogram"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/metadata"
	"github.com/prometheus/prometheus/storage"
	"github.com/prometheus/prometheus/tsdb/chunkenc"
	"github.com/prometheus/prometheus/tsdb/tsdbutil"
	"github.com/stretchr/testify/require"
)

// seriesIn returns n label sets named name that all fall in partition p.
func seriesIn(p uint16, name string, n int) []labels.Labels {
	var out []labels.Labels
	for i := 0; len(out) < n; i++ {
		ls := labels.FromStrings("__name__", name, "i", fmt.Sprint(i))
		if PartitionOf(ls) == p {
			out = append(out, ls)
		}
	}
	return out
}

// appendSamples commits samples of one series, any value type.
func appendSamples(t testing.TB, db *DB, ls labels.Labels, ss ...sample) {
	t.Helper()
	app := db.AppenderV2(context.Background())
	for _, sm := range ss {
		_, err := app.Append(0, ls, 0, sm.t, sm.f, sm.h, sm.fh, storage.AOptions{})
		require.NoError(t, err)
	}
	require.NoError(t, app.Commit())
}

// dump returns every sample of partition p in [mint, maxt] as queries see
// it: series labels -> "t type value-bits" lines.
func dump(t *testing.T, db *DB, p uint16, mint, maxt int64) map[string][]string {
	t.Helper()
	var set PartitionSet
	set.Add(p)
	q := db.PartitionQuerier(mint, maxt, &set)
	defer func() { _ = q.Close() }()
	ss := q.Select(context.Background(), true, nil, labels.MustNewMatcher(labels.MatchRegexp, "__name__", ".+"))
	out := map[string][]string{}
	for ss.Next() {
		s := ss.At()
		it := s.Iterator(nil)
		for vt := it.Next(); vt != chunkenc.ValNone; vt = it.Next() {
			sm := sampleAt(it, vt)
			out[s.Labels().String()] = append(out[s.Labels().String()], fmt.Sprintf("%d %s %s", sm.t, vt, hex.EncodeToString(appendSampleBits(nil, sm))))
		}
		require.NoError(t, it.Err())
	}
	require.NoError(t, ss.Err())
	return out
}

func countSamples(d map[string][]string) int {
	n := 0
	for _, v := range d {
		n += len(v)
	}
	return n
}

const testPart = uint16(77)

// transferFixture fills a DB with partition testPart: float series with
// out-of-order samples (some compacted, some still pending), an integer
// and a float native histogram series, half of it flushed and evicted to
// disk, half in memory; plus series in other partitions.
func transferFixture(t *testing.T, cfg Config) *DB {
	t.Helper()
	cfg.HeadWindow = 10 * time.Minute
	db := open(t, cfg)
	floats := seriesIn(testPart, "m_float", 3)
	hist := seriesIn(testPart, "m_hist", 1)[0]
	fhist := seriesIn(testPart, "m_fhist", 1)[0]
	const step = 15000
	write := func(from, to int) {
		for _, ls := range floats {
			var ss []sample
			for i := from; i < to; i++ {
				ss = append(ss, sample{t: int64(i) * step, f: float64(i) * 1.5})
			}
			appendSamples(t, db, ls, ss...)
		}
		var hs, fhs []sample
		for i := from; i < to; i += 4 {
			hs = append(hs, sample{t: int64(i) * step, h: tsdbutil.GenerateTestHistogram(int64(i))})
			fhs = append(fhs, sample{t: int64(i) * step, fh: tsdbutil.GenerateTestFloatHistogram(int64(i))})
		}
		appendSamples(t, db, hist, hs...)
		appendSamples(t, db, fhist, fhs...)
	}
	ooo := func(from, to int) {
		for _, ls := range floats {
			var ss []sample
			for i := from; i < to; i++ {
				ss = append(ss, sample{t: int64(i)*step + 7000, f: -float64(i)})
			}
			appendSamples(t, db, ls, ss...)
		}
	}
	write(0, 240) // 1 h
	ooo(10, 90)   // > 64: compacted into a chunk
	require.NoError(t, db.flush())
	write(240, 480) // the first hour is now evicted
	require.NoError(t, db.flush())
	ooo(100, 110) // pending out-of-order samples, overlapping a disk chunk
	ooo(300, 310) // and an in-memory one
	write(480, 520)
	ooo(400, 470) // compacted, in memory
	// A duplicate write in the out-of-order buffer and a chunk.
	appendSamples(t, db, floats[0], sample{t: 100*step + 7000, f: -100}, sample{t: 5 * step, f: 7.5})

	// The fixture covers every place data lives.
	s := db.lookup(floats[0])
	s.mu.Lock()
	require.Greater(t, s.diskMaxT, int64(100*step), "chunks only on disk")
	require.NotEmpty(t, s.ooo, "pending out-of-order samples")
	require.NotEmpty(t, s.oooChunks, "out-of-order chunks")
	require.Greater(t, len(s.chunks), 1, "in-memory chunks")
	s.mu.Unlock()

	// Other partitions.
	for i := range 20 {
		ls := labels.FromStrings("__name__", "other", "i", fmt.Sprint(i))
		if PartitionOf(ls) != testPart {
			appendSamples(t, db, ls, sample{t: 1000, f: 1}, sample{t: 2000, f: 2})
		}
	}
	// Metadata of a family present and one absent.
	app := db.AppenderV2(context.Background())
	_, err := app.Append(0, floats[0], 0, 520*step, 1, nil, nil, storage.AOptions{Metadata: metadata.Metadata{Type: "gauge", Help: "float"}})
	require.NoError(t, err)
	_, err = app.Append(0, labels.FromStrings("__name__", "other", "i", "0"), 0, 3000, 3, nil, nil, storage.AOptions{Metadata: metadata.Metadata{Type: "counter", Help: "other"}})
	require.NoError(t, err)
	require.NoError(t, app.Commit())
	return db
}

func exportAll(t *testing.T, db *DB, p uint16, mint, maxt int64) ([]byte, ExportStats) {
	t.Helper()
	var buf bytes.Buffer
	st, err := db.ExportPartition(context.Background(), p, mint, maxt, &buf, ExportOptions{})
	require.NoError(t, err)
	require.Equal(t, int64(buf.Len()), st.Bytes)
	return buf.Bytes(), st
}

func TestExportImportRoundTrip(t *testing.T) {
	src := transferFixture(t, Config{})
	defer func() { _ = src.Close() }()
	want := dump(t, src, testPart, math.MinInt64, math.MaxInt64)
	require.Len(t, want, 5)

	stream, est := exportAll(t, src, testPart, math.MinInt64, math.MaxInt64)
	require.Equal(t, 5, est.Series)
	require.Equal(t, countSamples(want), est.Samples)

	dst := open(t, Config{})
	defer func() { _ = dst.Close() }()
	ist, err := dst.ImportPartition(context.Background(), bytes.NewReader(stream))
	require.NoError(t, err)
	require.Equal(t, ImportStats{Series: 5, Samples: est.Samples, Bytes: int64(len(stream))}, ist)

	require.Equal(t, want, dump(t, dst, testPart, math.MinInt64, math.MaxInt64))
	// Windows of a query agree too.
	require.Equal(t, dump(t, src, testPart, 1000*1000, 2000*1000), dump(t, dst, testPart, 1000*1000, 2000*1000))
	// Nothing of other partitions; every series is in testPart.
	all := dst.Partitions()
	require.Equal(t, []uint16{testPart}, all.Partitions())
	q, err := dst.Querier(math.MinInt64, math.MaxInt64)
	require.NoError(t, err)
	vals, _, err := q.LabelValues(context.Background(), "__name__", nil)
	require.NoError(t, err)
	require.Equal(t, []string{"m_fhist", "m_float", "m_hist"}, vals)
	require.NoError(t, q.Close())
	// Metadata of the families present came along, and only those.
	md, err := dst.Metadata(context.Background(), "", 0, 0)
	require.NoError(t, err)
	require.Equal(t, map[string][]metadata.Metadata{"m_float": {{Type: "gauge", Help: "float"}}}, md)

	// Importing again, also after a flush, changes nothing.
	chunksBefore := dst.Stats(0).ChunkCount
	ist, err = dst.ImportPartition(context.Background(), bytes.NewReader(stream))
	require.NoError(t, err)
	require.Equal(t, ImportStats{Series: 5, Duplicates: est.Samples, Bytes: int64(len(stream))}, ist)
	require.Equal(t, chunksBefore, dst.Stats(0).ChunkCount)
	require.NoError(t, dst.flush())
	ist, err = dst.ImportPartition(context.Background(), bytes.NewReader(stream))
	require.NoError(t, err)
	require.Zero(t, ist.Samples)
	require.Zero(t, ist.Conflicts)
	require.Equal(t, want, dump(t, dst, testPart, math.MinInt64, math.MaxInt64))

	// Re-exporting the copy gives the same data.
	again, est2 := exportAll(t, dst, testPart, math.MinInt64, math.MaxInt64)
	require.Equal(t, est.Samples, est2.Samples)
	third := open(t, Config{})
	defer func() { _ = third.Close() }()
	_, err = third.ImportPartition(context.Background(), bytes.NewReader(again))
	require.NoError(t, err)
	require.Equal(t, want, dump(t, third, testPart, math.MinInt64, math.MaxInt64))
}

// A view that renews its read transaction between series (as a slow export
// does) reads the same data.
func TestExportRenewedTransaction(t *testing.T) {
	src := transferFixture(t, Config{})
	defer func() { _ = src.Close() }()
	want, _ := exportAll(t, src, testPart, math.MinInt64, math.MaxInt64)
	defer func(d time.Duration) { viewTxnMaxAge = d }(viewTxnMaxAge)
	viewTxnMaxAge = 0
	got, _ := exportAll(t, src, testPart, math.MinInt64, math.MaxInt64)
	require.Equal(t, want, got)
}

func TestImportConflictKeepsExisting(t *testing.T) {
	src := transferFixture(t, Config{})
	defer func() { _ = src.Close() }()
	want := dump(t, src, testPart, math.MinInt64, math.MaxInt64)
	stream, est := exportAll(t, src, testPart, math.MinInt64, math.MaxInt64)

	dst := open(t, Config{})
	defer func() { _ = dst.Close() }()
	ls := seriesIn(testPart, "m_float", 1)[0]
	// The node already holds one sample with another value, one equal, and
	// newer data, so the import lands behind it (out of order).
	appendSamples(t, dst, ls, sample{t: 15000, f: 42}, sample{t: 30000, f: 3}, sample{t: 1e9, f: 1})
	ist, err := dst.ImportPartition(context.Background(), bytes.NewReader(stream))
	require.NoError(t, err)
	require.Equal(t, 1, ist.Conflicts)
	require.Equal(t, 1, ist.Duplicates)
	require.Equal(t, est.Samples-2, ist.Samples)

	got := dump(t, dst, testPart, math.MinInt64, math.MaxInt64)
	require.Equal(t, countSamples(want)+1, countSamples(got))
	require.Contains(t, got[ls.String()][1], "15000 float")
	require.NotEqual(t, want[ls.String()][1], got[ls.String()][1], "the held value wins")
	for k, v := range want {
		if k != ls.String() {
			require.Equal(t, v, got[k])
		}
	}
}

func TestExportWindow(t *testing.T) {
	src := transferFixture(t, Config{})
	defer func() { _ = src.Close() }()
	mint, maxt := int64(50*15000+1), int64(400*15000)
	want := dump(t, src, testPart, mint, maxt)
	stream, est := exportAll(t, src, testPart, mint, maxt)
	require.Equal(t, countSamples(want), est.Samples)

	dst := open(t, Config{})
	defer func() { _ = dst.Close() }()
	_, err := dst.ImportPartition(context.Background(), bytes.NewReader(stream))
	require.NoError(t, err)
	require.Equal(t, want, dump(t, dst, testPart, math.MinInt64, math.MaxInt64))

	// An empty window and an empty partition give valid, empty streams.
	for _, w := range [][3]int64{{int64(testPart), 1e12, 2e12}, {int64(testPart + 1), math.MinInt64, math.MaxInt64}} {
		stream, est := exportAll(t, src, uint16(w[0]), w[1], w[2])
		require.Equal(t, ExportStats{Bytes: int64(len(stream))}, est)
		ist, err := dst.ImportPartition(context.Background(), bytes.NewReader(stream))
		require.NoError(t, err)
		require.Zero(t, ist.Series)
	}
}

func TestImportSkipsSamplesOlderThanRetention(t *testing.T) {
	src := open(t, Config{})
	defer func() { _ = src.Close() }()
	ls := seriesIn(testPart, "m", 1)[0]
	now := time.UnixMilli(10_000_000)
	appendSamples(t, src, ls, sample{t: 1000, f: 1}, sample{t: 9_000_000, f: 2}, sample{t: 9_500_000, f: 3})
	stream, _ := exportAll(t, src, testPart, math.MinInt64, math.MaxInt64)

	dst := open(t, Config{Retention: time.Hour, Now: func() time.Time { return now }})
	defer func() { _ = dst.Close() }()
	ist, err := dst.ImportPartition(context.Background(), bytes.NewReader(stream))
	require.NoError(t, err)
	require.Equal(t, 1, ist.TooOld)
	require.Equal(t, 2, ist.Samples)
	require.Len(t, dump(t, dst, testPart, math.MinInt64, math.MaxInt64)[ls.String()], 2)
}

func TestImportRejectsBadStreams(t *testing.T) {
	src := transferFixture(t, Config{})
	defer func() { _ = src.Close() }()
	stream, _ := exportAll(t, src, testPart, math.MinInt64, math.MaxInt64)
	dst := open(t, Config{})
	defer func() { _ = dst.Close() }()
	imp := func(b []byte) error {
		_, err := dst.ImportPartition(context.Background(), bytes.NewReader(b))
		return err
	}
	require.ErrorIs(t, imp(nil), ErrBadStream)
	require.ErrorIs(t, imp([]byte("KILNPRT\x02")), ErrBadStream)
	require.ErrorIs(t, imp(stream[:len(stream)-1]), ErrBadStream)
	require.ErrorIs(t, imp(stream[:len(stream)/2]), ErrBadStream)
	flipped := bytes.Clone(stream)
	flipped[len(flipped)/3] ^= 0x10
	require.ErrorIs(t, imp(flipped), ErrBadStream)
	// A well-formed frame in the wrong partition.
	fw := &frameWriter{w: &bytes.Buffer{}}
	require.NoError(t, fw.raw([]byte("KILNPRT\x01")))
	hdr := make([]byte, 18)
	hdr[1] = byte(testPart + 1)
	hdr[2], hdr[10] = 0x80, 0x7f // [MinInt64, ~MaxInt64]
	require.NoError(t, fw.frame(frameHeader, hdr))
	require.NoError(t, fw.frame(frameSeries, encodeLabels(nil, seriesIn(testPart, "m", 1)[0])))
	require.ErrorIs(t, imp(fw.w.(*bytes.Buffer).Bytes()), ErrBadStream)

	// Nothing past the end frame is read from a ByteReader.
	br := bufio.NewReader(bytes.NewReader(append(bytes.Clone(stream), "tail"...)))
	_, err := dst.ImportPartition(context.Background(), br)
	require.NoError(t, err)
	rest := new(strings.Builder)
	_, err = br.WriteTo(rest)
	require.NoError(t, err)
	require.Equal(t, "tail", rest.String())
}

// fakeClock advances only when slept on.
type fakeClock struct {
	mu    sync.Mutex
	t     time.Time
	slept time.Duration
}

func (c *fakeClock) clock() clock {
	return clock{
		now: func() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t },
		sleep: func(_ context.Context, d time.Duration) error {
			c.mu.Lock()
			defer c.mu.Unlock()
			c.t = c.t.Add(d)
			c.slept += d
			return nil
		},
	}
}

func TestExportRateLimit(t *testing.T) {
	src := transferFixture(t, Config{})
	defer func() { _ = src.Close() }()
	for _, rate := range []int64{1000, 20000, 1 << 20} {
		fc := &fakeClock{t: time.Unix(0, 0)}
		var buf bytes.Buffer
		st, err := src.ExportPartition(context.Background(), testPart, math.MinInt64, math.MaxInt64, &buf, ExportOptions{BytesPerSecond: rate, clock: fc.clock()})
		require.NoError(t, err)
		want := time.Duration(float64(st.Bytes) / float64(rate) * float64(time.Second))
		require.InDelta(t, want, fc.slept, float64(time.Millisecond), "rate %d: %d bytes", rate, st.Bytes)
		// The paced stream is the same stream.
		plain, _ := exportAll(t, src, testPart, math.MinInt64, math.MaxInt64)
		require.Equal(t, plain, buf.Bytes())
	}

	// A cancelled context stops a paced export.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := src.ExportPartition(ctx, testPart, math.MinInt64, math.MaxInt64, &bytes.Buffer{}, ExportOptions{BytesPerSecond: 100})
	require.ErrorIs(t, err, context.Canceled)
}

func TestRateLimitedWriterSmallWrites(t *testing.T) {
	fc := &fakeClock{t: time.Unix(0, 0)}
	l := &rateLimitedWriter{ctx: context.Background(), w: &bytes.Buffer{}, rate: 1000, clk: fc.clock()}
	for range 100 {
		_, err := l.Write(make([]byte, 50))
		require.NoError(t, err)
	}
	require.Equal(t, 5*time.Second, fc.slept)
}

func TestDropPartition(t *testing.T) {
	dir := t.TempDir()
	db := transferFixture(t, Config{Path: dir})
	others := dump(t, db, testPart+1, math.MinInt64, math.MaxInt64)
	set := db.Partitions()
	require.True(t, set.Has(testPart))
	require.Greater(t, set.Len(), 5)

	// A query that matched the series before the drop still works.
	var only PartitionSet
	only.Add(testPart)
	q := db.PartitionQuerier(math.MinInt64, math.MaxInt64, &only)
	ss := q.Select(context.Background(), false, nil, labels.MustNewMatcher(labels.MatchRegexp, "__name__", ".+"))

	require.NoError(t, db.DropPartition(context.Background(), testPart))

	for ss.Next() {
		it := ss.At().Iterator(nil)
		for it.Next() != chunkenc.ValNone {
		}
		require.NoError(t, it.Err())
	}
	require.NoError(t, ss.Err())
	require.NoError(t, q.Close())

	check := func(db *DB) {
		t.Helper()
		require.Empty(t, dump(t, db, testPart, math.MinInt64, math.MaxInt64))
		q, err := db.Querier(math.MinInt64, math.MaxInt64)
		require.NoError(t, err)
		defer func() { _ = q.Close() }()
		vals, _, err := q.LabelValues(context.Background(), "__name__", nil)
		require.NoError(t, err)
		require.Equal(t, []string{"other"}, vals)
		set := db.Partitions()
		require.False(t, set.Has(testPart))
		require.Equal(t, others, dump(t, db, testPart+1, math.MinInt64, math.MaxInt64))
		require.NotEmpty(t, dump(t, db, PartitionOf(labels.FromStrings("__name__", "other", "i", "3")), math.MinInt64, math.MaxInt64))
		stream, est := exportAll(t, db, testPart, math.MinInt64, math.MaxInt64)
		require.Zero(t, est.Series, "%x", stream)
	}
	check(db)
	// New writes to the partition after the drop are kept.
	ls := seriesIn(testPart, "after", 1)[0]
	appendSamples(t, db, ls, sample{t: 5, f: 5})
	crash(t, db) // no flush at close: write-ahead records are replayed

	db = open(t, Config{Path: dir})
	require.Equal(t, map[string][]string{ls.String(): {fmt.Sprintf("5 float %x", appendSampleBits(nil, sample{t: 5, f: 5}))}},
		dump(t, db, testPart, math.MinInt64, math.MaxInt64))
	require.NoError(t, db.DropPartition(context.Background(), testPart))
	check(db)
	require.NoError(t, db.Close())

	db = open(t, Config{Path: dir})
	defer func() { _ = db.Close() }()
	check(db)
	// Dropping an empty partition is fine.
	require.NoError(t, db.DropPartition(context.Background(), testPart))
}

func TestDropPartitionUnderLoad(t *testing.T) {
	db := open(t, Config{})
	defer func() { _ = db.Close() }()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	ls := seriesIn(testPart, "m", 4)
	for w := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := int64(0); ctx.Err() == nil; i++ {
				app := db.AppenderV2(ctx)
				for _, l := range ls {
					_, _ = app.Append(0, l, 0, i*1000+int64(w), float64(i), nil, nil, storage.AOptions{})
				}
				_ = app.Commit()
				q := db.PartitionQuerier(math.MinInt64, math.MaxInt64, nil)
				ss := q.Select(ctx, false, nil, labels.MustNewMatcher(labels.MatchEqual, "__name__", "m"))
				for ss.Next() {
					it := ss.At().Iterator(nil)
					for it.Next() != chunkenc.ValNone {
					}
					if it.Err() != nil {
						panic(it.Err())
					}
				}
				if ss.Err() != nil && ctx.Err() == nil {
					panic(ss.Err())
				}
				_ = q.Close()
			}
		}()
	}
	for range 5 {
		time.Sleep(20 * time.Millisecond)
		require.NoError(t, db.DropPartition(context.Background(), testPart))
	}
	cancel()
	wg.Wait()
}

// Histogram values survive the trip exactly, not just their digest bytes,
// exponential and custom buckets alike.
func TestExportImportHistogramValues(t *testing.T) {
	for name, gen := range map[string]func(int64) *histogram.Histogram{
		"exponential": tsdbutil.GenerateTestHistogram,
		"custom":      tsdbutil.GenerateTestCustomBucketsHistogram,
	} {
		t.Run(name, func(t *testing.T) {
			src := open(t, Config{})
			defer func() { _ = src.Close() }()
			ls := seriesIn(testPart, "h", 1)[0]
			var hs []sample
			for i := range 50 {
				hs = append(hs, sample{t: int64(i) * 1000, h: gen(int64(i))})
			}
			appendSamples(t, src, ls, hs...)
			stream, _ := exportAll(t, src, testPart, math.MinInt64, math.MaxInt64)
			dst := open(t, Config{})
			defer func() { _ = dst.Close() }()
			ist, err := dst.ImportPartition(context.Background(), bytes.NewReader(stream))
			require.NoError(t, err)
			require.Equal(t, 50, ist.Samples)
			q, err := dst.Querier(math.MinInt64, math.MaxInt64)
			require.NoError(t, err)
			defer func() { _ = q.Close() }()
			ss := q.Select(context.Background(), false, nil, labels.MustNewMatcher(labels.MatchEqual, "__name__", "h"))
			require.True(t, ss.Next())
			it := ss.At().Iterator(nil)
			i := 0
			for vt := it.Next(); vt != chunkenc.ValNone; vt = it.Next() {
				require.Equal(t, chunkenc.ValHistogram, vt)
				ts, h := it.AtHistogram(nil)
				require.Equal(t, int64(i)*1000, ts)
				want := gen(int64(i))
				h.CounterResetHint, want.CounterResetHint = histogram.UnknownCounterReset, histogram.UnknownCounterReset
				require.True(t, want.Equals(h.Compact(0)), "sample %d: %s != %s", i, want, h)
				i++
			}
			require.Equal(t, 50, i)
			require.False(t, ss.Next())
		})
	}
}

// Exports taken while samples are appended, flushed and evicted hold every
// sample committed before they started.
func TestExportDuringIngestAndFlush(t *testing.T) {
	db := open(t, Config{HeadWindow: time.Second})
	defer func() { _ = db.Close() }()
	ls := seriesIn(testPart, "m", 3)
	var last atomic.Int64
	last.Store(-1)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	// Stop the writers before the deferred Close, also when a check below
	// fails: otherwise their "storage closed" panic hides the failure.
	defer func() { cancel(); wg.Wait() }()
	wg.Add(2)
	go func() {
		defer wg.Done()
		for i := int64(0); ctx.Err() == nil; i++ {
			app := db.AppenderV2(ctx)
			for _, l := range ls {
				_, err := app.Append(0, l, 0, i*1000, float64(i), nil, nil, storage.AOptions{})
				if err != nil {
					panic(err)
				}
			}
			if err := app.Commit(); err != nil {
				panic(err)
			}
			last.Store(i)
			// In memory a commit costs microseconds: unthrottled, the
			// series grow by millions of samples and every export and
			// import below takes minutes.
			time.Sleep(50 * time.Microsecond)
		}
	}()
	go func() {
		defer wg.Done()
		for ctx.Err() == nil {
			if err := db.flush(); err != nil {
				panic(err)
			}
			time.Sleep(time.Millisecond)
		}
	}()
	for range 10 {
		time.Sleep(10 * time.Millisecond)
		upto := last.Load()
		stream, _ := exportAll(t, db, testPart, math.MinInt64, math.MaxInt64)
		dst := open(t, Config{})
		_, err := dst.ImportPartition(context.Background(), bytes.NewReader(stream))
		require.NoError(t, err)
		got := dump(t, dst, testPart, 0, upto*1000)
		require.NoError(t, dst.Close())
		require.Len(t, got, len(ls))
		for _, l := range ls {
			require.Len(t, got[l.String()], int(upto+1), "%s up to %d", l, upto)
		}
	}
	cancel()
	wg.Wait()
}

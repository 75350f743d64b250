package shard

import (
	"context"
	"math"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/prometheus/model/histogram"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/value"
	"github.com/prometheus/prometheus/storage"
	"github.com/prometheus/prometheus/tsdb/chunkenc"
	"github.com/prometheus/prometheus/tsdb/tsdbutil"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// badger's ristretto cache and z.AllocatorPool keep goroutines that
		// outlive Close by design.
		goleak.IgnoreAnyFunction("github.com/dgraph-io/ristretto/v2/z.(*AllocatorPool).freeupAllocators"),
		goleak.IgnoreAnyFunction("github.com/golang/glog.(*fileSink).flushDaemon"),
		goleak.IgnoreAnyFunction("github.com/dgraph-io/ristretto/v2.(*defaultPolicy[...]).processItems"),
		goleak.IgnoreAnyFunction("github.com/dgraph-io/ristretto/v2.(*Cache[...]).processItems"),
	)
}

func open(t *testing.T, cfg Config) *DB {
	t.Helper()
	if cfg.MemTableSize == 0 {
		cfg.MemTableSize = 8 << 20
	}
	db, err := Open(cfg, prometheus.NewRegistry(), nil)
	require.NoError(t, err)
	return db
}

// crash stops the DB like kill -9 would: no final flush of the head.
func crash(t *testing.T, db *DB) {
	t.Helper()
	db.closed.Store(true)
	db.cancel()
	db.wg.Wait()
	if db.wal != nil {
		// Records are with the OS already; no fsync, as after kill -9.
		require.NoError(t, db.wal.f.Close())
	}
	require.NoError(t, db.bdb.Close())
}

type pt struct {
	t int64
	f float64
}

func appendFloats(t *testing.T, db *DB, ls labels.Labels, pts ...pt) {
	t.Helper()
	app := db.AppenderV2(context.Background())
	for _, p := range pts {
		_, err := app.Append(0, ls, 0, p.t, p.f, nil, nil, storage.AOptions{})
		require.NoError(t, err)
	}
	require.NoError(t, app.Commit())
}

func queryFloats(t *testing.T, db *DB, mint, maxt int64, ms ...*labels.Matcher) map[string][]pt {
	t.Helper()
	q, err := db.Querier(mint, maxt)
	require.NoError(t, err)
	defer func() { _ = q.Close() }()
	ss := q.Select(context.Background(), true, nil, ms...)
	out := map[string][]pt{}
	for ss.Next() {
		s := ss.At()
		it := s.Iterator(nil)
		for vt := it.Next(); vt != chunkenc.ValNone; vt = it.Next() {
			require.Equal(t, chunkenc.ValFloat, vt)
			ts, f := it.At()
			out[s.Labels().String()] = append(out[s.Labels().String()], pt{ts, f})
		}
		require.NoError(t, it.Err())
	}
	require.NoError(t, ss.Err())
	return out
}

func TestAppendQueryOutOfOrderAndDuplicates(t *testing.T) {
	db := open(t, Config{})
	defer func() { _ = db.Close() }()
	ls := labels.FromStrings("__name__", "m", "job", "a")
	appendFloats(t, db, ls, pt{10, 1}, pt{20, 2}, pt{30, 3})
	// Out of order, and an exact duplicate: both accepted.
	appendFloats(t, db, ls, pt{15, 1.5}, pt{30, 3}, pt{20, 2})

	// Same timestamp, other value: rejected, the first write stays.
	app := db.AppenderV2(context.Background())
	_, err := app.Append(0, ls, 0, 30, 99, nil, nil, storage.AOptions{})
	require.ErrorIs(t, err, storage.ErrDuplicateSampleForTimestamp)
	_, err = app.Append(0, ls, 0, 15, 99, nil, nil, storage.AOptions{})
	require.ErrorIs(t, err, storage.ErrDuplicateSampleForTimestamp)
	require.NoError(t, app.Commit())

	want := []pt{{10, 1}, {15, 1.5}, {20, 2}, {30, 3}}
	require.Equal(t, want, queryFloats(t, db, 0, 100, labels.MustNewMatcher(labels.MatchEqual, "job", "a"))[ls.String()])
	// Trimmed to the querier's range.
	require.Equal(t, want[1:3], queryFloats(t, db, 11, 25, labels.MustNewMatcher(labels.MatchEqual, "job", "a"))[ls.String()])
	// After a flush (which encodes the out-of-order samples into a chunk)
	// the answer is the same.
	require.NoError(t, db.flush())
	require.Equal(t, want, queryFloats(t, db, 0, 100, labels.MustNewMatcher(labels.MatchEqual, "job", "a"))[ls.String()])
}

func TestCrashRecoveryKeepsCommittedSamples(t *testing.T) {
	dir := t.TempDir()
	db := open(t, Config{Path: dir})
	a := labels.FromStrings("__name__", "m", "i", "a")
	b := labels.FromStrings("__name__", "m", "i", "b")
	var want []pt
	for i := int64(0); i < 1000; i++ {
		want = append(want, pt{i * 1000, float64(i)})
	}
	appendFloats(t, db, a, want[:500]...)
	require.NoError(t, db.flush()) // half persisted as chunks, WAL truncated
	appendFloats(t, db, a, want[500:]...)
	appendFloats(t, db, b, pt{5, math.Float64frombits(value.StaleNaN)})
	crash(t, db)

	db = open(t, Config{Path: dir})
	got := queryFloats(t, db, math.MinInt64, math.MaxInt64, labels.MustNewMatcher(labels.MatchEqual, "__name__", "m"))
	require.Equal(t, want, got[a.String()])
	require.Len(t, got[b.String()], 1)
	require.True(t, value.IsStaleNaN(got[b.String()][0].f))
	// Replaying the same data again (a client retry) changes nothing.
	appendFloats(t, db, a, want[990:]...)
	require.NoError(t, db.Close())

	db = open(t, Config{Path: dir})
	defer func() { _ = db.Close() }()
	require.Equal(t, want, queryFloats(t, db, math.MinInt64, math.MaxInt64, labels.MustNewMatcher(labels.MatchEqual, "i", "a"))[a.String()])
}

func TestEvictedChunksAreReadFromDisk(t *testing.T) {
	db := open(t, Config{Path: t.TempDir(), HeadWindow: time.Millisecond})
	defer func() { _ = db.Close() }()
	ls := labels.FromStrings("__name__", "m")
	var want []pt
	for i := int64(0); i < 2000; i++ {
		want = append(want, pt{i * 15000, float64(i % 7)})
	}
	appendFloats(t, db, ls, want...)
	require.NoError(t, db.flush())
	s := db.seriesByRef(1)
	s.mu.Lock()
	inMem := len(s.chunks)
	s.mu.Unlock()
	require.Equal(t, 1, inMem, "only the open chunk stays in memory")
	require.Equal(t, want, queryFloats(t, db, math.MinInt64, math.MaxInt64, labels.MustNewMatcher(labels.MatchEqual, "__name__", "m"))[ls.String()])
	require.Equal(t, want[100:1500], queryFloats(t, db, want[100].t, want[1499].t, labels.MustNewMatcher(labels.MatchEqual, "__name__", "m"))[ls.String()])
}

func TestRetention(t *testing.T) {
	now := time.UnixMilli(100 * 3600 * 1000)
	db := open(t, Config{Path: t.TempDir(), Retention: 10 * time.Hour, Now: func() time.Time { return now }})
	defer func() { _ = db.Close() }()
	old := labels.FromStrings("__name__", "old")
	cur := labels.FromStrings("__name__", "cur")
	h := int64(3600 * 1000)
	appendFloats(t, db, old, pt{95 * h, 1})
	appendFloats(t, db, cur, pt{95 * h, 1}, pt{99 * h, 2})

	app := db.AppenderV2(context.Background())
	_, err := app.Append(0, cur, 0, 80*h, 1, nil, nil, storage.AOptions{})
	require.ErrorIs(t, err, storage.ErrOutOfBounds)
	require.NoError(t, app.Rollback())
	require.NoError(t, db.flush())

	now = now.Add(7 * time.Hour) // cutoff at 97h
	require.NoError(t, db.applyRetention(context.Background()))
	got := queryFloats(t, db, 0, math.MaxInt64, labels.MustNewMatcher(labels.MatchRegexp, "__name__", ".+"))
	require.Equal(t, map[string][]pt{cur.String(): {{99 * h, 2}}}, got)
	q, err := db.Querier(0, math.MaxInt64)
	require.NoError(t, err)
	vals, _, err := q.LabelValues(context.Background(), "__name__", nil)
	require.NoError(t, err)
	require.Equal(t, []string{"cur"}, vals)
	require.NoError(t, q.Close())
}

func TestMatchers(t *testing.T) {
	db := open(t, Config{})
	defer func() { _ = db.Close() }()
	for _, ls := range []labels.Labels{
		labels.FromStrings("__name__", "up", "job", "a", "env", "prod"),
		labels.FromStrings("__name__", "up", "job", "b"),
		labels.FromStrings("__name__", "up", "job", "c", "env", "dev"),
		labels.FromStrings("__name__", "other", "job", "a"),
	} {
		appendFloats(t, db, ls, pt{1, 1})
	}
	count := func(ms ...*labels.Matcher) int { return len(queryFloats(t, db, 0, 10, ms...)) }
	m := labels.MustNewMatcher
	f := func(want int, ms ...*labels.Matcher) {
		t.Helper()
		require.Equal(t, want, count(ms...), "%v", ms)
	}
	f(3, m(labels.MatchEqual, "__name__", "up"))
	f(2, m(labels.MatchEqual, "__name__", "up"), m(labels.MatchNotEqual, "job", "a"))
	f(2, m(labels.MatchEqual, "__name__", "up"), m(labels.MatchRegexp, "job", "a|c"))
	f(1, m(labels.MatchEqual, "__name__", "up"), m(labels.MatchEqual, "env", ""))
	f(2, m(labels.MatchEqual, "__name__", "up"), m(labels.MatchNotEqual, "env", ""))
	f(2, m(labels.MatchEqual, "__name__", "up"), m(labels.MatchNotRegexp, "env", "dev"))
	f(4, m(labels.MatchRegexp, "__name__", ".+"))
	f(2, m(labels.MatchRegexp, "job", "a"))
	f(0, m(labels.MatchEqual, "job", "zzz"))
	f(1, m(labels.MatchRegexp, "env", "p.*"))
}

func TestHistogramsSurviveRestart(t *testing.T) {
	dir := t.TempDir()
	db := open(t, Config{Path: dir})
	ls := labels.FromStrings("__name__", "h")
	hs := tsdbutil.GenerateTestHistograms(50)
	app := db.AppenderV2(context.Background())
	for i, h := range hs {
		_, err := app.Append(0, ls, 0, int64(i)*1000, 0, h, nil, storage.AOptions{})
		require.NoError(t, err)
	}
	require.NoError(t, app.Commit())
	crash(t, db)
	db = open(t, Config{Path: dir})
	defer func() { _ = db.Close() }()
	i := 0
	onlySeries(t, db, labels.MustNewMatcher(labels.MatchEqual, "__name__", "h"), func(it chunkenc.Iterator) {
		for vt := it.Next(); vt != chunkenc.ValNone; vt = it.Next() {
			require.Equal(t, chunkenc.ValHistogram, vt)
			_, h := it.AtHistogram(nil)
			want := hs[i].Copy()
			if i > 0 {
				want.CounterResetHint = histogram.NotCounterReset
			}
			require.Equal(t, want.Count, h.Count)
			require.Equal(t, want.Sum, h.Sum)
			require.Equal(t, want.PositiveBuckets, h.PositiveBuckets)
			i++
		}
	})
	require.Equal(t, len(hs), i)
}

// onlySeries calls fn with the iterator of the one series of db matching
// m, while its querier is open.
func onlySeries(t *testing.T, db *DB, m *labels.Matcher, fn func(it chunkenc.Iterator)) {
	t.Helper()
	q, err := db.Querier(math.MinInt64, math.MaxInt64)
	require.NoError(t, err)
	defer func() { _ = q.Close() }()
	ss := q.Select(context.Background(), false, nil, m)
	require.True(t, ss.Next())
	it := ss.At().Iterator(nil)
	fn(it)
	require.NoError(t, it.Err())
	require.False(t, ss.Next(), "one series")
	require.NoError(t, ss.Err())
}

package transfer

import (
	"context"
	"fmt"
	"math"
	"net"
	"testing"
	"time"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/storage"
	"github.com/stretchr/testify/require"
	"github.com/valyala/fasthttp"

	"github.com/kilnhq/kiln/cluster/ring"
	"github.com/kilnhq/kiln/shard"
)

type topo struct {
	self string
	ring *ring.Ring
}

func (t topo) Self() string      { return t.self }
func (t topo) Ring() *ring.Ring  { return t.ring }
func (t topo) Alive(string) bool { return true }

type node struct {
	m  ring.Member
	db *shard.DB
	tr *Transfer
}

// twoNodes starts two nodes that both own every partition (RF=2).
func twoNodes(t testing.TB, now time.Time) (a, b *node) {
	t.Helper()
	var lns []net.Listener
	var members []ring.Member
	for _, name := range []string{"a", "b"} {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		lns = append(lns, ln)
		members = append(members, ring.Member{Name: name, Addr: ln.Addr().String()})
	}
	r, err := ring.New(members, 2, 1)
	require.NoError(t, err)
	var nodes []*node
	for i, m := range members {
		db, err := shard.Open(shard.Config{MemTableSize: 4 << 20}, nil, nil)
		require.NoError(t, err)
		// The clock runs 30 minutes ahead of the data, past the settle lag.
		tr := New(Config{Retention: 24 * time.Hour, DigestStep: time.Hour, Now: func() time.Time { return now.Add(30 * time.Minute) }}, topo{self: m.Name, ring: r}, db, nil, nil)
		srv := &fasthttp.Server{Handler: tr.Handle, CloseOnShutdown: true}
		go func() { _ = srv.Serve(lns[i]) }()
		t.Cleanup(func() {
			_ = srv.Shutdown()
			_ = db.Close()
		})
		nodes = append(nodes, &node{m: m, db: db, tr: tr})
	}
	return nodes[0], nodes[1]
}

// write appends value v at t for n series of metric name.
func write(t *testing.T, db *shard.DB, name string, n int, ts int64, v float64) {
	t.Helper()
	app := db.AppenderV2(context.Background())
	for i := range n {
		_, err := app.Append(0, labels.FromStrings("__name__", name, "i", fmt.Sprint(i)), 0, ts, v, nil, nil, storage.AppendV2Options{})
		require.NoError(t, err)
	}
	require.NoError(t, app.Commit())
}

// samples returns series -> timestamps -> value of name in db.
func samples(t *testing.T, db *shard.DB, name string) map[string]map[int64]float64 {
	t.Helper()
	q, err := db.Querier(math.MinInt64, math.MaxInt64)
	require.NoError(t, err)
	defer func() { _ = q.Close() }()
	ss := q.Select(context.Background(), false, nil, labels.MustNewMatcher(labels.MatchEqual, "__name__", name))
	out := map[string]map[int64]float64{}
	for ss.Next() {
		s := ss.At()
		m := map[int64]float64{}
		it := s.Iterator(nil)
		for it.Next() != 0 {
			ts, v := it.At()
			m[ts] = v
		}
		require.NoError(t, it.Err())
		out[s.Labels().String()] = m
	}
	require.NoError(t, ss.Err())
	return out
}

func TestFetchCopiesPartition(t *testing.T) {
	now := time.Now()
	a, b := twoNodes(t, now)
	for k := range 10 {
		write(t, a.db, "m", 200, now.Add(-time.Duration(k)*time.Minute).UnixMilli(), float64(k))
	}
	want := samples(t, a.db, "m")
	for p := range shard.NumPartitions {
		_, err := b.tr.Fetch(context.Background(), uint16(p), a.m)
		require.NoError(t, err)
	}
	require.Equal(t, want, samples(t, b.db, "m"))
	// Fetching again is harmless.
	_, err := b.tr.Fetch(context.Background(), shard.PartitionOf(labels.FromStrings("__name__", "m", "i", "0")), a.m)
	require.NoError(t, err)
	require.Equal(t, want, samples(t, b.db, "m"))
}

func TestFetchRefusedByNonOwner(t *testing.T) {
	now := time.Now()
	a, b := twoNodes(t, now)
	// A ring in which b owns nothing: a cannot copy from it.
	r, err := ring.New([]ring.Member{a.m}, 1, 2)
	require.NoError(t, err)
	b.tr.topo = topo{self: "b", ring: r}
	_, err = a.tr.Fetch(context.Background(), 3, b.m)
	require.ErrorIs(t, err, ErrNotOwner)
}

// Replicas that missed different writes converge after each ran a pass.
func TestAntiEntropyConverges(t *testing.T) {
	now := time.Now()
	a, b := twoNodes(t, now)
	for k := range 5 {
		ts := now.Add(-time.Duration(k) * 10 * time.Minute).UnixMilli()
		write(t, a.db, "m", 50, ts, float64(k))
		write(t, b.db, "m", 50, ts, float64(k))
	}
	old := now.Add(-5 * time.Hour).UnixMilli()
	write(t, a.db, "only_a", 3, old, 1)
	write(t, b.db, "only_b", 4, now.UnixMilli(), 2)
	write(t, a.db, "m", 50, now.Add(time.Minute).UnixMilli(), 9) // b missed this one

	sa := a.tr.CheckAll(context.Background())
	sb := b.tr.CheckAll(context.Background())
	t.Logf("pass a: %+v; pass b: %+v", sa, sb)
	require.Positive(t, sa.Differing)
	require.Zero(t, sa.Errors)
	require.Zero(t, sb.Errors)
	for _, name := range []string{"m", "only_a", "only_b"} {
		require.Equal(t, samples(t, a.db, name), samples(t, b.db, name), name)
	}
	require.Len(t, samples(t, a.db, "only_b"), 4)
	require.Len(t, samples(t, b.db, "only_a"), 3)

	// Converged: the next passes find nothing.
	again := a.tr.CheckAll(context.Background())
	require.Zero(t, again.Differing)
}

func TestDigestCodec(t *testing.T) {
	ds := []shard.BucketDigest{{Mint: -5, Maxt: 100, Series: 3, Samples: 40, Hash: math.MaxUint64}, {Mint: 100, Maxt: 200}}
	got, err := decodeDigests(encodeDigests(ds))
	require.NoError(t, err)
	require.Equal(t, ds, got)
	empty, err := decodeDigests(encodeDigests(nil))
	require.NoError(t, err)
	require.Empty(t, empty)
	for _, bad := range [][]byte{nil, {5}, append(encodeDigests(ds), 0), encodeDigests(ds)[:10]} {
		_, err := decodeDigests(bad)
		require.ErrorIs(t, err, ErrBadDigest)
	}
}

func FuzzDecodeDigests(f *testing.F) {
	f.Add(encodeDigests([]shard.BucketDigest{{Mint: 1, Maxt: 2, Series: 3, Samples: 4, Hash: 5}}))
	f.Add([]byte{0})
	f.Fuzz(func(t *testing.T, b []byte) {
		ds, err := decodeDigests(b)
		if err != nil {
			return
		}
		again, err := decodeDigests(encodeDigests(ds))
		require.NoError(t, err)
		require.Equal(t, ds, again)
	})
}

// A node shutting down stops serving exports: a fetch in progress, or asked
// for later, fails instead of holding the node until the stream is done.
func TestStopExportsEndsStreams(t *testing.T) {
	now := time.Now()
	a, b := twoNodes(t, now)
	for k := range 30 {
		write(t, a.db, "m", 500, now.Add(-time.Duration(k)*time.Minute).UnixMilli(), float64(k))
	}
	a.tr.cfg.MoveRate = 16 // the partition's stream takes ~10 s at this rate
	p := shard.PartitionOf(labels.FromStrings("__name__", "m", "i", "0"))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		_, err := b.tr.Fetch(ctx, p, a.m)
		done <- err
	}()
	a.tr.StopExports()
	select {
	case err := <-done:
		require.Error(t, err)
	case <-ctx.Done():
		t.Fatal("the fetch outlived StopExports")
	}
	_, err := b.tr.Fetch(ctx, p, a.m)
	require.Error(t, err, "a fetch after StopExports fails")
}

package fanout

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/exemplar"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/metadata"
	"github.com/prometheus/prometheus/promql"
	"github.com/prometheus/prometheus/storage"
	"github.com/prometheus/prometheus/tsdb/chunkenc"
	"github.com/prometheus/prometheus/tsdb/chunks"
	"github.com/stretchr/testify/require"
	"github.com/valyala/fasthttp"

	"github.com/kilnhq/kiln/cluster/ring"
	"github.com/kilnhq/kiln/shard"
)

// fakeTopo is a Topology whose ring and liveness the test sets.
type fakeTopo struct {
	self string
	mu   sync.Mutex
	r    *ring.Ring
	dead map[string]bool
}

func (f *fakeTopo) Self() string { return f.self }
func (f *fakeTopo) Ring() *ring.Ring {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.r
}

func (f *fakeTopo) Alive(name string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return name == f.self || !f.dead[name]
}

func (f *fakeTopo) setDead(names ...string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.dead = map[string]bool{}
	for _, n := range names {
		f.dead[n] = true
	}
}

type node struct {
	name string
	db   *shard.DB
	topo *fakeTopo
	q    *Queryable
	ln   net.Listener
	srv  *fasthttp.Server
	// noDigestEndpoint makes the node answer select_digest with 404, as a
	// version without it would.
	noDigestEndpoint atomic.Bool
}

type cluster struct {
	nodes []*node
	ref   *shard.DB // one DB holding all data: the expected answers
	ring  *ring.Ring
}

func openDB(t testing.TB) *shard.DB {
	t.Helper()
	db, err := shard.Open(shard.Config{MemTableSize: 4 << 20}, prometheus.NewRegistry(), nil)
	require.NoError(t, err)
	t.Cleanup(func() { _ = db.Close() })
	return db
}

// newCluster starts n nodes, each an in-memory shard.DB and a fasthttp
// server on 127.0.0.1 serving Handle, with a ring of replication factor rf.
func newCluster(t testing.TB, n, rf int, cfg Config) *cluster {
	t.Helper()
	c := &cluster{ref: openDB(t)}
	var members []ring.Member
	for i := range n {
		nd := &node{name: fmt.Sprintf("n%d", i), db: openDB(t)}
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		nd.ln = ln
		members = append(members, ring.Member{Name: nd.name, Addr: ln.Addr().String()})
		c.nodes = append(c.nodes, nd)
	}
	r, err := ring.New(members, rf, 1)
	require.NoError(t, err)
	c.ring = r
	for _, nd := range c.nodes {
		nd.topo = &fakeTopo{self: nd.name, r: r}
		nd.q, err = New(cfg, nd.topo, nd.db, prometheus.NewRegistry(), nil)
		require.NoError(t, err)
		nd.srv = &fasthttp.Server{Handler: func(fctx *fasthttp.RequestCtx) {
			if nd.noDigestEndpoint.Load() && string(fctx.Path()) == pathDigest {
				fctx.Error("not found", fasthttp.StatusNotFound)
				return
			}
			nd.q.Handle(fctx)
		}}
		go func() { _ = nd.srv.Serve(nd.ln) }()
		t.Cleanup(func() { _ = nd.srv.Shutdown() })
	}
	return c
}

// stop takes a node's server down (its peers still think it alive).
func (c *cluster) stop(t testing.TB, i int) {
	require.NoError(t, c.nodes[i].srv.Shutdown())
}

const (
	step    = 15_000
	samples = 240 // one hour
)

// load writes test data to the owners of each series and to the reference.
func (c *cluster) load(t testing.TB, series int) {
	t.Helper()
	ctx := context.Background()
	apps := map[*shard.DB]storage.AppenderV2{c.ref: c.ref.AppenderV2(ctx)}
	for _, nd := range c.nodes {
		apps[nd.db] = nd.db.AppenderV2(ctx)
	}
	byName := map[string]*node{}
	for _, nd := range c.nodes {
		byName[nd.name] = nd
	}
	add := func(ls labels.Labels, i int, f func(j int) float64) {
		targets := []storage.AppenderV2{apps[c.ref]}
		for _, o := range c.ring.Owners(shard.PartitionOf(ls)) {
			targets = append(targets, apps[byName[o.Name].db])
		}
		for _, app := range targets {
			for j := range samples {
				_, err := app.Append(0, ls, 0, int64(j*step), f(j), nil, nil, storage.AOptions{})
				require.NoError(t, err)
			}
		}
	}
	for i := range series {
		ls := labels.FromStrings("__name__", "http_requests_total", "job", fmt.Sprintf("job%d", i%5),
			"instance", fmt.Sprintf("i%d", i), "code", []string{"200", "500"}[i%2])
		add(ls, i, func(j int) float64 { return float64(j * (i + 1)) }) // distinct rates: no topk ties
		for _, le := range []string{"0.1", "0.5", "1", "+Inf"} {
			hl := labels.FromStrings("__name__", "latency_bucket", "job", fmt.Sprintf("job%d", i%5), "instance", fmt.Sprintf("i%d", i), "le", le)
			k := map[string]int{"0.1": 1, "0.5": 2, "1": 3, "+Inf": 4}[le]
			add(hl, i, func(j int) float64 { return float64(j * k * (i%3 + 1)) })
		}
	}
	for _, app := range apps {
		require.NoError(t, app.Commit())
	}
}

type pt struct {
	T int64
	F float64
}

func selectAll(t testing.TB, ctx context.Context, q storage.Queryable, ms ...*labels.Matcher) (map[string][]pt, error) {
	qr, err := q.Querier(0, samples*step)
	require.NoError(t, err)
	defer func() { _ = qr.Close() }()
	ss := qr.Select(ctx, false, nil, ms...)
	out := map[string][]pt{}
	for ss.Next() {
		s := ss.At()
		it := s.Iterator(nil)
		for it.Next() == chunkenc.ValFloat {
			ts, v := it.At()
			out[s.Labels().String()] = append(out[s.Labels().String()], pt{ts, v})
		}
		require.NoError(t, it.Err())
	}
	return out, ss.Err()
}

var allMatcher = labels.MustNewMatcher(labels.MatchRegexp, "__name__", ".+")

var promqlCases = []string{
	`sum by (job) (rate(http_requests_total[5m]))`,
	`histogram_quantile(0.9, sum by (le, job) (rate(latency_bucket[10m])))`,
	`topk(3, rate(http_requests_total{code="500"}[5m]))`,
	`count(http_requests_total)`,
}

func runPromQL(t testing.TB, ctx context.Context, eng *promql.Engine, q storage.Queryable, expr string) (string, error) {
	qry, err := eng.NewRangeQuery(ctx, q, nil, expr, time.UnixMilli(10*60_000), time.UnixMilli(55*60_000), time.Minute)
	require.NoError(t, err)
	defer qry.Close()
	res := qry.Exec(ctx)
	if res.Err != nil {
		return "", res.Err
	}
	m, err := res.Matrix()
	require.NoError(t, err)
	require.NotEmpty(t, m, expr)
	return m.String(), nil
}

func newEngine() *promql.Engine {
	return promql.NewEngine(promql.EngineOpts{MaxSamples: 10_000_000, Timeout: time.Minute, LookbackDelta: 5 * time.Minute})
}

// requireSameAsReference checks that q answers like one DB holding all data.
func requireSameAsReference(t *testing.T, c *cluster, q storage.Queryable) {
	t.Helper()
	ctx := context.Background()
	want, err := selectAll(t, ctx, c.ref, allMatcher)
	require.NoError(t, err)
	got, err := selectAll(t, ctx, q, allMatcher)
	require.NoError(t, err)
	require.Equal(t, len(want), len(got))
	require.Equal(t, want, got) // replicas merged: every sample exactly once

	rq, err := c.ref.Querier(0, samples*step)
	require.NoError(t, err)
	defer func() { _ = rq.Close() }()
	fq, err := q.Querier(0, samples*step)
	require.NoError(t, err)
	defer func() { _ = fq.Close() }()
	wn, _, err := rq.LabelNames(ctx, nil)
	require.NoError(t, err)
	gn, ws, err := fq.LabelNames(ctx, nil)
	require.NoError(t, err)
	require.Empty(t, ws)
	require.Equal(t, wn, gn)
	code500 := labels.MustNewMatcher(labels.MatchEqual, "code", "500")
	wv, _, err := rq.LabelValues(ctx, "instance", nil, code500)
	require.NoError(t, err)
	gv, _, err := fq.LabelValues(ctx, "instance", nil, code500)
	require.NoError(t, err)
	require.Equal(t, wv, gv)
	gv, _, err = fq.LabelValues(ctx, "instance", &storage.LabelHints{Limit: 3})
	require.NoError(t, err)
	require.Len(t, gv, 3)

	eng := newEngine()
	for _, expr := range promqlCases {
		w, err := runPromQL(t, ctx, eng, c.ref, expr)
		require.NoError(t, err)
		g, err := runPromQL(t, ctx, eng, q, expr)
		require.NoError(t, err)
		require.Equal(t, w, g, expr)
	}
}

func TestEveryNodeAnswersLikeOneDB(t *testing.T) {
	for _, tc := range []struct {
		rf          int
		consistency string
	}{{2, "quorum"}, {3, "quorum"}, {2, "one"}, {3, "all"}} {
		t.Run(fmt.Sprintf("rf=%d/%s", tc.rf, tc.consistency), func(t *testing.T) {
			c := newCluster(t, 3, tc.rf, Config{WriteConsistency: tc.consistency, Timeout: 10 * time.Second})
			c.load(t, 60)
			for _, nd := range c.nodes {
				requireSameAsReference(t, c, nd.q)
			}
		})
	}
}

func TestChunkQuerierMergesReplicas(t *testing.T) {
	c := newCluster(t, 3, 2, Config{WriteConsistency: "one", Timeout: 10 * time.Second})
	c.load(t, 30)
	// With W=1 reads ask both replicas: chunk series must be compacted.
	cq, err := c.nodes[0].q.ChunkQuerier(0, samples*step)
	require.NoError(t, err)
	defer func() { _ = cq.Close() }()
	ss := storage.NewSeriesSetFromChunkSeriesSet(cq.Select(context.Background(), true, nil, allMatcher))
	n := 0
	for ss.Next() {
		cnt := 0
		it := ss.At().Iterator(nil)
		for it.Next() != chunkenc.ValNone {
			cnt++
		}
		require.Equal(t, samples, cnt, ss.At().Labels().String())
		n++
	}
	require.NoError(t, ss.Err())
	require.Equal(t, 30*5, n)
}

func TestDeadOwnerWithLiveReplica(t *testing.T) {
	c := newCluster(t, 3, 2, Config{Timeout: 10 * time.Second})
	c.load(t, 40)
	c.nodes[0].topo.setDead("n1") // gossip knows: planned around
	requireSameAsReference(t, c, c.nodes[0].q)
}

func TestPeerFailingMidQueryIsRetried(t *testing.T) {
	c := newCluster(t, 3, 2, Config{Timeout: 10 * time.Second})
	c.load(t, 40)
	c.stop(t, 1) // gossip has not noticed: the request fails, then is retried
	requireSameAsReference(t, c, c.nodes[0].q)
}

func TestPartitionsWithoutLiveOwner(t *testing.T) {
	c := newCluster(t, 3, 2, Config{Timeout: 10 * time.Second})
	c.load(t, 40)
	nd := c.nodes[0]
	nd.topo.setDead("n1", "n2")
	var lost []uint16
	for p := range uint16(shard.NumPartitions) {
		if !c.ring.Owns("n0", p) {
			lost = append(lost, p)
		}
	}
	require.NotEmpty(t, lost)

	ctx := context.Background()
	_, err := selectAll(t, ctx, nd.q, allMatcher)
	require.ErrorIs(t, err, ErrPartitionsUnavailable)
	require.ErrorContains(t, err, fmt.Sprintf("%d of 1024 partitions", len(lost)))
	require.ErrorContains(t, err, fmt.Sprintf("partitions %d, ", lost[0]))
	_, err = runPromQL(t, ctx, newEngine(), nd.q, promqlCases[0])
	require.ErrorIs(t, err, ErrPartitionsUnavailable)

	// Partial response: the data of n0's partitions and a warning.
	pctx := WithPartialResponse(ctx, true)
	got, err := selectAll(t, pctx, nd.q, allMatcher)
	require.NoError(t, err)
	want, err := selectAll(t, ctx, nd.db, allMatcher)
	require.NoError(t, err)
	require.Equal(t, want, got)
	qr, err := nd.q.Querier(0, samples*step)
	require.NoError(t, err)
	defer func() { _ = qr.Close() }()
	ss := qr.Select(pctx, true, nil, allMatcher)
	for ss.Next() {
	}
	require.NoError(t, ss.Err())
	require.Len(t, ss.Warnings(), 1)
	require.ErrorContains(t, ss.Warnings().AsErrors()[0], fmt.Sprintf("%d of 1024 partitions", len(lost)))
	names, ws, err := qr.LabelNames(pctx, nil)
	require.NoError(t, err)
	require.NotEmpty(t, names)
	require.Len(t, ws, 1)

	// The default can be partial too.
	q2, err := New(Config{PartialResponse: true}, nd.topo, nd.db, nil, nil)
	require.NoError(t, err)
	_, err = selectAll(t, ctx, q2, allMatcher)
	require.NoError(t, err)
	_, err = selectAll(t, WithPartialResponse(ctx, false), q2, allMatcher)
	require.ErrorIs(t, err, ErrPartitionsUnavailable)
}

func TestNoRingReadsLocal(t *testing.T) {
	db := openDB(t)
	app := db.AppenderV2(context.Background())
	_, err := app.Append(0, labels.FromStrings("__name__", "up"), 0, 1000, 1, nil, nil, storage.AOptions{})
	require.NoError(t, err)
	require.NoError(t, app.Commit())
	q, err := New(Config{}, &fakeTopo{self: "solo"}, db, nil, nil)
	require.NoError(t, err)
	got, err := selectAll(t, context.Background(), q, allMatcher)
	require.NoError(t, err)
	require.Equal(t, map[string][]pt{`{__name__="up"}`: {{1000, 1}}}, got)
}

func TestMetadataMerged(t *testing.T) {
	c := newCluster(t, 3, 1, Config{Timeout: 10 * time.Second})
	ctx := context.Background()
	for i, nd := range c.nodes {
		app := nd.db.AppenderV2(ctx)
		_, err := app.Append(0, labels.FromStrings("__name__", fmt.Sprintf("m%d", i)), 0, 1000, 1, nil, nil,
			storage.AOptions{Metadata: metadata.Metadata{Type: model.MetricTypeGauge, Help: fmt.Sprintf("help %d", i)}})
		require.NoError(t, err)
		require.NoError(t, app.Commit())
	}
	md, err := c.nodes[0].q.Metadata(ctx, "", 0, 0)
	require.NoError(t, err)
	require.Len(t, md, 3)
	require.Equal(t, []metadata.Metadata{{Type: model.MetricTypeGauge, Help: "help 2"}}, md["m2"])
	md, err = c.nodes[1].q.Metadata(ctx, "", 2, 0)
	require.NoError(t, err)
	require.Len(t, md, 2)

	c.stop(t, 2)
	_, err = c.nodes[0].q.Metadata(ctx, "", 0, 0)
	require.Error(t, err)
	md, err = c.nodes[0].q.Metadata(WithPartialResponse(ctx, true), "", 0, 0)
	require.NoError(t, err)
	require.Len(t, md, 2)
}

// TestNarrowRangeLikeOneDB reads ranges that cut the stored chunks, which
// peers send whole: the samples outside the range must not reach the query.
func TestNarrowRangeLikeOneDB(t *testing.T) {
	c := newCluster(t, 3, 2, Config{Timeout: 10 * time.Second})
	c.load(t, 20)
	ctx := context.Background()
	read := func(q storage.Queryable, mint, maxt int64, hints *storage.SelectHints) map[string][]pt {
		qr, err := q.Querier(mint, maxt)
		require.NoError(t, err)
		defer func() { _ = qr.Close() }()
		ss := qr.Select(ctx, true, hints, allMatcher)
		out := map[string][]pt{}
		var it chunkenc.Iterator
		for ss.Next() {
			s := ss.At()
			it = s.Iterator(it)
			for it.Next() == chunkenc.ValFloat {
				ts, v := it.At()
				out[s.Labels().String()] = append(out[s.Labels().String()], pt{ts, v})
			}
			require.NoError(t, it.Err())
		}
		require.NoError(t, ss.Err())
		return out
	}
	for _, tc := range []struct {
		mint, maxt int64
		hints      *storage.SelectHints
	}{
		{100 * step, 120 * step, nil},
		{100*step + 1, 120*step - 1, nil},
		{0, samples * step, &storage.SelectHints{Start: 30 * step, End: 31 * step}},
		{50 * step, 200 * step, &storage.SelectHints{Start: 10 * step, End: 60 * step}},
		{0, samples * step, &storage.SelectHints{Start: 7*step + 3, End: 7*step + 3}}, // between samples
	} {
		want := read(c.ref, tc.mint, tc.maxt, tc.hints)
		for _, nd := range c.nodes {
			require.Equal(t, want, read(nd.q, tc.mint, tc.maxt, tc.hints), "%s [%d, %d] %+v", nd.name, tc.mint, tc.maxt, tc.hints)
		}
	}
}

// TestChainIteratorClips checks Next and Seek on chunks that extend past
// the range on both sides.
func TestChainIteratorClips(t *testing.T) {
	var metas []chunks.Meta
	for _, span := range [][2]int64{{0, 100}, {110, 200}, {210, 300}} {
		c := chunkenc.NewXORChunk()
		app, err := c.Appender()
		require.NoError(t, err)
		for ts := span[0]; ts <= span[1]; ts += 10 {
			app.Append(0, ts, float64(ts))
		}
		metas = append(metas, chunks.Meta{Chunk: c, MinTime: span[0], MaxTime: span[1]})
	}
	var buf bytes.Buffer
	fw := &frameWriter{w: &buf}
	require.NoError(t, fw.series(labels.FromStrings("a", "b"), storage.NewListChunkSeriesIterator(metas...)))
	f, err := newFrameReader(buf.Bytes()).next()
	require.NoError(t, err)
	s := &remoteSeries{chunks: f.chunks, mint: 35, maxt: 215}
	it := s.Iterator(nil)
	var got []int64
	for it.Next() == chunkenc.ValFloat {
		got = append(got, it.AtT())
	}
	require.NoError(t, it.Err())
	want := []int64{40, 50, 60, 70, 80, 90, 100, 110, 120, 130, 140, 150, 160, 170, 180, 190, 200, 210}
	require.Equal(t, want, got)
	require.Equal(t, chunkenc.ValNone, it.Next())

	it = s.Iterator(it)
	require.Equal(t, chunkenc.ValFloat, it.Seek(5))
	require.Equal(t, int64(40), it.AtT())
	require.Equal(t, chunkenc.ValFloat, it.Seek(20)) // behind: stays
	require.Equal(t, int64(40), it.AtT())
	require.Equal(t, chunkenc.ValFloat, it.Seek(105))
	require.Equal(t, int64(110), it.AtT())
	require.Equal(t, chunkenc.ValFloat, it.Next())
	require.Equal(t, int64(120), it.AtT())
	require.Equal(t, chunkenc.ValFloat, it.Seek(205))
	require.Equal(t, int64(210), it.AtT())
	require.Equal(t, chunkenc.ValNone, it.Next())
	require.Equal(t, chunkenc.ValNone, it.Seek(0))

	it = s.Iterator(it)
	require.Equal(t, chunkenc.ValNone, it.Seek(216))
	it = (&remoteSeries{chunks: f.chunks, mint: 101, maxt: 109}).Iterator(it)
	require.Equal(t, chunkenc.ValNone, it.Next())
}

// Reading fewer replicas than the read quorum answers with what is there
// and says so: R + W > RF no longer holds for those partitions.
func TestFewerReplicasThanQuorumWarns(t *testing.T) {
	c := newCluster(t, 3, 3, Config{Timeout: 10 * time.Second})
	c.load(t, 20)
	nd := c.nodes[0]
	qr, err := nd.q.Querier(0, samples*step)
	require.NoError(t, err)
	defer func() { _ = qr.Close() }()
	ss := qr.Select(context.Background(), true, nil, allMatcher)
	for ss.Next() {
	}
	require.NoError(t, ss.Err())
	require.Empty(t, ss.Warnings(), "all replicas alive: read quorum met")

	nd.topo.setDead("n1", "n2")
	ss = qr.Select(context.Background(), true, nil, allMatcher)
	n := 0
	for ss.Next() {
		n++
	}
	require.NoError(t, ss.Err())
	require.Positive(t, n, "the data this node holds is answered")
	require.Len(t, ss.Warnings(), 1)
	require.ErrorContains(t, ss.Warnings().AsErrors()[0], "1024 of 1024 partitions were read from fewer live replicas than the read quorum")
}

func TestExemplarsMerged(t *testing.T) {
	c := newCluster(t, 3, 2, Config{Timeout: 10 * time.Second})
	ctx := context.Background()
	ex := func(trace string, ts int64) exemplar.Exemplar {
		return exemplar.Exemplar{Labels: labels.FromStrings("trace_id", trace), Value: float64(ts), Ts: ts, HasTs: true}
	}
	lsA := labels.FromStrings("__name__", "req", "i", "a")
	lsB := labels.FromStrings("__name__", "req", "i", "b")
	add := func(nd *node, ls labels.Labels, es ...exemplar.Exemplar) {
		app := nd.db.AppenderV2(ctx)
		_, err := app.Append(0, ls, 0, es[0].Ts, 1, nil, nil, storage.AOptions{Exemplars: es})
		require.NoError(t, err)
		require.NoError(t, app.Commit())
	}
	// a's exemplar at 1000 is on two replicas; each node holds others.
	add(c.nodes[0], lsA, ex("t1", 1000))
	add(c.nodes[1], lsA, ex("t1", 1000))
	add(c.nodes[1], lsA, ex("t2", 2000))
	add(c.nodes[2], lsB, ex("t3", 1500))
	add(c.nodes[2], labels.FromStrings("__name__", "other"), ex("t4", 1500))

	want := []exemplar.QueryResult{
		{SeriesLabels: lsA, Exemplars: []exemplar.Exemplar{ex("t1", 1000), ex("t2", 2000)}},
		{SeriesLabels: lsB, Exemplars: []exemplar.Exemplar{ex("t3", 1500)}},
	}
	m := []*labels.Matcher{labels.MustNewMatcher(labels.MatchEqual, "__name__", "req")}
	for _, nd := range c.nodes {
		eq, err := nd.q.ExemplarQuerier(ctx)
		require.NoError(t, err)
		got, err := eq.Select(0, 10000, m)
		require.NoError(t, err)
		require.Equal(t, want, got, "through %s", nd.name)
	}
	// Two matcher sets, and a time range that leaves t2 out.
	eq, err := c.nodes[0].q.ExemplarQuerier(ctx)
	require.NoError(t, err)
	got, err := eq.Select(0, 1800, []*labels.Matcher{labels.MustNewMatcher(labels.MatchEqual, "i", "b")}, []*labels.Matcher{labels.MustNewMatcher(labels.MatchEqual, "__name__", "other")})
	require.NoError(t, err)
	require.Len(t, got, 2)
	require.Equal(t, "other", got[0].SeriesLabels.Get("__name__"))
	require.Equal(t, lsB, got[1].SeriesLabels)

	c.stop(t, 2)
	_, err = eq.Select(0, 10000, m)
	require.Error(t, err)
	eq, err = c.nodes[0].q.ExemplarQuerier(WithPartialResponse(ctx, true))
	require.NoError(t, err)
	got, err = eq.Select(0, 10000, m)
	require.NoError(t, err)
	require.Equal(t, want[:1], got)
}

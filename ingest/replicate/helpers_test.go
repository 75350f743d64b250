package replicate

import (
	"context"
	"fmt"
	"math"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/storage"
	"github.com/prometheus/prometheus/tsdb/chunkenc"
	"github.com/stretchr/testify/require"
	"github.com/valyala/fasthttp"

	"github.com/kilnhq/kiln/cluster/ring"
	"github.com/kilnhq/kiln/shard"
)

// cluster is a shared view of liveness and the ring for the test nodes.
type cluster struct {
	mu   sync.Mutex
	ring *ring.Ring
	dead map[string]bool
}

func (c *cluster) setDead(name string, dead bool) {
	c.mu.Lock()
	c.dead[name] = dead
	c.mu.Unlock()
}

// topo is one node's Topology.
type topo struct {
	c    *cluster
	self string
}

func (t topo) Self() string { return t.self }
func (t topo) Ring() *ring.Ring {
	t.c.mu.Lock()
	defer t.c.mu.Unlock()
	return t.c.ring
}
func (t topo) Alive(name string) bool {
	t.c.mu.Lock()
	defer t.c.mu.Unlock()
	return name == t.self || !t.c.dead[name]
}

// node is a Writer over an in-memory shard, served on 127.0.0.1.
type node struct {
	name string
	addr string
	db   *shard.DB
	w    atomic.Pointer[Writer]
	down atomic.Bool // answers 503, as a node that is gone would fail
	hold chan struct{}
	srv  *fasthttp.Server
}

func (n *node) writer() *Writer { return n.w.Load() }

func startNode(t testing.TB, name string, cfg Config, c *cluster) *node {
	t.Helper()
	db, err := shard.Open(shard.Config{}, nil, nil)
	require.NoError(t, err)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	n := &node{name: name, addr: ln.Addr().String(), db: db}
	n.srv = &fasthttp.Server{Handler: func(ctx *fasthttp.RequestCtx) {
		if n.down.Load() {
			ctx.Error("down", fasthttp.StatusServiceUnavailable)
			return
		}
		if h := n.hold; h != nil {
			<-h
		}
		if string(ctx.Path()) == WritePath {
			n.writer().Handle(ctx)
			return
		}
		ctx.Error("not found", fasthttp.StatusNotFound)
	}}
	go func() { _ = n.srv.Serve(ln) }()
	n.restart(t, cfg, c)
	t.Cleanup(func() {
		_ = n.srv.Shutdown()
		_ = n.writer().Close()
		_ = db.Close()
	})
	return n
}

// restart replaces the node's Writer (tables, caches and memory hints are
// lost; hints in HintsDir are not).
func (n *node) restart(t testing.TB, cfg Config, c *cluster) {
	t.Helper()
	w, err := New(cfg, topo{c: c, self: n.name}, n.db, nil, nil)
	require.NoError(t, err)
	if old := n.w.Swap(w); old != nil {
		_ = old.Close()
	}
}

// threeNodes starts three nodes with a ring of rf.
func threeNodes(t testing.TB, rf int, cfg Config) (*cluster, []*node) {
	t.Helper()
	c := &cluster{dead: map[string]bool{}}
	var nodes []*node
	var members []ring.Member
	for _, name := range []string{"a", "b", "c"} {
		n := startNode(t, name, cfg, c)
		nodes = append(nodes, n)
		members = append(members, ring.Member{Name: name, Addr: n.addr})
	}
	r, err := ring.New(members, rf, 1)
	require.NoError(t, err)
	c.mu.Lock()
	c.ring = r
	c.mu.Unlock()
	return c, nodes
}

func testSeries(i int) labels.Labels {
	return labels.FromStrings("__name__", "http_requests_total", "job", "api",
		"instance", fmt.Sprintf("10.0.%d.%d:9100", i/250, i%250), "pod", fmt.Sprintf("api-%d", i%97),
		"method", []string{"GET", "POST"}[i%2], "status", []string{"200", "500"}[i%7/6])
}

// writeSeries appends n series with one sample each at t through app.
func writeSeries(t *testing.T, app storage.AppenderV2, n int, ts int64, val func(i int) float64) {
	t.Helper()
	for i := range n {
		_, err := app.Append(0, testSeries(i), 0, ts, val(i), nil, nil, storage.AppendV2Options{})
		require.NoError(t, err)
	}
}

// samples returns every float sample in db as series -> t -> v.
func samples(t *testing.T, db *shard.DB) map[string]map[int64]float64 {
	t.Helper()
	q, err := db.Querier(math.MinInt64, math.MaxInt64)
	require.NoError(t, err)
	defer func() { _ = q.Close() }()
	ss := q.Select(context.Background(), false, nil, labels.MustNewMatcher(labels.MatchRegexp, "__name__", ".+"))
	out := map[string]map[int64]float64{}
	var it chunkenc.Iterator
	for ss.Next() {
		s := ss.At()
		m := map[int64]float64{}
		it = s.Iterator(it)
		for vt := it.Next(); vt != chunkenc.ValNone; vt = it.Next() {
			if vt == chunkenc.ValFloat {
				tt, v := it.At()
				m[tt] = v
			} else {
				m[it.AtT()] = math.NaN() // histograms: presence only
			}
		}
		require.NoError(t, it.Err())
		out[s.Labels().String()] = m
	}
	require.NoError(t, ss.Err())
	return out
}

func fastCfg() Config {
	return Config{Timeout: 2 * time.Second, replayInterval: 20 * time.Millisecond}
}

package test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/prometheus/promql/parser"
	"github.com/prometheus/prometheus/promql/promqltest"
	"github.com/prometheus/prometheus/storage"
	"github.com/stretchr/testify/require"
	"github.com/valyala/fasthttp"

	"github.com/kilnhq/kiln/cluster/ring"
	"github.com/kilnhq/kiln/ingest/replicate"
	"github.com/kilnhq/kiln/query/conformance"
	"github.com/kilnhq/kiln/query/fanout"
	"github.com/kilnhq/kiln/query/parallel"
	"github.com/kilnhq/kiln/shard"
)

// staticTopology is a fixed ring with every member alive: the cluster as
// the write and read paths see it once gossip and Raft have settled.
type staticTopology struct {
	self string
	ring *ring.Ring
}

func (s staticTopology) Self() string      { return s.self }
func (s staticTopology) Ring() *ring.Ring  { return s.ring }
func (s staticTopology) Alive(string) bool { return true }

// inprocNode is one cluster node in this test binary: storage, the
// replicated write path and the fan-out read path behind an HTTP server.
type inprocNode struct {
	db     *shard.DB
	writer *replicate.Writer
	reads  *fanout.Queryable
	srv    *fasthttp.Server
}

// inprocCluster is n nodes at replication factor rf, seen through one node
// for writes and another for reads: a storage.Storage for promqltest.
type inprocCluster struct {
	nodes       []*inprocNode
	write, read int
}

func newInprocCluster(t testing.TB, n, rf int) *inprocCluster {
	lns := make([]net.Listener, n)
	members := make([]ring.Member, n)
	for i := range lns {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		lns[i] = ln
		members[i] = ring.Member{Name: fmt.Sprintf("node-%d", i), Addr: ln.Addr().String()}
	}
	r, err := ring.New(members, rf, 1)
	require.NoError(t, err)
	c := &inprocCluster{write: 0, read: 1 % n}
	for i := range lns {
		topo := staticTopology{self: members[i].Name, ring: r}
		db, err := shard.Open(shard.Config{MemTableSize: 4 << 20}, nil, nil)
		require.NoError(t, err)
		w, err := replicate.New(replicate.Config{}, topo, db, nil, nil)
		require.NoError(t, err)
		q, err := fanout.New(fanout.Config{}, topo, db, nil, nil)
		require.NoError(t, err)
		nd := &inprocNode{db: db, writer: w, reads: q}
		nd.srv = &fasthttp.Server{CloseOnShutdown: true, Handler: func(ctx *fasthttp.RequestCtx) {
			if string(ctx.Path()) == replicate.WritePath {
				w.Handle(ctx)
				return
			}
			q.Handle(ctx)
		}}
		go func(ln net.Listener) { _ = nd.srv.Serve(ln) }(lns[i])
		c.nodes = append(c.nodes, nd)
	}
	return c
}

func (c *inprocCluster) Querier(mint, maxt int64) (storage.Querier, error) {
	return c.nodes[c.read].reads.Querier(mint, maxt)
}

func (c *inprocCluster) ChunkQuerier(mint, maxt int64) (storage.ChunkQuerier, error) {
	return c.nodes[c.read].reads.ChunkQuerier(mint, maxt)
}

func (c *inprocCluster) AppenderV2(ctx context.Context) storage.AppenderV2 {
	return c.nodes[c.write].writer.AppenderV2(ctx)
}

// Appender is the deprecated v1 interface; promqltest loads through
// AppenderV2, and Kiln's write path is v2 only.
func (c *inprocCluster) Appender(context.Context) storage.Appender {
	panic("the cluster write path is AppenderV2 only")
}

func (c *inprocCluster) StartTime() (int64, error) { return c.nodes[c.read].db.StartTime() }

// Close stops the nodes. fasthttp's Shutdown polls every 100 ms until
// keep-alive connections are gone; the evals are done by now, so it runs in
// the background rather than adding 100 ms to each of the ~600 groups.
func (c *inprocCluster) Close() error {
	var errs []error
	for _, nd := range c.nodes {
		go func() { _ = nd.srv.Shutdown() }()
		errs = append(errs, nd.writer.Close(), nd.db.Close())
	}
	return errors.Join(errs...)
}

// TestClusterPromQLConformance runs every eval of Prometheus's PromQL test
// data against a three-node cluster: data written through node 0's
// replicated write path, queries answered by node 1's fan-out over all
// three. At RF=2 node 1 holds about two thirds of the partitions and reads
// the rest from its peers; at RF=3 it reads two replicas of each partition
// and merges them. At RF=2 the queries go through the slicing engine, as
// the API's do, so each slice's reads are planned over the peers too.
func TestClusterPromQLConformance(t *testing.T) {
	if testing.Short() {
		t.Skip("conformance suite skipped in -short mode")
	}
	for _, rf := range []int{2, 3} {
		t.Run(fmt.Sprintf("RF=%d", rf), func(t *testing.T) {
			open := func(t testing.TB) storage.Storage { return newInprocCluster(t, 3, rf) }
			if rf == 3 {
				conformance.Run(t, open, nil)
				return
			}
			outer := promqltest.NewTestEngine(t, false, 0, promqltest.DefaultMaxSamplesPerQuery)
			sub := promqltest.NewTestEngine(t, false, 0, promqltest.DefaultMaxSamplesPerQuery)
			reg := prometheus.NewRegistry()
			conformance.RunEngine(t, open, nil, parallel.New(parallel.Config{Slices: 2}, outer, sub, parser.NewParser(promqltest.TestParserOpts), reg, nil))
			mfs, err := reg.Gather()
			require.NoError(t, err)
			require.Equal(t, "kiln_query_slice_fallbacks_total", mfs[0].GetName())
			require.Equal(t, "kiln_query_sliced_total", mfs[1].GetName())
			require.Greater(t, mfs[1].GetMetric()[0].GetCounter().GetValue(), 1000.0)
		})
	}
}

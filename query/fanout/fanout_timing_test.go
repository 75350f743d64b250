package fanout

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/prometheus/promql"
	"github.com/prometheus/prometheus/storage"
	"github.com/stretchr/testify/require"

	"github.com/kilnhq/kiln/cluster/ring"
)

// BenchmarkQueryNonOwner compares a PromQL range query answered by the local
// shard with the same query through a node that owns none of the data, so
// that every series crosses the network.
func BenchmarkQueryNonOwner(b *testing.B) {
	c := newCluster(b, 2, 1, Config{Timeout: 10_000_000_000})
	// A ring of n1 alone: n0 is a member of no assignment and reads all
	// from n1. The reference DB holds the same data locally.
	c.setOwners(b, 1, c.nodes[1:])
	c.load(b, 400)
	benchQueries(b, []namedQueryable{{"local", c.nodes[1].db}, {"non-owner", c.nodes[0].q}, {"local-again", c.nodes[1].db}})
}

// setOwners makes a ring of owners alone at replication factor rf, for
// every node of c.
func (c *cluster) setOwners(b testing.TB, rf int, owners []*node) {
	var ms []ring.Member
	for _, nd := range owners {
		ms = append(ms, ring.Member{Name: nd.name, Addr: nd.ln.Addr().String()})
	}
	r, err := ring.New(ms, rf, 2)
	require.NoError(b, err)
	c.ring = r
	for _, nd := range c.nodes {
		nd.topo.mu.Lock()
		nd.topo.r = r
		nd.topo.mu.Unlock()
	}
}

type namedQueryable struct {
	name string
	q    storage.Queryable
}

// benchQueries runs the first PromQL case on each queryable.
func benchQueries(b *testing.B, qs []namedQueryable) {
	ctx := context.Background()
	eng := newEngine()
	for _, bc := range qs {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				_, err := runPromQL(b, ctx, eng, bc.q, promqlCases[0])
				require.NoError(b, err)
			}
		})
	}
}

// BenchmarkQueryNonOwnerQuorum is BenchmarkQueryNonOwner at RF=3 with
// quorum writes, so a query reads two replicas of every partition (R = 2)
// from the three owners, through a fourth node that owns nothing, and
// through an owner (its own replica and one peer's).
func BenchmarkQueryNonOwnerQuorum(b *testing.B) {
	c := newCluster(b, 4, 3, Config{Timeout: 10_000_000_000})
	c.setOwners(b, 3, c.nodes[1:])
	c.load(b, 400)
	benchQueries(b, []namedQueryable{{"local", c.nodes[1].db}, {"non-owner-r2", c.nodes[0].q}, {"owner-r2", c.nodes[1].q}, {"owner-r2-whole", wholeReads(c.nodes[2])}})
}

// wholeReads is nd's Queryable with digest-first reads off.
func wholeReads(nd *node) *Queryable {
	nd.q.noDigests = true
	return nd.q
}

// BenchmarkInstantQueryOwnerQuorum is a dashboard refresh: an instant rate
// over the last 5 minutes of one-hour chunks, at RF=3 with quorum writes,
// on an owner's own storage and through an owner (its replica and a
// peer's) and a node that owns nothing. Seeking into the end of a chunk
// is where in-memory chunks' decoder checkpoints pay.
func BenchmarkInstantQueryOwnerQuorum(b *testing.B) {
	c := newCluster(b, 4, 3, Config{Timeout: 10_000_000_000})
	c.setOwners(b, 3, c.nodes[1:])
	c.load(b, 2000)
	ctx := context.Background()
	eng := newEngine()
	at := time.UnixMilli((samples - 1) * step)
	for _, bc := range []namedQueryable{{"local", c.nodes[1].db}, {"owner-r2", c.nodes[1].q}, {"owner-r2-whole", wholeReads(c.nodes[2])}, {"non-owner-r2", c.nodes[0].q}} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				qry, err := eng.NewInstantQuery(ctx, bc.q, nil, `sum by (job) (rate(http_requests_total[5m]))`, at)
				require.NoError(b, err)
				res := qry.Exec(ctx)
				require.NoError(b, res.Err)
				require.Len(b, res.Value.(promql.Vector), 5)
				qry.Close()
			}
		})
	}
}

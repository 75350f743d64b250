package test

import (
	"context"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/stretchr/testify/require"

	"github.com/kilnhq/kiln/shard"
)

// elasticFlags make membership changes fast enough for tests.
var elasticFlags = []string{"--cluster.dead-node-timeout=6s", "--cluster.leave-timeout=60s"}

// addNode starts node i of a running cluster, joining through first.
func addNode(t *testing.T, base string, i, rf int, first *clusterNode, extra ...string) *clusterNode {
	t.Helper()
	nd := newClusterNode(t, base, i)
	nd.proc = spawnKiln(t, nd.dir, freeAddr(t), nd.args(rf, []*clusterNode{first}, extra...)...)
	nd.waitReady()
	return nd
}

// waitSettled waits until nodes agree that no partition moves and none is
// under-replicated, with want members; it returns the min and max settled
// partitions per member.
func waitSettled(t *testing.T, nodes []*clusterNode, want int) (lo, hi int) {
	t.Helper()
	require.Eventually(t, func() bool {
		for _, nd := range nodes {
			st, err := nd.status()
			if err != nil || st.Moving != 0 || st.UnderReplicated != 0 {
				return false
			}
			in := 0
			lo, hi = math.MaxInt, 0
			for _, m := range st.Members {
				if m.InRing && !m.Removed {
					in++
					lo, hi = min(lo, m.Settled), max(hi, m.Settled)
				}
			}
			if in != want {
				return false
			}
		}
		return true
	}, 120*time.Second, 200*time.Millisecond, "cluster did not settle with %d members", want)
	return lo, hi
}

// TestClusterGrowsUnderLoad grows 3 -> 4 -> 5 nodes at RF=3 while
// remote-write load runs: partitions spread evenly after each join, the
// data loaded before is answered identically before, during and after, and
// no write fails.
func TestClusterGrowsUnderLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("process test skipped in -short mode")
	}
	base := t.TempDir()
	nodes := startCluster(t, 3, 3, elasticFlags...)
	start := time.Now().Add(-time.Hour).Truncate(time.Minute)
	data := dataset(start)
	writeAll(t, nodes[0].addr, data)
	end := start.Add(time.Hour)
	probe := url.Values{"query": {`sum by (job, status) (rate(http_requests_total[5m]))`}, "start": {fmtTime(start)}, "end": {fmtTime(end)}, "step": {"60"}}
	pr := apiGet(t, nodes[0].addr, "/api/v1/query_range", probe)
	require.Equal(t, "success", pr.Status, pr.Error)
	want := canonical(t, pr.Data)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// Rounds 100 ms apart: the load runs for minutes without reaching
	// timestamps in the future.
	w := newLoadWriter("grow", 30, time.Now().Add(-2*time.Hour).Truncate(time.Second))
	w.step = 100 * time.Millisecond
	// Addresses copied now: the test appends to nodes while the load runs.
	loadAddrs := []string{nodes[0].addr, nodes[1].addr}
	live := func() []string { return loadAddrs }
	go w.run(ctx, live, 1_000_000)

	checkAll := func(when string) {
		for _, nd := range nodes {
			pr := apiGet(t, nd.addr, "/api/v1/query_range", probe)
			require.Equal(t, "success", pr.Status, "%s on %s: %s", when, nd.name, pr.Error)
			require.Equal(t, want, canonical(t, pr.Data), "%s on %s", when, nd.name)
		}
	}
	checkAll("before")
	for i := 3; i < 5; i++ {
		nd := addNode(t, base, i, 3, nodes[0], elasticFlags...)
		nodes = append(nodes, nd)
		// During the move every node answers completely.
		for k := 0; k < 5; k++ {
			checkAll(fmt.Sprintf("during join of %s", nd.name))
			time.Sleep(200 * time.Millisecond)
		}
		lo, hi := waitSettled(t, nodes, len(nodes))
		t.Logf("%d nodes, RF=3: settled partitions per node min %d max %d (ideal %.0f)", len(nodes), lo, hi, float64(3*shard.NumPartitions)/float64(len(nodes)))
		require.LessOrEqual(t, float64(hi)/float64(lo), 1.25, "even spread")
		checkAll(fmt.Sprintf("after join of %s", nd.name))
	}
	cancel()
	<-w.stopped
	require.Zero(t, w.fails.Load(), "writes failed while the cluster grew: %v", w.lastErr.Load())
	for _, nd := range nodes {
		w.checkAcked(t, nd.addr)
	}
}

// TestClusterShrinksBySIGTERM stops one of five nodes with SIGTERM (and
// --cluster.leave-on-shutdown): it hands its partitions over first, so no partition is under-replicated at
// any time after it exits.
func TestClusterShrinksBySIGTERM(t *testing.T) {
	if testing.Short() {
		t.Skip("process test skipped in -short mode")
	}
	nodes := startCluster(t, 5, 3, append([]string{"--cluster.leave-on-shutdown=true"}, elasticFlags...)...)
	waitSettled(t, nodes, 5)
	start := time.Now().Add(-time.Hour).Truncate(time.Minute)
	writeAll(t, nodes[0].addr, dataset(start)[:60])

	leaving := nodes[4]
	// The hand-over may take up to --cluster.leave-timeout on a loaded
	// machine; the exit must come after it, not at a test's guess.
	leaving.stopWithin(70 * time.Second)
	require.Contains(t, leaving.log.String(), "left the cluster", "the node handed over before exiting")
	rest := nodes[:4]
	// From the moment it is gone, every partition has RF copies.
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		for _, nd := range rest {
			st, err := nd.status()
			require.NoError(t, err)
			require.Zero(t, st.UnderReplicated, "%s sees under-replicated partitions after the leave", nd.name)
		}
		time.Sleep(100 * time.Millisecond)
	}
	waitSettled(t, rest, 4)
}

// TestClusterReReplicatesDeadNode kills one of four nodes and never restarts
// it: after the dead-node timeout its partitions are re-replicated from the
// survivors, under-replication returns to 0 and every acknowledged sample
// is answered by each survivor.
func TestClusterReReplicatesDeadNode(t *testing.T) {
	if testing.Short() {
		t.Skip("process test skipped in -short mode")
	}
	nodes := startCluster(t, 4, 3, elasticFlags...)
	waitSettled(t, nodes, 4)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	w := newLoadWriter("dead", 30, time.Now().Add(-2*time.Hour).Truncate(time.Second))
	w.step = 100 * time.Millisecond
	first := nodes[0].addr
	go w.run(ctx, func() []string { return []string{first} }, 1_000_000)
	require.Eventually(t, func() bool { return w.lastOK.Load() != 0 }, 30*time.Second, 10*time.Millisecond)

	nodes[3].kill()
	killed := time.Now()
	require.Eventually(t, func() bool {
		st, err := nodes[0].status()
		return err == nil && st.UnderReplicated > 0
	}, 30*time.Second, 100*time.Millisecond, "the dead node's partitions are under-replicated at first")
	lo, hi := waitSettled(t, nodes[:3], 3)
	t.Logf("re-replicated %v after the kill (dead-node timeout 6s); settled per node %d..%d", time.Since(killed).Round(time.Millisecond), lo, hi)
	cancel()
	<-w.stopped
	for _, nd := range nodes[:3] {
		w.checkAcked(t, nd.addr)
	}
}

// TestClusterAntiEntropyRepairs deletes one replica's copy of a partition on
// disk while its node is stopped; after the restart anti-entropy restores
// it, so that node alone answers completely.
func TestClusterAntiEntropyRepairs(t *testing.T) {
	if testing.Short() {
		t.Skip("process test skipped in -short mode")
	}
	flags := []string{"--cluster.anti-entropy-interval=2s", "--cluster.leave-on-shutdown=false"}
	nodes := startCluster(t, 3, 3, flags...)
	// Older than anti-entropy's settle lag (15m), so every bucket counts.
	start := time.Now().Add(-2 * time.Hour).Truncate(time.Minute)
	data := dataset(start)
	writeAll(t, nodes[0].addr, data)

	victim := nodes[2]
	victim.stop()
	// Delete the partition of one series (and so every series sharing it)
	// from the stopped node's storage.
	ls := labels.FromStrings("__name__", "up", "instance", "host-1:9100", "job", "api")
	p := shard.PartitionOf(ls)
	db, err := shard.Open(shard.Config{Path: filepath.Join(victim.dir, "shard")}, nil, nil)
	require.NoError(t, err)
	require.NoError(t, db.DropPartition(context.Background(), p))
	require.NoError(t, db.Close())

	victim.restart()
	victim.waitReady()
	// The repair shows in the victim's own anti-entropy metrics.
	require.Eventually(t, func() bool {
		return metricValue(t, victim.addr, "kiln_cluster_antientropy_repairs_total") > 0
	}, 60*time.Second, 250*time.Millisecond, "anti-entropy repaired nothing")
	require.Eventually(t, func() bool {
		return metricValue(t, victim.addr, "kiln_cluster_antientropy_passes_total") >= 2
	}, 60*time.Second, 250*time.Millisecond)

	q := url.Values{"query": {`{__name__=~".+"}`}, "start": {fmtTime(start)}, "end": {fmtTime(start.Add(time.Hour))}, "step": {"15"}, "partial_response": {"false"}}
	pr := apiGet(t, nodes[0].addr, "/api/v1/query_range", q)
	require.Equal(t, "success", pr.Status, pr.Error)
	want := canonical(t, pr.Data)
	nodes[0].kill()
	nodes[1].kill()
	pr = apiGet(t, victim.addr, "/api/v1/query_range", q)
	require.Equal(t, "success", pr.Status, pr.Error)
	require.Equal(t, want, canonical(t, pr.Data), "the node alone answers everything, the deleted partition included")
	q.Set("query", `up{instance="host-1:9100",job="api"}`)
	pr = apiGet(t, victim.addr, "/api/v1/query_range", q)
	require.Len(t, decodeMatrix(t, pr.Data), 1, "the deleted partition is back")
}

// metricValue sums the samples of a metric family on a node's /metrics.
func metricValue(t *testing.T, addr, name string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	require.NoError(t, err)
	defer func() { _ = resp.Body.Close() }()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	sum := 0.0
	for _, line := range strings.Split(string(body), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 || (f[0] != name && !strings.HasPrefix(f[0], name+"{")) {
			continue
		}
		if v, err := strconv.ParseFloat(f[len(f)-1], 64); err == nil {
			sum += v
		}
	}
	return sum
}

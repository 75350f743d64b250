package test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/prometheus/prompb"
	"github.com/stretchr/testify/require"
)

// dataset is 1 h at 15 s of a small dashboard-shaped data set: counters per
// job/instance/status, gauges and classic histogram buckets.
func dataset(base time.Time) [][]prompb.TimeSeries {
	const steps = 240
	var batches [][]prompb.TimeSeries
	for s := 0; s < steps; s++ {
		ts := base.Add(time.Duration(s) * 15 * time.Second).UnixMilli()
		var batch []prompb.TimeSeries
		add := func(v float64, kv ...string) {
			ls := make([]prompb.Label, 0, len(kv)/2)
			for i := 0; i < len(kv); i += 2 {
				ls = append(ls, prompb.Label{Name: kv[i], Value: kv[i+1]})
			}
			batch = append(batch, prompb.TimeSeries{Labels: ls, Samples: []prompb.Sample{{Timestamp: ts, Value: v}}})
		}
		for j, job := range []string{"api", "web", "db"} {
			for inst := 0; inst < 6; inst++ {
				in := fmt.Sprintf("host-%d:9100", inst)
				for _, code := range []string{"200", "404", "500"} {
					add(float64(s*(inst+1)*len(code)+j), "__name__", "http_requests_total", "instance", in, "job", job, "status", code)
				}
				add(float64(1e6+((s*7919+inst*104729+j*15485863)%100000)), "__name__", "memory_bytes", "instance", in, "job", job)
				add(1, "__name__", "up", "instance", in, "job", job)
				cum := 0.0
				for i, le := range []string{"0.1", "0.5", "1", "5", "+Inf"} {
					cum += float64(s * (i + inst + 1))
					add(cum, "__name__", "http_request_duration_seconds_bucket", "instance", in, "job", job, "le", le)
				}
			}
		}
		batches = append(batches, batch)
	}
	return batches
}

func writeAll(t *testing.T, addr string, batches [][]prompb.TimeSeries) {
	t.Helper()
	for i, b := range batches {
		code, err := remoteWrite(context.Background(), addr, b)
		require.NoError(t, err)
		require.Equal(t, http.StatusNoContent, code, "batch %d to %s", i, addr)
	}
}

// TestClusterAnswersLikeSingleNode loads a data set through node A of a
// three-node cluster and checks that every query and metadata endpoint gives
// through each node exactly what a single node holding the data gives.
func TestClusterAnswersLikeSingleNode(t *testing.T) {
	if testing.Short() {
		t.Skip("process test skipped in -short mode")
	}
	// The data ends about now, so /federate (which looks back from now)
	// finds the latest samples.
	base := time.Now().Add(-time.Hour).Truncate(time.Minute)
	end := base.Add(time.Hour)
	data := dataset(base)

	single := startKiln(t, t.TempDir()+"/single", freeAddr(t))
	writeAll(t, single.addr, data)

	instant := func(q string) (string, url.Values) {
		return "/api/v1/query", url.Values{"query": {q}, "time": {fmtTime(end)}}
	}
	ranged := func(q string) (string, url.Values) {
		return "/api/v1/query_range", url.Values{"query": {q}, "start": {fmtTime(end.Add(-time.Hour))}, "end": {fmtTime(end)}, "step": {"15"}}
	}
	exprs := []string{
		`rate(http_requests_total[5m])`,
		`sum by (job) (rate(http_requests_total[5m]))`,
		`histogram_quantile(0.9, sum by (le) (rate(http_request_duration_seconds_bucket[5m])))`,
		`topk(5, memory_bytes)`,
		`count(up)`,
		`avg_over_time(memory_bytes[10m])`,
		`http_requests_total{job="api",status=~"5.."}`,
		`sum(http_requests_total) / count(http_requests_total)`,
		`absent(nonexistent_metric)`,
		`count by (__name__) ({__name__=~".+"})`,
	}
	type call struct {
		path   string
		params url.Values
	}
	var calls []call
	for _, e := range exprs {
		p, v := instant(e)
		calls = append(calls, call{p, v})
		p, v = ranged(e)
		calls = append(calls, call{p, v})
	}
	window := url.Values{"start": {fmtTime(base)}, "end": {fmtTime(end)}}
	with := func(v url.Values, kv ...string) url.Values {
		out := url.Values{}
		for k, vs := range v {
			out[k] = vs
		}
		for i := 0; i < len(kv); i += 2 {
			out.Add(kv[i], kv[i+1])
		}
		return out
	}
	calls = append(calls,
		call{"/api/v1/series", with(window, "match[]", `{job="api"}`)},
		call{"/api/v1/series", with(window, "match[]", `up`, "match[]", `memory_bytes{instance="host-1:9100"}`)},
		call{"/api/v1/labels", window},
		call{"/api/v1/labels", with(window, "match[]", `up`)},
		call{"/api/v1/label/instance/values", window},
		call{"/api/v1/label/__name__/values", with(window, "match[]", `{job="db"}`)},
	)

	expect := make([]string, len(calls))
	for i, c := range calls {
		pr := apiGet(t, single.addr, c.path, c.params)
		require.Equal(t, "success", pr.Status, "single node %s %v: %s", c.path, c.params, pr.Error)
		expect[i] = canonical(t, pr.Data)
	}
	federate := func(addr string) string {
		resp, err := http.Get("http://" + addr + "/federate?match[]=" + url.QueryEscape(`{job="web"}`))
		require.NoError(t, err)
		defer func() { _ = resp.Body.Close() }()
		require.Equal(t, http.StatusOK, resp.StatusCode)
		b, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		lines := strings.Split(strings.TrimSpace(string(b)), "\n")
		slices.Sort(lines)
		return strings.Join(lines, "\n")
	}
	wantFed := federate(single.addr)
	require.NotEmpty(t, wantFed)

	for _, rf := range []int{2, 3} {
		t.Run("RF="+strconv.Itoa(rf), func(t *testing.T) {
			nodes := startCluster(t, 3, rf)
			writeAll(t, nodes[0].addr, data)
			for _, nd := range nodes {
				for i, c := range calls {
					pr := apiGet(t, nd.addr, c.path, c.params)
					require.Equal(t, "success", pr.Status, "%s %s %v: %s", nd.name, c.path, c.params, pr.Error)
					require.Equal(t, expect[i], canonical(t, pr.Data), "%s %s %v", nd.name, c.path, c.params)
				}
				require.Equal(t, wantFed, federate(nd.addr), "%s /federate", nd.name)
			}
			// The data is spread: no node holds every series when RF < 3.
			st, err := nodes[1].status()
			require.NoError(t, err)
			require.Equal(t, rf, st.RF)
			for _, m := range st.Members {
				require.Positive(t, m.Partitions, "member %s owns partitions", m.Name)
			}
		})
	}
}

// loadWriter sends rounds of samples to a set of nodes, one round at a time
// per sender, and remembers which rounds were acknowledged.
type loadWriter struct {
	name    string
	series  int
	base    time.Time
	step    time.Duration // between the timestamps of two rounds
	mu      sync.Mutex
	acked   []int // rounds acknowledged, in order
	fails   atomic.Int64
	lastErr atomic.Value // string: the last failure, for messages
	lastOK  atomic.Int64 // unix nanos of the last acknowledged write
	maxGap  atomic.Int64 // longest time between two acknowledged writes
	stopped chan struct{}
}

func (w *loadWriter) run(ctx context.Context, addrs func() []string, rounds int) {
	defer close(w.stopped)
	for r := 0; r < rounds && ctx.Err() == nil; r++ {
		ts := make([]prompb.TimeSeries, w.series)
		for k := range ts {
			ts[k] = prompb.TimeSeries{
				Labels: []prompb.Label{
					{Name: "__name__", Value: "cluster_load"},
					{Name: "sender", Value: w.name},
					{Name: "series", Value: strconv.Itoa(k)},
				},
				Samples: []prompb.Sample{{Timestamp: w.at(r).UnixMilli(), Value: float64(r)}},
			}
		}
		// Retry the round until some node acknowledges it: what a
		// Prometheus remote_write queue does.
		for i := 0; ctx.Err() == nil; i++ {
			as := addrs()
			code, err := remoteWrite(ctx, as[i%len(as)], ts)
			if err == nil && code == http.StatusNoContent {
				now := time.Now().UnixNano()
				if last := w.lastOK.Swap(now); last != 0 && now-last > w.maxGap.Load() {
					w.maxGap.Store(now - last)
				}
				w.mu.Lock()
				w.acked = append(w.acked, r)
				w.mu.Unlock()
				break
			}
			if ctx.Err() != nil {
				return // the test stopped the load, not a failure
			}
			w.fails.Add(1)
			w.lastErr.Store(fmt.Sprintf("round %d: status %d, err %v", r, code, err))
			time.Sleep(50 * time.Millisecond)
		}
	}
}

func newLoadWriter(name string, series int, base time.Time) *loadWriter {
	return &loadWriter{name: name, series: series, base: base, step: time.Second, stopped: make(chan struct{})}
}

// at is the timestamp of round r.
func (w *loadWriter) at(r int) time.Time { return w.base.Add(time.Duration(r) * w.step) }

// checkAcked asserts every acknowledged round of w is returned by addr.
func (w *loadWriter) checkAcked(t *testing.T, addr string, params ...string) {
	t.Helper()
	w.mu.Lock()
	acked := slices.Clone(w.acked)
	w.mu.Unlock()
	require.NotEmpty(t, acked)
	q := fmt.Sprintf(`cluster_load{sender=%q}`, w.name)
	last := acked[len(acked)-1]
	v := url.Values{"query": {q}, "start": {fmtTime(w.base)}, "end": {fmtTime(w.at(last))}, "step": {strconv.FormatFloat(w.step.Seconds(), 'f', -1, 64)}}
	for i := 0; i < len(params); i += 2 {
		v.Set(params[i], params[i+1])
	}
	pr := apiGet(t, addr, "/api/v1/query_range", v)
	require.Equal(t, "success", pr.Status, "%s: %s", pr.ErrorType, pr.Error)
	res := decodeMatrix(t, pr.Data)
	require.Len(t, res, w.series, "sender %s: every series is there on %s", w.name, addr)
	for _, s := range res {
		have := map[string]bool{}
		for _, p := range s.Values {
			have[p[1].(string)] = true
		}
		for _, r := range acked {
			require.True(t, have[strconv.Itoa(r)], "sender %s series %s: acknowledged round %d missing on %s", w.name, s.Metric["series"], r, addr)
		}
	}
}

// TestClusterSurvivesKill9 kills one of three nodes (RF=3) during
// continuous remote-write through the other two: writes keep succeeding,
// the survivors return every acknowledged sample, and the killed node,
// restarted, catches up so that it alone answers completely.
func TestClusterSurvivesKill9(t *testing.T) {
	if testing.Short() {
		t.Skip("process test skipped in -short mode")
	}
	nodes := startCluster(t, 3, 3)
	survivors := []string{nodes[0].addr, nodes[1].addr}
	base := time.Now().Add(-time.Hour).Truncate(time.Second)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	writers := []*loadWriter{newLoadWriter("a", 40, base), newLoadWriter("b", 40, base)}
	for i, w := range writers {
		go w.run(ctx, func() []string { return survivors[i : i+1] }, 3000)
	}
	waitRounds := func(n int) {
		require.Eventually(t, func() bool {
			for _, w := range writers {
				w.mu.Lock()
				k := len(w.acked)
				w.mu.Unlock()
				if k < n {
					return false
				}
			}
			return true
		}, 60*time.Second, 10*time.Millisecond)
	}
	waitRounds(100)
	nodes[2].kill()
	before := make([]int64, len(writers))
	for i, w := range writers {
		before[i] = w.fails.Load()
	}
	waitRounds(400)
	cancel()
	for _, w := range writers {
		<-w.stopped
	}
	for i, w := range writers {
		require.Equal(t, before[i], w.fails.Load(), "writer %s: writes failed after the kill: %v", w.name, w.lastErr.Load())
		for _, addr := range survivors {
			w.checkAcked(t, addr)
		}
	}

	// The killed node comes back and receives what it missed.
	nodes[2].restart()
	nodes[2].waitReady()
	for _, nd := range nodes[:2] {
		require.Eventually(t, func() bool {
			st, err := nd.status()
			if err != nil {
				return false
			}
			for _, h := range st.Handoff {
				if h.Hints > 0 {
					return false
				}
			}
			return true
		}, 60*time.Second, 200*time.Millisecond, "%s never drained its hints", nd.name)
	}
	nodes[0].kill()
	nodes[1].kill()
	for _, w := range writers {
		w.checkAcked(t, nodes[2].addr, "partial_response", "false")
	}
}

// TestClusterLeaderKill kills the Raft leader: a new one is elected and
// shown by the status endpoint, and ingest and queries through the
// survivors never pause longer than failure detection takes.
func TestClusterLeaderKill(t *testing.T) {
	if testing.Short() {
		t.Skip("process test skipped in -short mode")
	}
	nodes := startCluster(t, 3, 3)
	st, err := nodes[0].status()
	require.NoError(t, err)
	oldLeader := st.Leader.Name
	require.NotEmpty(t, oldLeader)
	var leader *clusterNode
	var rest []*clusterNode
	for _, nd := range nodes {
		if nd.name == oldLeader {
			leader = nd
		} else {
			rest = append(rest, nd)
		}
	}
	require.NotNil(t, leader, "leader %q is one of the nodes", oldLeader)

	base := time.Now().Add(-time.Hour).Truncate(time.Second)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	w := newLoadWriter("leader", 20, base)
	go w.run(ctx, func() []string { return []string{rest[0].addr, rest[1].addr} }, 100000)

	// Queries through a survivor, timing the longest gap between answers.
	var qmax atomic.Int64
	qdone := make(chan struct{})
	go func() {
		defer close(qdone)
		last := time.Now()
		for ctx.Err() == nil {
			v := url.Values{"query": {"count(cluster_load)"}, "time": {fmtTime(time.Now())}}
			resp, err := http.PostForm("http://"+rest[1].addr+"/api/v1/query", v)
			if err == nil {
				ok := resp.StatusCode == http.StatusOK
				_ = resp.Body.Close()
				if ok {
					if gap := time.Since(last); int64(gap) > qmax.Load() {
						qmax.Store(int64(gap))
					}
					last = time.Now()
				}
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
	require.Eventually(t, func() bool { return w.lastOK.Load() != 0 }, 30*time.Second, 10*time.Millisecond)
	time.Sleep(time.Second)
	leader.kill()
	killed := time.Now()

	var newLeader string
	require.Eventually(t, func() bool {
		for _, nd := range rest {
			st, err := nd.status()
			if err != nil || st.Leader.Name == "" || st.Leader.Name == oldLeader {
				return false
			}
			if newLeader != "" && newLeader != st.Leader.Name {
				return false
			}
			newLeader = st.Leader.Name
		}
		return true
	}, 30*time.Second, 100*time.Millisecond, "no new leader after killing %s", oldLeader)
	t.Logf("new leader %s after %v", newLeader, time.Since(killed).Round(time.Millisecond))
	time.Sleep(2 * time.Second)
	cancel()
	<-w.stopped
	<-qdone
	// Failure detection is a few seconds of gossip probes; nothing on the
	// sample path waits for Raft, so neither writes nor reads stop longer.
	const bound = 10 * time.Second
	t.Logf("longest pause: writes %v, queries %v", time.Duration(w.maxGap.Load()), time.Duration(qmax.Load()))
	require.Less(t, time.Duration(w.maxGap.Load()), bound, "writes paused")
	require.Less(t, time.Duration(qmax.Load()), bound, "queries paused")
	w.checkAcked(t, rest[0].addr)
}

// TestClusterConcurrentStart starts two nodes at the same moment, each with
// the other as its peer: they must form one cluster, not two.
func TestClusterConcurrentStart(t *testing.T) {
	if testing.Short() {
		t.Skip("process test skipped in -short mode")
	}
	base := t.TempDir()
	a, b := newClusterNode(t, base, 0), newClusterNode(t, base, 1)
	a.proc = spawnKiln(t, a.dir, freeAddr(t), a.args(2, []*clusterNode{b})...)
	b.proc = spawnKiln(t, b.dir, freeAddr(t), b.args(2, []*clusterNode{a})...)
	a.waitReady()
	b.waitReady()
	nodes := []*clusterNode{a, b}
	waitMembers(t, nodes, 2)
	sa, err := a.status()
	require.NoError(t, err)
	sb, err := b.status()
	require.NoError(t, err)
	require.NotEmpty(t, sa.ClusterID)
	require.Equal(t, sa.ClusterID, sb.ClusterID, "one cluster")
	require.Equal(t, sa.Leader.Name, sb.Leader.Name, "one leader")
	require.Equal(t, sa.Epoch, sb.Epoch)
}

func decodeMatrix(t *testing.T, data []byte) matrixResult {
	t.Helper()
	var env struct {
		Result matrixResult `json:"result"`
	}
	require.NoError(t, json.Unmarshal(data, &env))
	return env.Result
}

package test

import (
	"context"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/prometheus/prometheus/prompb"
	"github.com/stretchr/testify/require"
)

// TestDocker runs the image built from docker/Dockerfile as a three-node
// cluster (RF=3, write quorum 2) and breaks it the ways Docker can: a
// network partition and a frozen container. The image is built once for
// both. Skipped in -short mode and where no Docker engine answers.
func TestDocker(t *testing.T) {
	requireDocker(t)
	image := buildDockerImage(t)
	t.Run("Partition", func(t *testing.T) { testDockerPartition(t, image) })
	t.Run("Pause", func(t *testing.T) { testDockerPause(t, image) })
}

// dockerLoad is remote-write load through node-1 and node-2: one writer
// each, retrying a round until it is acknowledged.
type dockerLoad struct {
	t       *testing.T
	writers []*loadWriter
	cancel  context.CancelFunc
	stopped bool
}

func startDockerLoad(t *testing.T, c *dockerCluster) *dockerLoad {
	// Round r is at base + r seconds: base is far enough back that the
	// rounds of a run stay out of the future.
	base := time.Now().Add(-2 * time.Hour).Truncate(time.Second)
	ctx, cancel := context.WithCancel(context.Background())
	l := &dockerLoad{t: t, cancel: cancel}
	for i, name := range []string{"a", "b"} {
		w := newLoadWriter(name, 40, base)
		l.writers = append(l.writers, w)
		addr := c.nodes[i].addr
		// addrs is asked once per attempt: it also paces the writer to
		// about 20 rounds a second, a steady load that leaves CPU to the
		// three nodes on a small machine.
		go w.run(ctx, func() []string {
			time.Sleep(40 * time.Millisecond)
			return []string{addr}
		}, 1_000_000)
	}
	t.Cleanup(l.stop)
	return l
}

func (l *dockerLoad) acked(w *loadWriter) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.acked)
}

// waitMore waits until every writer had n more rounds acknowledged.
func (l *dockerLoad) waitMore(n int) {
	l.t.Helper()
	want := make([]int, len(l.writers))
	for i, w := range l.writers {
		want[i] = l.acked(w) + n
	}
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		done := true
		for i, w := range l.writers {
			done = done && l.acked(w) >= want[i]
		}
		if done {
			return
		}
		if time.Now().After(deadline) {
			l.t.Fatalf("writers stalled: last failures %v / %v", l.writers[0].lastErr.Load(), l.writers[1].lastErr.Load())
		}
	}
}

func (l *dockerLoad) fails() []int64 {
	out := make([]int64, len(l.writers))
	for i, w := range l.writers {
		out[i] = w.fails.Load()
	}
	return out
}

func (l *dockerLoad) stop() {
	if l.stopped {
		return
	}
	l.stopped = true
	l.cancel()
	for _, w := range l.writers {
		<-w.stopped
	}
}

// requireNoFailuresSince stops the load and checks that no write failed
// after the snapshot taken when the failure was detected.
func (l *dockerLoad) requireNoFailuresSince(before []int64) {
	l.t.Helper()
	l.stop()
	for i, w := range l.writers {
		l.t.Logf("writer %s: %d rounds acknowledged, %d failed attempts before detection, longest pause %v",
			w.name, l.acked(w), before[i], time.Duration(w.maxGap.Load()).Round(time.Millisecond))
		require.Equal(l.t, before[i], w.fails.Load(), "writer %s: writes failed after the failure was detected: %v", w.name, w.lastErr.Load())
	}
}

// selfHealWait is how long the partition test waits for gossip to heal
// after the network is reconnected (failure detection takes ~5 s).
const selfHealWait = 20 * time.Second

// testDockerPartition cuts node-3 off the cluster network under load:
// the majority acknowledges every write, node-3 refuses writes it cannot
// replicate, and after the heal nothing acknowledged is missing anywhere
// and node-3 alone answers completely.
func testDockerPartition(t *testing.T, image string) {
	start := time.Now()
	c := startDockerCluster(t, image, "part")
	n1, n2, n3 := c.nodes[0], c.nodes[1], c.nodes[2]
	t.Logf("cluster up in %v", time.Since(start).Round(time.Millisecond))

	load := startDockerLoad(t, c)
	load.waitMore(50)

	mustDocker(t, "network", "disconnect", c.network, n3.container)
	cut := time.Now()
	t.Logf("majority saw %s dead %v after the cut", n3.name, c.waitDead(n3.name, n1, n2).Round(time.Millisecond))
	before := load.fails()

	// The isolated node cannot reach a quorum: it refuses, and says when to
	// retry. Another sender, so that its local copies conflict with nothing.
	for i := 0; i < 5; i++ {
		ts := []prompb.TimeSeries{{
			Labels:  []prompb.Label{{Name: "__name__", Value: "cluster_load"}, {Name: "sender", Value: "isolated"}, {Name: "series", Value: strconv.Itoa(i)}},
			Samples: []prompb.Sample{{Timestamp: time.Now().UnixMilli(), Value: float64(i)}},
		}}
		code, retryAfter, err := writeTo(n3.addr, ts)
		require.NoError(t, err)
		require.Equal(t, http.StatusServiceUnavailable, code, "isolated %s acknowledged a write it cannot replicate", n3.name)
		require.NotEmpty(t, retryAfter, "503 without Retry-After")
	}

	load.waitMore(100)
	// What node-3 missed waits for it as hints on the majority.
	for _, n := range []*dockerNode{n1, n2} {
		var hints int
		require.Eventually(t, func() bool {
			st, err := n.status()
			hints = st.Handoff[n3.name].Hints
			return err == nil && hints > 0
		}, 30*time.Second, 100*time.Millisecond, "%s holds no hints for %s", n.name, n3.name)
		t.Logf("%s holds %d hints for %s", n.name, hints, n3.name)
	}
	mustDocker(t, "network", "connect", "--ip", n3.clusterIP, c.network, n3.container)
	t.Logf("healed after a %v partition", time.Since(cut).Round(time.Millisecond))
	healed := time.Now()
	if !c.healsWithin(selfHealWait) {
		// KNOWN LIMITATION (cluster/, gossip): once both sides declared
		// each other dead, memberlist neither probes nor push-pulls dead
		// members, and Kiln has no reconnect loop (Serf's re-join of
		// failed members), so a partition that outlasted failure
		// detection never heals by itself. Until it does, the test
		// restarts the cut-off node, which rejoins through --cluster.peer,
		// and checks the data path from there. SIGKILL, not a stop: a
		// stopped node leaves the ring gracefully, and would then catch
		// up by partition transfer instead of hinted handoff.
		t.Logf("KNOWN LIMITATION: gossip did not heal within %v of the reconnect; killing and starting %s so that it rejoins", selfHealWait, n3.name)
		mustDocker(t, "kill", n3.container)
		mustDocker(t, "start", n3.container)
	}
	c.waitAllAlive()
	t.Logf("all members alive %v after the heal", time.Since(healed).Round(time.Millisecond))
	load.waitMore(50)
	load.requireNoFailuresSince(before)
	c.waitSettled()

	for _, n := range c.nodes {
		for _, w := range load.writers {
			w.checkAcked(t, n.addr)
		}
	}
	t.Logf("hints drained in %v", c.waitDrained().Round(time.Millisecond))

	// node-3 alone holds every acknowledged sample. The others are
	// killed: stopped, they would leave the ring gracefully and first
	// hand node-3 whatever it lacked.
	mustDocker(t, "kill", n1.container, n2.container)
	c.waitDead(n1.name, n3)
	c.waitDead(n2.name, n3)
	for _, w := range load.writers {
		w.checkAcked(t, n3.addr, "partial_response", "false")
	}
	t.Logf("partition test took %v", time.Since(start).Round(time.Millisecond))
}

// testDockerPause freezes node-3 past failure detection while writes go
// through node-1 and node-2: every write is acknowledged, node-3 catches up
// from hinted handoff after the unpause, and every node alone then holds
// every acknowledged sample.
func testDockerPause(t *testing.T, image string) {
	start := time.Now()
	c := startDockerCluster(t, image, "pause")
	n1, n2, n3 := c.nodes[0], c.nodes[1], c.nodes[2]
	t.Logf("cluster up in %v", time.Since(start).Round(time.Millisecond))

	load := startDockerLoad(t, c)
	load.waitMore(50)

	mustDocker(t, "pause", n3.container)
	paused := time.Now()
	t.Logf("majority saw %s dead %v after the pause", n3.name, c.waitDead(n3.name, n1, n2).Round(time.Millisecond))
	before := load.fails()
	load.waitMore(100)
	for _, n := range []*dockerNode{n1, n2} {
		require.Eventually(t, func() bool {
			st, err := n.status()
			return err == nil && st.Handoff[n3.name].Hints > 0
		}, 30*time.Second, 100*time.Millisecond, "%s holds no hints for %s", n.name, n3.name)
	}
	mustDocker(t, "unpause", n3.container)
	t.Logf("unpaused after %v", time.Since(paused).Round(time.Millisecond))
	c.waitAllAlive()
	load.waitMore(50)
	load.requireNoFailuresSince(before)
	t.Logf("hints drained in %v", c.waitDrained().Round(time.Millisecond))

	// Each node alone (the other two frozen and seen dead) answers every
	// acknowledged sample.
	for _, n := range c.nodes {
		var others []string
		var names []string
		for _, o := range c.nodes {
			if o != n {
				others = append(others, o.container)
				names = append(names, o.name)
			}
		}
		mustDocker(t, append([]string{"pause"}, others...)...)
		for _, name := range names {
			c.waitDead(name, n)
		}
		for _, w := range load.writers {
			w.checkAcked(t, n.addr, "partial_response", "false")
		}
		mustDocker(t, append([]string{"unpause"}, others...)...)
		c.waitAllAlive()
	}
	t.Logf("pause test took %v", time.Since(start).Round(time.Millisecond))
}

package test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/golang/snappy"
	"github.com/prometheus/prometheus/prompb"
	"github.com/stretchr/testify/require"
)

// The Docker tests run the image built from docker/Dockerfile as a
// three-node cluster, the topology of docker/compose.yaml, created with the
// docker CLI so that every name is unique to the run:
//
//   - one internal network for the cluster, with fixed addresses (the gossip
//     advertise address must be an IP, and a node must come back under the
//     same one); every cluster flag names these addresses;
//   - per node, a second internal network holding only that node: the test
//     reaches the node's API there, also while the node is cut off from the
//     cluster network. No node can reach another through it (Docker
//     isolates bridge networks, and no peer advertises those addresses);
//   - a named volume per node at /data.
//
// Internal networks have no gateway: nothing leaves the host.

// dockerCmd runs the docker CLI and returns its combined output.
func dockerCmd(ctx context.Context, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "docker", args...).CombinedOutput()
	s := strings.TrimSpace(string(out))
	if err != nil {
		return s, fmt.Errorf("docker %s: %w: %s", strings.Join(args, " "), err, s)
	}
	return s, nil
}

func mustDocker(t *testing.T, args ...string) string {
	t.Helper()
	out, err := dockerCmd(context.Background(), args...)
	require.NoError(t, err)
	return out
}

// requireDocker skips the test in -short mode or when no Docker engine
// answers.
func requireDocker(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("Docker test skipped in -short mode")
	}
	if _, err := exec.LookPath("docker"); err != nil {
		t.Skip("Docker test skipped: no docker CLI on PATH")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if out, err := exec.CommandContext(ctx, "docker", "info", "--format", "{{.ServerVersion}}").CombinedOutput(); err != nil {
		t.Skipf("Docker test skipped: no Docker engine answers (`docker info`: %v: %s)", err, tail(strings.TrimSpace(string(out)), 300))
	}
}

// runID names everything one test binary creates in Docker.
var runID = func() string {
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	return fmt.Sprintf("%d-%s", os.Getpid(), hex.EncodeToString(b))
}()

const dockerLabel = "io.kiln.test.run"

// buildDockerImage builds docker/Dockerfile around the binary TestMain
// built (static, CGO_ENABLED=0), staging the context like `make docker`,
// and removes the image when t ends. It returns the image reference.
func buildDockerImage(t *testing.T) string {
	t.Helper()
	ctxDir := t.TempDir()
	require.NoError(t, os.Mkdir(filepath.Join(ctxDir, "data"), 0o755))
	if err := os.Link(kilnBin, filepath.Join(ctxDir, "kiln")); err != nil {
		copyFile(t, kilnBin, filepath.Join(ctxDir, "kiln"), 0o755)
	}
	if _, err := os.Stat("/etc/ssl/certs/ca-certificates.crt"); err == nil {
		copyFile(t, "/etc/ssl/certs/ca-certificates.crt", filepath.Join(ctxDir, "ca-certificates.crt"), 0o644)
	} else {
		require.NoError(t, os.WriteFile(filepath.Join(ctxDir, "ca-certificates.crt"), nil, 0o644))
	}
	image := "kiln-test:" + runID
	start := time.Now()
	mustDocker(t, "build", "-q", "--label", dockerLabel+"="+runID, "-f", "../docker/Dockerfile", "-t", image, ctxDir)
	t.Logf("built image %s from docker/Dockerfile in %v", image, time.Since(start).Round(time.Millisecond))
	t.Cleanup(func() {
		if _, err := dockerCmd(context.Background(), "rmi", "-f", image); err != nil {
			t.Logf("removing image: %v", err)
		}
	})
	return image
}

func copyFile(t *testing.T, from, to string, mode os.FileMode) {
	t.Helper()
	b, err := os.ReadFile(from)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(to, b, mode))
}

// dockerNode is one container of a Docker cluster.
type dockerNode struct {
	name      string // node name: node-1, node-2, node-3
	container string
	clusterIP string // on the cluster network: every cluster flag uses it
	addr      string // API on the node's own network: how the test reaches it
}

type dockerCluster struct {
	t       *testing.T
	prefix  string // kiln-test-<run>-<test>
	network string // the cluster network
	nodes   []*dockerNode
}

// startDockerCluster starts three nodes (RF=3, write quorum 2) like
// docker/compose.yaml: node-1 bootstraps, node-2 and node-3 join it. It
// returns once every node is ready and sees three alive members in the
// ring. Everything is removed when t ends.
func startDockerCluster(t *testing.T, image, test string) *dockerCluster {
	t.Helper()
	c := &dockerCluster{t: t, prefix: "kiln-test-" + runID + "-" + test}
	label := dockerLabel + "=" + runID
	t.Cleanup(c.remove)

	// A random 10.x.y.0/24 per cluster, split in /27s: the cluster network
	// and the three node networks. Another network may hold the range:
	// then try another.
	var base string
	for attempt := 0; ; attempt++ {
		a, _ := rand.Int(rand.Reader, big.NewInt(50))
		b, _ := rand.Int(rand.Reader, big.NewInt(256))
		base = fmt.Sprintf("10.%d.%d.", 200+a.Int64(), b.Int64())
		nets := []string{c.prefix + "-cluster", c.prefix + "-node-1", c.prefix + "-node-2", c.prefix + "-node-3"}
		var err error
		for i, n := range nets {
			if _, err = dockerCmd(context.Background(), "network", "create", "--internal", "--label", label,
				"--subnet", fmt.Sprintf("%s%d/27", base, 32*i), n); err != nil {
				break
			}
		}
		if err == nil {
			break
		}
		c.removeNetworks()
		require.Less(t, attempt, 8, "cannot create the test networks: %v", err)
	}
	c.network = c.prefix + "-cluster"

	cfg := filepath.Join(t.TempDir(), "prometheus.yml")
	// Nothing scraped: the database holds exactly what the test writes.
	require.NoError(t, os.WriteFile(cfg, []byte("global:\n  scrape_interval: 15s\n"), 0o644))
	for i := 1; i <= 3; i++ {
		n := &dockerNode{
			name:      fmt.Sprintf("node-%d", i),
			container: fmt.Sprintf("%s-node-%d", c.prefix, i),
			clusterIP: fmt.Sprintf("%s%d", base, 10+i),
		}
		c.nodes = append(c.nodes, n)
		vol := n.container + "-data"
		mustDocker(t, "volume", "create", "--label", label, vol)
		args := []string{"create", "--name", n.container, "--label", label,
			"--network", n.container, "--hostname", n.name, "--stop-timeout", "30",
			"-v", vol + ":/data", "-v", cfg + ":/etc/kiln/kiln.yml:ro",
			image,
			"--storage.path=/data",
			"--web.listen-address=0.0.0.0:9364",
			"--config.file=/etc/kiln/kiln.yml",
			"--cluster.node-name=" + n.name,
			"--cluster.listen-address=0.0.0.0:9365",
			"--cluster.advertise-address=" + n.clusterIP + ":9365",
			"--cluster.api-advertise-address=" + n.clusterIP + ":9364",
		}
		if i > 1 {
			args = append(args, "--cluster.peer="+c.nodes[0].clusterIP+":9365")
		}
		mustDocker(t, args...)
		mustDocker(t, "network", "connect", "--ip", n.clusterIP, c.network, n.container)
		mustDocker(t, "start", n.container)
		ip := mustDocker(t, "inspect", "-f", fmt.Sprintf("{{(index .NetworkSettings.Networks %q).IPAddress}}", n.container), n.container)
		require.NotEmpty(t, ip)
		n.addr = ip + ":9364"
	}
	for _, n := range c.nodes {
		require.Eventually(t, func() bool {
			resp, err := dockerHTTP.Get("http://" + n.addr + "/-/ready")
			if err != nil {
				return false
			}
			_ = resp.Body.Close()
			return resp.StatusCode == http.StatusOK
		}, 60*time.Second, 100*time.Millisecond, "%s did not become ready", n.name)
	}
	c.waitAllAlive()
	c.waitSettled()
	return c
}

// waitSettled waits until no node reports moving or under-replicated
// partitions: the cluster has finished placing its replicas.
func (c *dockerCluster) waitSettled() {
	t := c.t
	t.Helper()
	for _, n := range c.nodes {
		var last dockerStatus
		require.Eventually(t, func() bool {
			st, err := n.status()
			last = st
			return err == nil && st.MovingPartitions == 0 && st.UnderReplicated == 0
		}, 90*time.Second, 200*time.Millisecond, "%s never settled: %+v", n.name, &last)
	}
}

// dockerHTTP bounds every call, so a paused or cut-off node makes a call
// fail instead of hanging the test.
var dockerHTTP = &http.Client{Timeout: 30 * time.Second}

// status reads the node's /api/v1/status/cluster.
func (n *dockerNode) status() (dockerStatus, error) {
	var st dockerStatus
	return st, getData(dockerHTTP, "http://"+n.addr+"/api/v1/status/cluster", &st)
}

// dockerStatus adds what the Docker tests wait on to clusterStatus.
type dockerStatus struct {
	clusterStatus
	MovingPartitions int `json:"moving_partitions"`
}

// gossipState returns what node n's gossip says of member name.
func (c *dockerCluster) gossipState(n *dockerNode, name string) string {
	st, err := n.status()
	if err != nil {
		return "error: " + err.Error()
	}
	for _, m := range st.Members {
		if m.Name == name {
			return m.State
		}
	}
	return "missing"
}

// waitAllAlive waits until every node sees every node alive in the ring.
func (c *dockerCluster) waitAllAlive() {
	t := c.t
	t.Helper()
	for _, n := range c.nodes {
		require.Eventually(t, func() bool { return c.seesAllAlive(n) },
			90*time.Second, 200*time.Millisecond, "%s never saw %d alive members", n.name, len(c.nodes))
	}
}

// seesAllAlive reports whether n sees every node alive in the ring.
func (c *dockerCluster) seesAllAlive(n *dockerNode) bool {
	st, err := n.status()
	if err != nil {
		return false
	}
	alive := 0
	for _, m := range st.Members {
		if m.InRing && m.State == "alive" {
			alive++
		}
	}
	return alive == len(c.nodes)
}

// healsWithin polls until every node sees every node alive, for at most d.
func (c *dockerCluster) healsWithin(d time.Duration) bool {
	for deadline := time.Now().Add(d); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		ok := true
		for _, n := range c.nodes {
			ok = ok && c.seesAllAlive(n)
		}
		if ok {
			return true
		}
	}
	return false
}

// waitDead waits until each of observers sees member name dead (or left)
// and returns how long that took.
func (c *dockerCluster) waitDead(name string, observers ...*dockerNode) time.Duration {
	t := c.t
	t.Helper()
	start := time.Now()
	for _, o := range observers {
		require.Eventually(t, func() bool {
			s := c.gossipState(o, name)
			return s == "dead" || s == "left"
		}, 60*time.Second, 100*time.Millisecond, "%s never saw %s dead", o.name, name)
	}
	return time.Since(start)
}

// waitDrained waits until no node holds hints.
func (c *dockerCluster) waitDrained() time.Duration {
	t := c.t
	t.Helper()
	start := time.Now()
	for _, n := range c.nodes {
		var last dockerStatus
		require.Eventually(t, func() bool {
			st, err := n.status()
			if err != nil {
				return false
			}
			last = st
			for _, h := range st.Handoff {
				if h.Hints > 0 {
					return false
				}
			}
			return true
		}, 90*time.Second, 200*time.Millisecond, "%s never drained its hints: %+v", n.name, &last.Handoff)
	}
	return time.Since(start)
}

// remove deletes every container, volume and network of the cluster, and
// shows the nodes' logs when the test failed.
func (c *dockerCluster) remove() {
	ctx := context.Background()
	for _, n := range c.nodes {
		if c.t.Failed() {
			if out, err := dockerCmd(ctx, "logs", "--tail", "40", n.container); err == nil {
				c.t.Logf("log of %s:\n%s", n.container, out)
			}
		}
		_, _ = dockerCmd(ctx, "unpause", n.container) // fails unless paused
		_, _ = dockerCmd(ctx, "rm", "-f", "-v", n.container)
		_, _ = dockerCmd(ctx, "volume", "rm", "-f", n.container+"-data")
	}
	c.removeNetworks()
}

func (c *dockerCluster) removeNetworks() {
	for _, n := range []string{"-cluster", "-node-1", "-node-2", "-node-3"} {
		_, _ = dockerCmd(context.Background(), "network", "rm", c.prefix+n)
	}
}

// writeTo sends one remote-write request to addr and returns the status
// and the Retry-After header.
func writeTo(addr string, ts []prompb.TimeSeries) (int, string, error) {
	req := &prompb.WriteRequest{Timeseries: ts}
	raw, err := req.Marshal()
	if err != nil {
		return 0, "", err
	}
	hreq, err := http.NewRequest(http.MethodPost, "http://"+addr+"/api/v1/write", bytes.NewReader(snappy.Encode(nil, raw)))
	if err != nil {
		return 0, "", err
	}
	hreq.Header.Set("Content-Type", "application/x-protobuf")
	hreq.Header.Set("Content-Encoding", "snappy")
	hreq.Header.Set("X-Prometheus-Remote-Write-Version", "0.1.0")
	resp, err := dockerHTTP.Do(hreq)
	if err != nil {
		return 0, "", err
	}
	defer func() { _ = resp.Body.Close() }()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode, resp.Header.Get("Retry-After"), nil
}

package test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/golang/snappy"
	"github.com/prometheus/prometheus/prompb"
	"github.com/stretchr/testify/require"
)

// kilnBin is the binary built once by TestMain.
var kilnBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "kiln-test-bin")
	if err != nil {
		panic(err)
	}
	kilnBin = filepath.Join(dir, "kiln")
	// Static (CGO_ENABLED=0) like `make build`, so the Docker tests can put
	// this same binary in a FROM scratch image.
	cmd := exec.Command("go", "build", "-o", kilnBin, "../node/cmd/kiln")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	if err := cmd.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building kiln:", err)
		os.Exit(1)
	}
	code := m.Run()
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

// proc is one kiln process started by a test.
type proc struct {
	t    *testing.T
	args []string
	addr string
	cmd  *exec.Cmd
	log  *syncBuffer
	done chan struct{}
}

// syncBuffer is a bytes.Buffer the process writes to while the test reads.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// Ports for the processes come from below the kernel's ephemeral range
// (32768+ on Linux): a port bound with :0 and closed again could be handed
// to a node's outgoing connection before the process binds it, which made
// a start fail with "address already in use". Each port is given out once
// per test binary, from a random start so parallel binaries rarely meet.
var (
	portMu   sync.Mutex
	nextPort = 20000 + int(time.Now().UnixNano()%10000)
)

// freeAddr returns a loopback address whose TCP and UDP ports (gossip uses
// both) are free.
func freeAddr(t *testing.T) string {
	t.Helper()
	portMu.Lock()
	defer portMu.Unlock()
	for range 1000 {
		port := nextPort
		if nextPort++; nextPort >= 32000 {
			nextPort = 20000
		}
		addr := "127.0.0.1:" + strconv.Itoa(port)
		l, err := net.Listen("tcp", addr)
		if err != nil {
			continue
		}
		u, err := net.ListenPacket("udp", addr)
		_ = l.Close()
		if err != nil {
			continue
		}
		_ = u.Close()
		return addr
	}
	t.Fatal("no free loopback port in 20000-32000")
	return ""
}

// startKiln starts kiln with the given data dir and extra flags and waits
// until /-/ready answers. Gossip and Raft take free ports unless extra
// sets them.
func startKiln(t *testing.T, dataDir, addr string, extra ...string) *proc {
	t.Helper()
	p := spawnKiln(t, dataDir, addr, append([]string{"--cluster.listen-address=127.0.0.1:0"}, extra...)...)
	p.waitReady()
	return p
}

// spawnKiln starts kiln without waiting for it to be ready.
func spawnKiln(t *testing.T, dataDir, addr string, extra ...string) *proc {
	t.Helper()
	cfg := filepath.Join(dataDir, "..", filepath.Base(dataDir)+"-prometheus.yml")
	// A config file with only global settings: nothing is scraped, so the
	// database holds exactly what the test writes.
	require.NoError(t, os.WriteFile(cfg, []byte("global:\n  scrape_interval: 15s\n"), 0o644))
	args := append([]string{"--storage.path=" + dataDir, "--web.listen-address=" + addr, "--config.file=" + cfg, "--log.level=info"}, extra...)
	p := &proc{t: t, args: args, addr: addr, log: &syncBuffer{}, done: make(chan struct{})}
	p.cmd = exec.Command(kilnBin, args...)
	p.cmd.Stdout, p.cmd.Stderr = p.log, p.log
	require.NoError(t, p.cmd.Start())
	go func() { _ = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		p.kill()
		if t.Failed() {
			t.Logf("log of kiln %s:\n%s", p.addr, tail(p.log.String(), 4000))
		}
	})
	return p
}

// waitReady waits until /-/ready answers 200.
func (p *proc) waitReady() {
	t := p.t
	t.Helper()
	require.Eventually(t, func() bool {
		select {
		case <-p.done:
			t.Fatalf("kiln exited early: %s", p.log.String())
		default:
		}
		resp, err := http.Get("http://" + p.addr + "/-/ready")
		if err != nil {
			return false
		}
		_ = resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}, 60*time.Second, 50*time.Millisecond, "kiln %s did not become ready", p.addr)
}

func tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

// stop sends SIGTERM and waits for a clean exit.
func (p *proc) stop() { p.stopWithin(30 * time.Second) }

// stopWithin sends SIGTERM and waits up to d for a clean exit.
func (p *proc) stopWithin(d time.Duration) {
	if p.cmd.Process == nil {
		return
	}
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(d):
		p.t.Errorf("kiln %s did not stop on SIGTERM within %v", p.addr, d)
		p.kill()
	}
}

// restart starts the process again with the same arguments.
func (p *proc) restart() {
	p.t.Helper()
	p.kill()
	np := &proc{t: p.t, args: p.args, addr: p.addr, log: p.log, done: make(chan struct{})}
	np.cmd = exec.Command(kilnBin, p.args...)
	np.cmd.Stdout, np.cmd.Stderr = np.log, np.log
	require.NoError(p.t, np.cmd.Start())
	go func() { _ = np.cmd.Wait(); close(np.done) }()
	*p = *np
}

// kill sends SIGKILL to the process this test started and waits for it.
func (p *proc) kill() {
	if p.cmd.Process == nil {
		return
	}
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

// remoteWrite sends one remote-write 1.0 request and returns the status.
func remoteWrite(ctx context.Context, addr string, ts []prompb.TimeSeries) (int, error) {
	req := &prompb.WriteRequest{Timeseries: ts}
	raw, err := req.Marshal()
	if err != nil {
		return 0, err
	}
	hreq, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+addr+"/api/v1/write", bytes.NewReader(snappy.Encode(nil, raw)))
	if err != nil {
		return 0, err
	}
	hreq.Header.Set("Content-Type", "application/x-protobuf")
	hreq.Header.Set("Content-Encoding", "snappy")
	hreq.Header.Set("X-Prometheus-Remote-Write-Version", "0.1.0")
	resp, err := http.DefaultClient.Do(hreq)
	if err != nil {
		return 0, err
	}
	defer func() { _ = resp.Body.Close() }()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode, nil
}

// promResponse is the envelope of the Prometheus HTTP API.
type promResponse struct {
	Status    string          `json:"status"`
	Data      json.RawMessage `json:"data"`
	ErrorType string          `json:"errorType"`
	Error     string          `json:"error"`
}

type matrixResult []struct {
	Metric map[string]string `json:"metric"`
	Values [][2]any          `json:"values"`
}

// queryRange runs a range query and returns series name label -> samples.
func queryRange(t *testing.T, addr, q string, start, end time.Time, step time.Duration) matrixResult {
	t.Helper()
	v := url.Values{"query": {q}, "start": {fmtTime(start)}, "end": {fmtTime(end)}, "step": {strconv.FormatFloat(step.Seconds(), 'f', -1, 64)}}
	resp, err := http.PostForm("http://"+addr+"/api/v1/query_range", v)
	require.NoError(t, err)
	defer func() { _ = resp.Body.Close() }()
	var pr promResponse
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&pr))
	require.Equal(t, "success", pr.Status, "%s: %s", pr.ErrorType, pr.Error)
	var env struct {
		ResultType string       `json:"resultType"`
		Result     matrixResult `json:"result"`
	}
	require.NoError(t, json.Unmarshal(pr.Data, &env))
	return env.Result
}

func fmtTime(t time.Time) string {
	return strconv.FormatFloat(float64(t.UnixMilli())/1000, 'f', 3, 64)
}

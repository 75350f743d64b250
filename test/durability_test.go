package test

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/prometheus/prompb"
	"github.com/stretchr/testify/require"
)

// TestKill9KeepsAcknowledgedSamples writes through remote-write from several
// senders, SIGKILLs kiln mid-load, restarts it on the same data and checks
// that every sample acknowledged with 2xx is there.
func TestKill9KeepsAcknowledgedSamples(t *testing.T) {
	if testing.Short() {
		t.Skip("process test skipped in -short mode")
	}
	// Fsync per write (the default), and acknowledging once the OS holds
	// the write with a periodic fsync: a killed process loses nothing
	// either way.
	for _, sync := range []string{"0", "1s"} {
		t.Run("sync-interval="+sync, func(t *testing.T) {
			testKill9KeepsAcknowledgedSamples(t, "--storage.sync-interval="+sync)
		})
	}
}

func testKill9KeepsAcknowledgedSamples(t *testing.T, flags ...string) {
	dir := t.TempDir() + "/data"
	addr := freeAddr(t)
	p := startKiln(t, dir, addr, flags...)

	const (
		senders   = 4
		perSender = 50 // series per sender
	)
	base := time.Now().Add(-time.Hour).Truncate(time.Second)
	// acked[s][i] = true when round i of sender s was acknowledged.
	var acked [senders][]bool
	var mu sync.Mutex
	var ackedRounds atomic.Int64
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	for s := 0; s < senders; s++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for round := 0; ctx.Err() == nil && round < 3000; round++ {
				ts := make([]prompb.TimeSeries, perSender)
				for k := range ts {
					ts[k] = prompb.TimeSeries{
						Labels: []prompb.Label{
							{Name: "__name__", Value: "durability_test"},
							{Name: "sender", Value: strconv.Itoa(s)},
							{Name: "series", Value: strconv.Itoa(k)},
						},
						Samples: []prompb.Sample{{Timestamp: base.Add(time.Duration(round) * time.Second).UnixMilli(), Value: float64(round)}},
					}
				}
				code, err := remoteWrite(ctx, addr, ts)
				if err != nil || code/100 != 2 {
					return // the process died: stop this sender
				}
				mu.Lock()
				acked[s] = append(acked[s], true)
				mu.Unlock()
				ackedRounds.Add(1)
			}
		}()
	}
	// Kill once a good amount of load has been acknowledged.
	require.Eventually(t, func() bool { return ackedRounds.Load() >= 400 }, 60*time.Second, 10*time.Millisecond)
	p.kill()
	wg.Wait()

	p = startKiln(t, dir, addr, flags...)
	require.Contains(t, p.log.String(), "storage opened", "restart logs its duration")
	end := base.Add(3000 * time.Second)
	for s := 0; s < senders; s++ {
		n := len(acked[s])
		require.Positive(t, n)
		res := queryRange(t, addr, fmt.Sprintf(`durability_test{sender="%d"}`, s), base, end, time.Second)
		require.Len(t, res, perSender, "sender %d: every series is there", s)
		for _, series := range res {
			// A sender writes round i only after round i-1 was acknowledged,
			// so rounds 0..n-1 must all be present (round n may be too, if it
			// was made durable but the reply was lost in the kill).
			require.GreaterOrEqual(t, len(series.Values), n, "sender %d series %s: lost acknowledged samples", s, series.Metric["series"])
			for i := 0; i < n; i++ {
				require.Equal(t, strconv.Itoa(i), series.Values[i][1], "sender %d series %s round %d", s, series.Metric["series"], i)
			}
		}
	}
	resp, err := http.Get("http://" + addr + "/-/healthy")
	require.NoError(t, err)
	_ = resp.Body.Close()
}

package replicate

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// Hints added concurrently (their fsyncs run in parallel) are all durable
// and come back in the order their sequence numbers were handed out.
func TestConcurrentHintsDurableAndOrdered(t *testing.T) {
	dir := t.TempDir()
	hs, err := openHints(dir, 1<<30, time.Now, newMetrics(nil), nil)
	require.NoError(t, err)
	var wg sync.WaitGroup
	for i := range 40 {
		wg.Go(func() { require.NoError(t, hs.add("peer-a", []byte(fmt.Sprintf("batch %d", i)))) })
	}
	wg.Wait()
	q := hs.queue("peer-a")
	require.Len(t, q.hints, 40)
	for i := 1; i < len(q.hints); i++ {
		require.Less(t, q.hints[i-1].seq, q.hints[i].seq)
	}

	again, err := openHints(dir, 1<<30, time.Now, newMetrics(nil), nil)
	require.NoError(t, err)
	q2 := again.queue("peer-a")
	require.Len(t, q2.hints, 40, "every hint survives a restart")
	for i := 1; i < len(q2.hints); i++ {
		require.Less(t, q2.hints[i-1].seq, q2.hints[i].seq)
	}
}

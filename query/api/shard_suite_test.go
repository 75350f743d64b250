package api

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/prometheus/storage"
	"github.com/stretchr/testify/require"

	"github.com/kilnhq/kiln/shard"
)

// TestAPIOverShard runs the whole API suite over Kiln's own storage engine:
// every answer must be the one the Prometheus tsdb gives.
func TestAPIOverShard(t *testing.T) {
	testAPISuite(t, func(t testing.TB) storage.Storage {
		db, err := shard.Open(shard.Config{MemTableSize: 8 << 20}, prometheus.NewRegistry(), nil)
		require.NoError(t, err)
		t.Cleanup(func() { _ = db.Close() })
		return db
	})
}

package shard_test

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/prometheus/storage"
	"github.com/stretchr/testify/require"

	"github.com/kilnhq/kiln/query/conformance"
	"github.com/kilnhq/kiln/shard"
)

// knownFailures lists conformance evals Kiln does not pass, keyed by
// "file:line" of the eval command, with the reason. CI skips them; run with
// KILN_CONFORMANCE_ALL=1 to run them too.
var knownFailures = map[string]string{}

// TestPromQLConformance runs every eval of Prometheus's PromQL test data
// against Kiln's storage: data goes in through shard's appender and the
// engine reads it through shard's Queryable.
func TestPromQLConformance(t *testing.T) {
	if testing.Short() {
		t.Skip("conformance suite skipped in -short mode")
	}
	conformance.Run(t, func(t testing.TB) storage.Storage { return openTestDB(t) }, knownFailures)
}

func openTestDB(t testing.TB) *shard.DB {
	db, err := shard.Open(shard.Config{MemTableSize: 8 << 20}, prometheus.NewRegistry(), nil)
	require.NoError(t, err)
	return db
}

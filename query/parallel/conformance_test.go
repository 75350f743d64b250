package parallel_test

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/prometheus/promql/parser"
	"github.com/prometheus/prometheus/promql/promqltest"
	"github.com/prometheus/prometheus/storage"
	"github.com/stretchr/testify/require"

	"github.com/kilnhq/kiln/query/conformance"
	"github.com/kilnhq/kiln/query/parallel"
	"github.com/kilnhq/kiln/shard"
)

// TestPromQLConformanceSliced runs Prometheus's PromQL test data through the
// slicing engine over Kiln's storage: every sliced aggregation must give
// what the engine gives unsliced, annotations included. Three slices, so
// that the test data's few series spread unevenly and some slices are
// empty.
func TestPromQLConformanceSliced(t *testing.T) {
	if testing.Short() {
		t.Skip("conformance suite skipped in -short mode")
	}
	outer := promqltest.NewTestEngine(t, false, 0, promqltest.DefaultMaxSamplesPerQuery)
	sub := promqltest.NewTestEngine(t, false, 0, promqltest.DefaultMaxSamplesPerQuery)
	reg := prometheus.NewRegistry()
	e := parallel.New(parallel.Config{Slices: 3}, outer, sub, parser.NewParser(promqltest.TestParserOpts), reg, nil)
	conformance.RunEngine(t, func(t testing.TB) storage.Storage { return openTestDB(t) }, nil, e)

	// The suite must have exercised slicing, not passed by leaving every
	// query to the engine.
	sliced := counter(t, reg, "kiln_query_sliced_total")
	fallbacks := counter(t, reg, "kiln_query_slice_fallbacks_total")
	t.Logf("%v queries sliced, %v of them evaluated again unsliced", sliced, fallbacks)
	require.Greater(t, sliced, 1000.0)
	require.Less(t, fallbacks, sliced)
}

func counter(t *testing.T, reg *prometheus.Registry, name string) float64 {
	mfs, err := reg.Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	t.Fatalf("no metric %s", name)
	return 0
}

func openTestDB(t testing.TB) *shard.DB {
	db, err := shard.Open(shard.Config{MemTableSize: 8 << 20}, prometheus.NewRegistry(), nil)
	require.NoError(t, err)
	return db
}

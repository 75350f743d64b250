package api

import (
	"testing"

	"github.com/prometheus/prometheus/storage"
	"github.com/prometheus/prometheus/util/teststorage"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// Process-wide fasthttp helpers, started once and never stopped:
		// the pool behind its compressors and the Date header ticker.
		goleak.IgnoreTopFunction("github.com/valyala/fasthttp/stackless.funcWorker"),
		goleak.IgnoreAnyFunction("github.com/valyala/fasthttp.updateServerDate.func1"),
	)
}

// TestAPI runs the suite over Prometheus's tsdb, the reference storage.
// Running it over another storage is one line:
//
//	testAPISuite(t, func(t testing.TB) storage.Storage { return shard.NewForTest(t) })
func TestAPI(t *testing.T) {
	testAPISuite(t, func(t testing.TB) storage.Storage { return teststorage.New(t) })
}

// storageFactory creates an empty storage, closed by t's cleanup.
type storageFactory func(t testing.TB) storage.Storage

// testAPISuite checks every endpoint against the fixture data set. Read-only
// cases share one server; cases that need their own configuration (limits,
// readiness, blocking storage) start their own.
func testAPISuite(t *testing.T, newStorage storageFactory) {
	s := newStorage(t)
	loadFixture(t, s)
	env := newTestAPI(t, s)

	shared := []struct {
		name string
		fn   func(*testing.T, *testEnv)
	}{
		{"InstantQueryJSON", testInstantQueryJSON},
		{"RangeQueryJSON", testRangeQueryJSON},
		{"NativeHistogramJSON", testNativeHistogramJSON},
		{"ScalarAndStringJSON", testScalarAndStringJSON},
		{"Annotations", testAnnotations},
		{"QueryParams", testQueryParams},
		{"QueryPOST", testQueryPOST},
		{"QueryClient", testQueryClient},
		{"QueryBadInput", testQueryBadInput},
		{"QueryExemplars", testQueryExemplars},
		{"FormatQuery", testFormatQuery},
		{"ParseQuery", testParseQuery},
		{"Series", testSeries},
		{"LabelNames", testLabelNames},
		{"LabelValues", testLabelValues},
		{"Metadata", testMetadata},
		{"StatusEndpoints", testStatusEndpoints},
		{"TSDBStatus", testTSDBStatus},
		{"Routing", testRouting},
		{"Metrics", testMetricsEndpoint},
		{"Federate", testFederate},
		{"FederateProtobuf", testFederateProtobuf},
		{"RemoteReadSamples", testRemoteReadSamples},
		{"RemoteReadStreamed", testRemoteReadStreamed},
	}
	for _, tc := range shared {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, env) })
	}

	own := []struct {
		name string
		fn   func(*testing.T, storageFactory)
	}{
		{"QueryTimeout", testQueryTimeout},
		{"MaxSamples", testMaxSamples},
		{"ConcurrencyLimit", testConcurrencyLimit},
		{"CloseCancelsQueries", testCloseCancelsQueries},
		{"StorageWarnings", testStorageWarnings},
		{"Unavailable", testUnavailable},
		{"Readiness", testReadiness},
	}
	for _, tc := range own {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, newStorage) })
	}
}

// newFixtureEnv is a server over a fresh storage holding the fixture.
func newFixtureEnv(t *testing.T, newStorage storageFactory, opts ...envOption) (*testEnv, storage.Storage) {
	s := newStorage(t)
	loadFixture(t, s)
	return newTestAPI(t, s, opts...), s
}

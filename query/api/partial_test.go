package api

import (
	"net/http"
	"net/url"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/kilnhq/kiln/cluster/ring"
	"github.com/kilnhq/kiln/query/fanout"
	"github.com/kilnhq/kiln/shard"
)

// halfTopo is a two-node cluster whose other node is dead: the partitions
// only it owns are missing.
type halfTopo struct{ r *ring.Ring }

func (halfTopo) Self() string           { return "self" }
func (h halfTopo) Ring() *ring.Ring     { return h.r }
func (halfTopo) Alive(name string) bool { return name == "self" }

func TestPartialResponseParameter(t *testing.T) {
	db, err := shard.Open(shard.Config{MemTableSize: 8 << 20}, prometheus.NewRegistry(), nil)
	require.NoError(t, err)
	t.Cleanup(func() { _ = db.Close() })
	loadFixture(t, db)
	r, err := ring.New([]ring.Member{{Name: "self", Addr: "127.0.0.1:1"}, {Name: "gone", Addr: "127.0.0.1:1"}}, 1, 1)
	require.NoError(t, err)
	fq, err := fanout.New(fanout.Config{}, halfTopo{r}, db, nil, nil)
	require.NoError(t, err)
	env := newTestAPI(t, db, func(_ *Config, d *Deps) { d.Queryable = fq })

	for _, path := range []string{
		"/api/v1/query?query=up",
		"/api/v1/query_range?query=up&start=0&end=300&step=60",
		"/api/v1/series?match[]=up",
		"/api/v1/labels",
		"/api/v1/label/job/values",
	} {
		status, _, body := env.get(t, path)
		require.Equal(t, http.StatusServiceUnavailable, status, path)
		require.Contains(t, body, `"errorType":"unavailable"`, path)
		require.Contains(t, body, "partitions have no reachable replica", path)

		status, _, body = env.get(t, path+"&partial_response=true")
		if path == "/api/v1/labels" || path == "/api/v1/label/job/values" {
			status, _, body = env.get(t, path+"?partial_response=true")
		}
		require.Equal(t, http.StatusOK, status, path)
		require.Contains(t, body, `"warnings":["partial response: partitions unavailable:`, path)

		status, _, body = env.get(t, path+"&partial_response=maybe")
		if path == "/api/v1/labels" || path == "/api/v1/label/job/values" {
			status, _, body = env.get(t, path+"?partial_response=maybe")
		}
		require.Equal(t, http.StatusBadRequest, status, path)
		require.Contains(t, body, `"errorType":"bad_data"`, path)
	}

	status, _, body := env.postForm(t, "/api/v1/query", url.Values{"query": {"up"}, "partial_response": {"true"}})
	require.Equal(t, http.StatusOK, status)
	require.Contains(t, body, "partial response")

	status, _, _ = env.get(t, "/federate?match[]=up&partial_response=x")
	require.Equal(t, http.StatusBadRequest, status)
	status, _, _ = env.get(t, "/federate?match[]=up&partial_response=true")
	require.Equal(t, http.StatusOK, status)
}

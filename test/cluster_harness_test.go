package test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"path/filepath"
	"sort"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// clusterNode is one kiln process of a test cluster with its addresses.
type clusterNode struct {
	*proc
	name   string
	gossip string
	raft   string
	dir    string
}

// clusterStatus is the part of /api/v1/status/cluster the tests read.
type clusterStatus struct {
	Self      string `json:"self"`
	ClusterID string `json:"cluster_id"`
	Epoch     uint64 `json:"epoch"`
	RF        int    `json:"replication_factor"`
	Leader    struct {
		Name string `json:"name"`
	} `json:"leader"`
	Members []struct {
		Name       string `json:"name"`
		State      string `json:"gossip_state"`
		RaftRole   string `json:"raft_role"`
		InRing     bool   `json:"in_ring"`
		Removed    bool   `json:"removed"`
		Partitions int    `json:"partitions"`
		Settled    int    `json:"partitions_settled"`
	} `json:"members"`
	UnderReplicated int `json:"under_replicated_partitions"`
	Moving          int `json:"moving_partitions"`
	Handoff         map[string]struct {
		Hints int   `json:"hints"`
		Bytes int64 `json:"bytes"`
	} `json:"handoff"`
}

// newClusterNode allocates the addresses of node i without starting it.
func newClusterNode(t *testing.T, base string, i int) *clusterNode {
	return &clusterNode{
		name:   fmt.Sprintf("node-%d", i),
		gossip: freeAddr(t),
		raft:   freeAddr(t),
		dir:    filepath.Join(base, fmt.Sprintf("node-%d", i)),
	}
}

// clusterArgs are the flags of a node joining peers (none for the first).
func (n *clusterNode) args(rf int, peers []*clusterNode, extra ...string) []string {
	a := []string{
		"--cluster.node-name=" + n.name,
		"--cluster.listen-address=" + n.gossip,
		"--cluster.raft-address=" + n.raft,
		"--cluster.replication-factor=" + strconv.Itoa(rf),
	}
	for _, p := range peers {
		a = append(a, "--cluster.peer="+p.gossip)
	}
	return append(a, extra...)
}

// startCluster starts n nodes with replication factor rf: the first
// bootstraps, the others join it. It returns once every node is ready and
// sees all n members in the ring.
func startCluster(t *testing.T, n, rf int, extra ...string) []*clusterNode {
	t.Helper()
	base := t.TempDir()
	nodes := make([]*clusterNode, n)
	for i := range nodes {
		nodes[i] = newClusterNode(t, base, i)
	}
	for i, nd := range nodes {
		var peers []*clusterNode
		if i > 0 {
			peers = nodes[:1]
		}
		nd.proc = spawnKiln(t, nd.dir, freeAddr(t), nd.args(rf, peers, extra...)...)
	}
	for _, nd := range nodes {
		nd.waitReady()
	}
	waitMembers(t, nodes, n)
	return nodes
}

// waitMembers waits until every node's ring holds want members.
func waitMembers(t *testing.T, nodes []*clusterNode, want int) {
	t.Helper()
	for _, nd := range nodes {
		require.Eventually(t, func() bool {
			st, err := nd.status()
			if err != nil {
				return false
			}
			in := 0
			for _, m := range st.Members {
				if m.InRing {
					in++
				}
			}
			return in == want
		}, 60*time.Second, 100*time.Millisecond, "%s never saw %d members in the ring", nd.name, want)
	}
}

// status reads the node's /api/v1/status/cluster.
func (n *clusterNode) status() (clusterStatus, error) {
	var st clusterStatus
	return st, getData(http.DefaultClient, "http://"+n.addr+"/api/v1/status/cluster", &st)
}

// getData GETs a Prometheus API URL and decodes the envelope's data into
// into; an error envelope is an error.
func getData(c *http.Client, url string, into any) error {
	resp, err := c.Get(url)
	if err != nil {
		return err
	}
	defer func() { _ = resp.Body.Close() }()
	var pr promResponse
	if err := json.NewDecoder(resp.Body).Decode(&pr); err != nil {
		return err
	}
	if pr.Status != "success" {
		return fmt.Errorf("%s: %s", pr.ErrorType, pr.Error)
	}
	return json.Unmarshal(pr.Data, into)
}

// apiGet calls a Prometheus API endpoint and returns the decoded envelope.
func apiGet(t *testing.T, addr, path string, params url.Values) promResponse {
	t.Helper()
	resp, err := http.Get("http://" + addr + path + "?" + params.Encode())
	require.NoError(t, err)
	defer func() { _ = resp.Body.Close() }()
	var pr promResponse
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&pr))
	return pr
}

// canonical re-encodes API data with vector/matrix results and string lists
// sorted, so answers from different nodes compare equal when they hold the
// same data in another order.
func canonical(t *testing.T, data json.RawMessage) string {
	t.Helper()
	var v any
	require.NoError(t, json.Unmarshal(data, &v))
	v = sortResults(v)
	out, err := json.Marshal(v)
	require.NoError(t, err)
	return string(out)
}

func sortResults(v any) any {
	switch x := v.(type) {
	case map[string]any:
		for k, e := range x {
			x[k] = sortResults(e)
		}
		return x
	case []any:
		for i := range x {
			x[i] = sortResults(x[i])
		}
		sort.SliceStable(x, func(i, j int) bool {
			a, _ := json.Marshal(x[i])
			b, _ := json.Marshal(x[j])
			return string(a) < string(b)
		})
		return x
	default:
		return v
	}
}

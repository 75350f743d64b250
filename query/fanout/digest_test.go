package fanout

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/storage"
	"github.com/stretchr/testify/require"

	"github.com/kilnhq/kiln/shard"
)

// digestCounts returns node nd's replica comparisons so far: partitions
// whose cells agreed, whose Select digests agreed, and that differed.
func digestCounts(nd *node) (cells, equal, different float64) {
	return testutil.ToFloat64(nd.q.metrics.digests.WithLabelValues("cells_equal")),
		testutil.ToFloat64(nd.q.metrics.digests.WithLabelValues("equal")),
		testutil.ToFloat64(nd.q.metrics.digests.WithLabelValues("different"))
}

// appendTo writes one sample of ls to each db, committed.
func appendTo(t *testing.T, ls labels.Labels, ts int64, v float64, dbs ...*shard.DB) {
	t.Helper()
	for _, db := range dbs {
		app := db.AppenderV2(context.Background())
		_, err := app.Append(0, ls, 0, ts, v, nil, nil, storage.AOptions{})
		require.NoError(t, err)
		require.NoError(t, app.Commit())
	}
}

// Replicas that differ, each difference on a write quorum (2 of 3) as an
// acknowledged write is: through every node the answer is the union, so
// the partitions whose digests differ were fetched whole and merged, and
// the others were read from the local replica alone: most on their cells,
// those whose cells differ but not in the selected series on the Select's
// digests.
func TestDigestReadsMergeDivergentReplicas(t *testing.T) {
	c := newCluster(t, 3, 3, Config{Timeout: 10 * time.Second})
	c.load(t, 60)
	n0, n1, n2 := c.nodes[0].db, c.nodes[1].db, c.nodes[2].db
	late := int64(samples-1)*step + step/2
	existing := labels.FromStrings("__name__", "http_requests_total", "job", "job0", "instance", "i0", "code", "200")
	appendTo(t, existing, late, 1e6, c.ref, n0, n1)
	appendTo(t, labels.FromStrings("__name__", "only_two", "x", "1"), 5*step, 42, c.ref, n1, n2)
	appendTo(t, labels.FromStrings("__name__", "only_two", "x", "2"), late, 7, c.ref, n0, n2)

	for _, nd := range c.nodes {
		requireSameAsReference(t, c, nd.q)
		cells, equal, different := digestCounts(nd)
		require.Positive(t, cells, nd.name)
		require.Positive(t, equal, nd.name)
		require.Positive(t, different, nd.name)
		// Asked sorted, the local and merged parts come out in order.
		require.Equal(t, sortedLabels(t, c.ref), sortedLabels(t, nd.q), nd.name)
	}
}

// sortedLabels selects every series sorted and returns their labels.
func sortedLabels(t *testing.T, q storage.Queryable) []string {
	t.Helper()
	qr, err := q.Querier(0, samples*step)
	require.NoError(t, err)
	defer func() { _ = qr.Close() }()
	ss := qr.Select(context.Background(), true, nil, allMatcher)
	var out []labels.Labels
	for ss.Next() {
		out = append(out, ss.At().Labels())
	}
	require.NoError(t, ss.Err())
	require.True(t, slices.IsSortedFunc(out, labels.Compare))
	strs := make([]string, len(out))
	for i, ls := range out {
		strs[i] = ls.String()
	}
	return strs
}

// A peer without the digest endpoint (an older version) answers 404: its
// partitions are read whole, and the answer is the same.
func TestDigestReadsFromPeerWithoutDigests(t *testing.T) {
	c := newCluster(t, 3, 3, Config{Timeout: 10 * time.Second})
	for _, nd := range c.nodes[1:] {
		nd.noDigestEndpoint.Store(true)
	}
	c.load(t, 40)
	requireSameAsReference(t, c, c.nodes[0].q)
	cells, equal, different := digestCounts(c.nodes[0])
	require.Zero(t, cells)
	require.Zero(t, equal)
	require.Positive(t, different)
}

// Cells agree on identical replicas, and whole reads give the same
// answers as digest-first reads.
func TestDigestReadsEqualWholeReads(t *testing.T) {
	c := newCluster(t, 3, 3, Config{Timeout: 10 * time.Second})
	c.load(t, 40)
	nd := c.nodes[0]
	requireSameAsReference(t, c, nd.q)
	cells, equal, different := digestCounts(nd)
	require.Positive(t, cells)
	require.Zero(t, equal)
	require.Zero(t, different)
	nd.q.noDigests = true
	requireSameAsReference(t, c, nd.q)
	again, _, _ := digestCounts(nd)
	require.Equal(t, cells, again)
}

func TestDigestFrameRoundTrip(t *testing.T) {
	var w bytesBuffer
	fw := &frameWriter{w: &w}
	require.NoError(t, fw.digest(1023, partDigest{series: 3, sum: 1<<64 - 1}))
	require.NoError(t, fw.str(frameWarning, "w"))
	require.NoError(t, fw.end())
	buf := []byte(w)
	res := &digestResult{sums: map[uint16]partDigest{}}
	res.parts.Add(1023)
	require.NoError(t, readDigests(newFrameReader(buf), res))
	require.Equal(t, map[uint16]partDigest{1023: {series: 3, sum: 1<<64 - 1}}, res.sums)
	require.Len(t, res.ws, 1)

	// A digest of a partition not asked for is a malformed answer.
	res = &digestResult{sums: map[uint16]partDigest{}}
	res.parts.Add(1)
	require.ErrorIs(t, readDigests(newFrameReader(buf), res), errMalformed)
	// So is a partition number past the last.
	_, err := newFrameReader([]byte{frameDigest, 0x80, 0x08, 1, 0, 0, 0, 0, 0, 0, 0, 0}).next()
	require.ErrorIs(t, err, errMalformed)
}

type bytesBuffer []byte

func (b *bytesBuffer) Write(p []byte) (int, error) {
	*b = append(*b, p...)
	return len(p), nil
}

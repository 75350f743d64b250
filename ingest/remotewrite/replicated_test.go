package remotewrite

import (
	"errors"
	"fmt"
	"testing"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/prompb"
	writev2 "github.com/prometheus/prometheus/prompb/io/prometheus/write/v2"
	"github.com/prometheus/prometheus/storage"
	"github.com/stretchr/testify/require"
)

// The Commit errors of ingest/replicate, recognised by their methods.
type quorumError struct{}

func (quorumError) Error() string     { return "write quorum not reached" }
func (quorumError) Unavailable() bool { return true }

type replicaRejections struct {
	ls   labels.Labels
	t    int64
	hist bool
	nEx  int
}

func (e *replicaRejections) Error() string { return "refused by replicas" }
func (e *replicaRejections) EachRejected(fn func(labels.Labels, int64, bool, int, error)) {
	fn(e.ls, e.t, e.hist, e.nEx, fmt.Errorf("peer b: %w", storage.ErrDuplicateSampleForTimestamp))
}

func TestCommitQuorumFailureIs503(t *testing.T) {
	st := &fakeStorage{commitErr: fmt.Errorf("partition 7: %w", quorumError{})}
	h, _ := newTestHandler(t, Config{}, st)
	b := newV2Builder()
	b.add(writev2.TimeSeries{LabelsRefs: b.refs("__name__", "a"), Samples: []writev2.Sample{{Value: 1, Timestamp: 1}}})
	res := postV2(h, b.build())
	require.Equal(t, 503, res.code, res.body)
	require.Equal(t, "1", res.retryAfter)
	require.Equal(t, "0/0/0", res.samples+"/"+res.histograms+"/"+res.exemplars)
}

func TestCommitReplicaRejectionIsPartial400(t *testing.T) {
	st := &fakeStorage{commitErr: &replicaRejections{ls: labels.FromStrings("__name__", "a"), t: 2}}
	h, _ := newTestHandler(t, Config{}, st)
	b := newV2Builder()
	b.add(writev2.TimeSeries{LabelsRefs: b.refs("__name__", "a"), Samples: []writev2.Sample{{Value: 1, Timestamp: 1}, {Value: 5, Timestamp: 2}}})
	b.add(writev2.TimeSeries{LabelsRefs: b.refs("__name__", "b"), Samples: []writev2.Sample{{Value: 1, Timestamp: 1}}})
	res := postV2(h, b.build())
	require.Equal(t, 400, res.code, res.body)
	require.Equal(t, "2/0/0", res.samples+"/"+res.histograms+"/"+res.exemplars, "3 appended, 1 refused by a replica")
	require.Contains(t, res.body, "duplicate sample for timestamp")
	require.Contains(t, res.body, `{__name__="a"}`)

	// 1.0 gets the same code.
	res = postV1(h, &prompb.WriteRequest{Timeseries: []prompb.TimeSeries{
		{Labels: lbls("__name__", "a"), Samples: []prompb.Sample{{Value: 5, Timestamp: 2}}},
	}})
	require.Equal(t, 400, res.code, res.body)
}

func TestOtherCommitErrorStays500(t *testing.T) {
	st := &fakeStorage{commitErr: errors.New("disk on fire")}
	h, _ := newTestHandler(t, Config{}, st)
	res := postV1(h, &prompb.WriteRequest{Timeseries: []prompb.TimeSeries{
		{Labels: lbls("__name__", "a"), Samples: []prompb.Sample{{Value: 5, Timestamp: 2}}},
	}})
	require.Equal(t, 500, res.code, res.body)
	require.Empty(t, res.retryAfter)
}

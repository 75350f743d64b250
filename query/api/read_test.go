package api

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/url"
	"testing"
	"time"

	"github.com/gogo/protobuf/proto"
	"github.com/golang/snappy"
	config_util "github.com/prometheus/common/config"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/config"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/prompb"
	"github.com/prometheus/prometheus/storage/remote"
	"github.com/prometheus/prometheus/tsdb/chunkenc"
	"github.com/stretchr/testify/require"
)

// readSeries is what a remote read returned for one series.
type readSeries struct {
	floats     []float64 // values, one per fixture sample
	times      []int64
	histCounts []float64 // counts of histogram samples
}

// remoteRead reads through Prometheus's own remote read client, i.e. what
// a Prometheus configured with remote_read pointing at Kiln does.
func remoteRead(t *testing.T, env *testEnv, typ prompb.ReadRequest_ResponseType, mint, maxt int64, ms ...*labels.Matcher) map[string]readSeries {
	t.Helper()
	out, err := tryRemoteRead(t, env, typ, mint, maxt, ms...)
	require.NoError(t, err)
	return out
}

func tryRemoteRead(t *testing.T, env *testEnv, typ prompb.ReadRequest_ResponseType, mint, maxt int64, ms ...*labels.Matcher) (map[string]readSeries, error) {
	t.Helper()
	u, err := url.Parse(env.url + "/api/v1/read")
	require.NoError(t, err)
	c, err := remote.NewReadClient("kiln-test", &remote.ClientConfig{
		URL:                   &config_util.URL{URL: u},
		Timeout:               model.Duration(10 * time.Second),
		ChunkedReadLimit:      config.DefaultChunkedReadLimit,
		AcceptedResponseTypes: []prompb.ReadRequest_ResponseType{typ},
	})
	require.NoError(t, err)
	defer c.(*remote.Client).Client.CloseIdleConnections()

	query, err := remote.ToQuery(mint, maxt, ms, nil)
	require.NoError(t, err)
	ss, err := c.Read(context.Background(), query, true)
	if err != nil {
		return nil, err
	}

	out := map[string]readSeries{}
	var it chunkenc.Iterator
	for ss.Next() {
		s := ss.At()
		var rs readSeries
		it = s.Iterator(it)
		for vt := it.Next(); vt != chunkenc.ValNone; vt = it.Next() {
			switch vt {
			case chunkenc.ValFloat:
				ts, v := it.At()
				rs.times = append(rs.times, ts)
				rs.floats = append(rs.floats, v)
			case chunkenc.ValHistogram, chunkenc.ValFloatHistogram:
				ts, h := it.AtFloatHistogram(nil)
				rs.times = append(rs.times, ts)
				rs.histCounts = append(rs.histCounts, h.Count)
			}
		}
		if err := it.Err(); err != nil {
			return nil, err
		}
		out[s.Labels().String()] = rs
	}
	return out, ss.Err()
}

func fixtureTimes(from, to int) []int64 {
	var ts []int64
	for i := from; i <= to; i++ {
		ts = append(ts, int64(i)*fixtureStep.Milliseconds())
	}
	return ts
}

func repeat(v float64, n int) []float64 {
	out := make([]float64, n)
	for i := range out {
		out[i] = v
	}
	return out
}

func testRemoteReadSamples(t *testing.T, env *testEnv) {
	testRemoteRead(t, env, prompb.ReadRequest_SAMPLES)

	// The raw protocol: snappy-compressed protobuf both ways.
	req := &prompb.ReadRequest{Queries: []*prompb.Query{{
		StartTimestampMs: 285000, EndTimestampMs: 300000,
		Matchers: []*prompb.LabelMatcher{{Type: prompb.LabelMatcher_EQ, Name: "__name__", Value: "up"}},
	}}}
	data, err := proto.Marshal(req)
	require.NoError(t, err)
	resp, err := env.http.Post(env.url+"/api/v1/read", "application/x-protobuf", bytes.NewReader(snappy.Encode(nil, data)))
	require.NoError(t, err)
	defer func() { _ = resp.Body.Close() }()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Equal(t, "application/x-protobuf", resp.Header.Get("Content-Type"))
	require.Equal(t, "snappy", resp.Header.Get("Content-Encoding"))
	compressed, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	raw, err := snappy.Decode(nil, compressed)
	require.NoError(t, err)
	var rr prompb.ReadResponse
	require.NoError(t, proto.Unmarshal(raw, &rr))
	require.Len(t, rr.Results, 1)
	require.Len(t, rr.Results[0].Timeseries, 2)
	require.Equal(t, []prompb.Sample{{Value: 1, Timestamp: 285000}, {Value: 1, Timestamp: 300000}}, rr.Results[0].Timeseries[0].Samples)

	// Garbage is rejected.
	resp2, err := env.http.Post(env.url+"/api/v1/read", "application/x-protobuf", bytes.NewReader([]byte("not snappy")))
	require.NoError(t, err)
	_, _ = io.Copy(io.Discard, resp2.Body)
	_ = resp2.Body.Close()
	require.Equal(t, http.StatusBadRequest, resp2.StatusCode)
}

func testRemoteReadStreamed(t *testing.T, env *testEnv) {
	testRemoteRead(t, env, prompb.ReadRequest_STREAMED_XOR_CHUNKS)
}

func testRemoteRead(t *testing.T, env *testEnv, typ prompb.ReadRequest_ResponseType) {
	got := remoteRead(t, env, typ, 0, 300000, labels.MustNewMatcher(labels.MatchEqual, "job", "api"),
		labels.MustNewMatcher(labels.MatchRegexp, "__name__", "up|http_requests_total|test_histogram"))
	reqs200 := make([]float64, fixtureSamples)
	reqs500 := make([]float64, fixtureSamples)
	var histCounts []float64
	for i := range fixtureSamples {
		reqs200[i] = float64(10 * i)
		reqs500[i] = float64(i)
		histCounts = append(histCounts, float64(4*(i+1)))
	}
	all := fixtureTimes(0, fixtureSamples-1)
	require.Equal(t, map[string]readSeries{
		`{__name__="http_requests_total", code="200", job="api"}`: {floats: reqs200, times: all},
		`{__name__="http_requests_total", code="500", job="api"}`: {floats: reqs500, times: all},
		`{__name__="test_histogram", job="api"}`:                  {histCounts: histCounts, times: all},
		`{__name__="up", instance="a", job="api"}`:                {floats: repeat(1, fixtureSamples), times: all},
		`{__name__="up", instance="b", job="api"}`:                {floats: repeat(0, fixtureSamples), times: all},
	}, got)

	// A narrower window.
	got = remoteRead(t, env, typ, 270000, 300000, labels.MustNewMatcher(labels.MatchEqual, "__name__", "up"),
		labels.MustNewMatcher(labels.MatchEqual, "instance", "a"))
	require.Equal(t, map[string]readSeries{
		`{__name__="up", instance="a", job="api"}`: {floats: repeat(1, 3), times: fixtureTimes(18, 20)},
	}, got)
}

package remotewrite_test

import (
	"fmt"

	"github.com/prometheus/prometheus/prompb"

	"github.com/kilnhq/kiln/ingest/remotewrite"
)

// ExampleDecodeV1 decodes an uncompressed prometheus.WriteRequest. Decoding
// into the same Request again reuses its memory; the result aliases the
// input buffer.
func ExampleDecodeV1() {
	body, _ := (&prompb.WriteRequest{Timeseries: []prompb.TimeSeries{{
		Labels:  []prompb.Label{{Name: "job", Value: "node"}, {Name: "__name__", Value: "up"}},
		Samples: []prompb.Sample{{Value: 1, Timestamp: 1700000000000}},
	}, {
		Labels:  []prompb.Label{{Name: "job", Value: "no name"}},
		Samples: []prompb.Sample{{Value: 1, Timestamp: 1700000000000}},
	}}}).Marshal()

	var req remotewrite.Request
	if err := remotewrite.DecodeV1(body, &req); err != nil {
		fmt.Println("unusable body:", err)
		return
	}
	for _, ts := range req.Timeseries {
		if ts.Err != nil {
			fmt.Println("invalid:", ts.Err)
			continue
		}
		fmt.Println(ts.MetricName(), ts.Labels, ts.Samples)
	}
	// Output:
	// up [{__name__ up} {job node}] [{1 1700000000000 0}]
	// invalid: invalid labels: missing __name__ in {job="no name"}
}

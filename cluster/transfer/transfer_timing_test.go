package transfer

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/storage"
	"github.com/stretchr/testify/require"
)

// BenchmarkAntiEntropyPass times one full anti-entropy pass between two
// replicas holding the same data: series × 240 samples (1 h at 15 s), every
// partition compared, nothing to repair. It reports seconds per million
// samples held, to scale to a data set: the loadgen benchmark set (100k
// series, 24M samples) takes 24 × that.
func BenchmarkAntiEntropyPass(b *testing.B) {
	const series, steps = 20000, 240
	now := time.Now()
	a, c := twoNodes(b, now)
	for _, n := range []*node{a, c} {
		for s := 0; s < steps; s++ {
			app := n.db.AppenderV2(context.Background())
			ts := now.Add(-time.Hour + time.Duration(s)*15*time.Second).UnixMilli()
			for i := range series {
				_, err := app.Append(0, labels.FromStrings("__name__", "m", "i", fmt.Sprint(i)), 0, ts, float64(s*i), nil, nil, storage.AppendV2Options{})
				require.NoError(b, err)
			}
			require.NoError(b, app.Commit())
		}
	}
	b.ResetTimer()
	var st PassStats
	for range b.N {
		st = a.tr.CheckAll(context.Background())
	}
	require.Zero(b, st.Differing)
	b.ReportMetric(float64(b.Elapsed().Seconds())/float64(b.N)/(series*steps/1e6), "s/Msamples")
}

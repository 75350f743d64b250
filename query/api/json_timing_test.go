package api

import (
	"testing"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql"
)

// BenchmarkAppendMatrix encodes a typical range-query result: 100 series
// of 11,000 points (the per-series maximum) with realistic values.
func BenchmarkAppendMatrix(b *testing.B) {
	m := make(promql.Matrix, 100)
	for i := range m {
		m[i].Metric = labels.FromStrings("__name__", "http_requests_total", "job", "api", "instance", "host-"+itoa(i)+":9100")
		m[i].Floats = make([]promql.FPoint, 11000)
		for j := range m[i].Floats {
			m[i].Floats[j] = promql.FPoint{T: 1700000000000 + int64(j)*15000, F: float64(j) * 1.25}
		}
	}
	buf := appendMatrix(nil, m)
	b.SetBytes(int64(len(buf)))
	b.ReportAllocs()
	for b.Loop() {
		buf = appendMatrix(buf[:0], m)
	}
}

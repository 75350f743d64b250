package shard

import (
	"bytes"
	"context"
	"math"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
)

// BenchmarkExportImport moves a partition of 1000 series × 1 h at 15 s
// (240k samples), persisted and evicted to disk as after a few hours of
// ingest. MB/s is of the stream.
func BenchmarkExportImport(b *testing.B) {
	openDB := func(cfg Config) *DB {
		cfg.MemTableSize = 16 << 20
		db, err := Open(cfg, prometheus.NewRegistry(), nil)
		require.NoError(b, err)
		return db
	}
	src := openDB(Config{HeadWindow: time.Minute})
	defer func() { _ = src.Close() }()
	for i, ls := range seriesIn(testPart, "bench_metric", 1000) {
		ss := make([]sample, 240)
		for j := range ss {
			ss[j] = sample{t: int64(j) * 15000, f: float64(i*j%1000) + 0.25*float64(j%4)}
		}
		appendSamples(b, src, ls, ss...)
	}
	require.NoError(b, src.flush())
	var stream bytes.Buffer
	st, err := src.ExportPartition(context.Background(), testPart, math.MinInt64, math.MaxInt64, &stream, ExportOptions{})
	require.NoError(b, err)
	require.Equal(b, 240000, st.Samples)

	b.Run("export", func(b *testing.B) {
		b.SetBytes(int64(stream.Len()))
		b.ReportAllocs()
		var buf bytes.Buffer
		for b.Loop() {
			buf.Reset()
			if _, err := src.ExportPartition(context.Background(), testPart, math.MinInt64, math.MaxInt64, &buf, ExportOptions{}); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(st.Samples*b.N)/b.Elapsed().Seconds(), "samples/s")
	})
	b.Run("import", func(b *testing.B) {
		b.SetBytes(int64(stream.Len()))
		b.ReportAllocs()
		for range b.N {
			b.StopTimer()
			dst := openDB(Config{})
			b.StartTimer()
			ist, err := dst.ImportPartition(context.Background(), bytes.NewReader(stream.Bytes()))
			if err != nil || ist.Samples != st.Samples {
				b.Fatal(err, ist)
			}
			b.StopTimer()
			require.NoError(b, dst.Close())
			b.StartTimer()
		}
		b.ReportMetric(float64(st.Samples*b.N)/b.Elapsed().Seconds(), "samples/s")
	})
	b.Run("digest", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := src.PartitionDigest(context.Background(), testPart, 0, 3600*1000, 2*3600*1000); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(st.Samples*b.N)/b.Elapsed().Seconds(), "samples/s")
	})
}

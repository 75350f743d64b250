package shard

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

type metrics struct {
	seriesCreated, seriesRemoved prometheus.Counter
	samplesAppended              prometheus.Counter
	duplicates                   prometheus.Counter
	rejected                     *prometheus.CounterVec
	commitFailures               prometheus.Counter
	commitDuration               prometheus.Histogram
	flushDuration                prometheus.Histogram
	flushFailures                prometheus.Counter
	chunksPersisted              prometheus.Counter
	retentionDeletedChunks       prometheus.Counter
	diskChunkReads               prometheus.Counter
	selectSeries                 prometheus.Histogram
	startupSeconds               prometheus.Gauge
	walFsync                     prometheus.Histogram
}

func newMetrics(db *DB, reg prometheus.Registerer) *metrics {
	f := promauto.With(reg)
	m := &metrics{
		seriesCreated:          f.NewCounter(prometheus.CounterOpts{Name: "kiln_storage_series_created_total", Help: "Series created in memory (new or loaded at start-up)."}),
		seriesRemoved:          f.NewCounter(prometheus.CounterOpts{Name: "kiln_storage_series_removed_total", Help: "Series removed by retention."}),
		samplesAppended:        f.NewCounter(prometheus.CounterOpts{Name: "kiln_storage_samples_appended_total", Help: "Samples committed to storage."}),
		duplicates:             f.NewCounter(prometheus.CounterOpts{Name: "kiln_storage_duplicate_samples_total", Help: "Exact duplicate samples accepted idempotently and dropped."}),
		rejected:               f.NewCounterVec(prometheus.CounterOpts{Name: "kiln_storage_samples_rejected_total", Help: "Samples rejected, by reason."}, []string{"reason"}),
		commitFailures:         f.NewCounter(prometheus.CounterOpts{Name: "kiln_storage_commit_failures_total", Help: "Commits whose write-ahead record could not be made durable."}),
		commitDuration:         f.NewHistogram(prometheus.HistogramOpts{Name: "kiln_storage_commit_duration_seconds", Help: "Time to make a commit durable.", Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14)}),
		flushDuration:          f.NewHistogram(prometheus.HistogramOpts{Name: "kiln_storage_flush_duration_seconds", Help: "Time to persist chunks and truncate write-ahead records.", Buckets: prometheus.ExponentialBuckets(0.01, 2, 14)}),
		flushFailures:          f.NewCounter(prometheus.CounterOpts{Name: "kiln_storage_flush_failures_total", Help: "Failed flushes."}),
		chunksPersisted:        f.NewCounter(prometheus.CounterOpts{Name: "kiln_storage_chunks_persisted_total", Help: "Chunk writes to badger."}),
		retentionDeletedChunks: f.NewCounter(prometheus.CounterOpts{Name: "kiln_storage_retention_deleted_chunks_total", Help: "Chunks deleted by retention."}),
		diskChunkReads:         f.NewCounter(prometheus.CounterOpts{Name: "kiln_storage_disk_series_reads_total", Help: "Series whose chunks were read from disk for a query."}),
		selectSeries:           f.NewHistogram(prometheus.HistogramOpts{Name: "kiln_storage_select_series", Help: "Series matched per Select.", Buckets: prometheus.ExponentialBuckets(1, 4, 10)}),
		walFsync:               f.NewHistogram(prometheus.HistogramOpts{Name: "kiln_storage_wal_fsync_duration_seconds", Help: "Duration of write-ahead segment fsyncs (one may cover several commits).", Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16)}),
		startupSeconds:         f.NewGauge(prometheus.GaugeOpts{Name: "kiln_storage_startup_duration_seconds", Help: "Time the last start-up took to load series and replay write-ahead records."}),
	}
	f.NewGaugeFunc(prometheus.GaugeOpts{Name: "kiln_storage_series", Help: "Series in storage."}, func() float64 {
		db.index.mu.RLock()
		defer db.index.mu.RUnlock()
		return float64(len(db.index.all))
	})
	f.NewGaugeFunc(prometheus.GaugeOpts{Name: "kiln_storage_wal_bytes", Help: "Write-ahead bytes not yet covered by persisted chunks."}, func() float64 {
		return float64(db.walBytes.Load())
	})
	f.NewGaugeFunc(prometheus.GaugeOpts{Name: "kiln_storage_disk_bytes", Help: "Bytes on disk: badger (LSM + value log) and write-ahead segments."}, func() float64 {
		lsm, vlog := db.bdb.Size()
		if db.wal != nil {
			vlog += db.wal.bytes.Load()
		}
		return float64(lsm + vlog)
	})
	if db.wal != nil {
		db.wal.fsync = m.walFsync
		f.NewGaugeFunc(prometheus.GaugeOpts{Name: "kiln_storage_wal_segments", Help: "Write-ahead segment files on disk."}, func() float64 {
			return float64(db.wal.segments.Load())
		})
		f.NewGaugeFunc(prometheus.GaugeOpts{Name: "kiln_storage_wal_segment_bytes", Help: "Bytes of the write-ahead segment files on disk."}, func() float64 {
			return float64(db.wal.bytes.Load())
		})
	}
	return m
}

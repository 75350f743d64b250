package replicate

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

type metrics struct {
	forwardedSamples *prometheus.CounterVec
	forwardBytes     *prometheus.CounterVec
	forwardDuration  prometheus.Histogram
	forwardErrors    *prometheus.CounterVec
	quorumFailures   prometheus.Counter
	hintsPending     *prometheus.GaugeVec
	hintBytes        *prometheus.GaugeVec
	hintsReplayed    prometheus.Counter
	hintsDropped     prometheus.Counter
	received         prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	f := promauto.With(reg)
	return &metrics{
		forwardedSamples: f.NewCounterVec(prometheus.CounterOpts{
			Name: "kiln_cluster_forwarded_samples_total",
			Help: "Samples and histograms forwarded to a peer and acknowledged by it.",
		}, []string{"peer"}),
		forwardBytes: f.NewCounterVec(prometheus.CounterOpts{
			Name: "kiln_cluster_forward_bytes_total",
			Help: "Request bytes sent to a peer on the replicated write path (compressed).",
		}, []string{"peer"}),
		forwardDuration: f.NewHistogram(prometheus.HistogramOpts{
			Name:                        "kiln_cluster_forward_duration_seconds",
			Help:                        "Duration of forwarded write requests, slot wait included.",
			Buckets:                     prometheus.ExponentialBuckets(0.0005, 4, 10),
			NativeHistogramBucketFactor: 1.1,
		}),
		forwardErrors: f.NewCounterVec(prometheus.CounterOpts{
			Name: "kiln_cluster_forward_errors_total",
			Help: "Forwarded write requests that failed (including no in-flight slot within the timeout).",
		}, []string{"peer"}),
		quorumFailures: f.NewCounter(prometheus.CounterOpts{
			Name: "kiln_cluster_write_quorum_failures_total",
			Help: "Commits refused because a partition missed its write quorum or no ring was known.",
		}),
		hintsPending: f.NewGaugeVec(prometheus.GaugeOpts{
			Name: "kiln_cluster_hints_pending",
			Help: "Hinted-handoff batches waiting for a peer.",
		}, []string{"peer"}),
		hintBytes: f.NewGaugeVec(prometheus.GaugeOpts{
			Name: "kiln_cluster_hint_bytes",
			Help: "Bytes of hinted-handoff batches waiting for a peer.",
		}, []string{"peer"}),
		hintsReplayed: f.NewCounter(prometheus.CounterOpts{
			Name: "kiln_cluster_hints_replayed_total",
			Help: "Hints delivered to their peer and deleted.",
		}),
		hintsDropped: f.NewCounter(prometheus.CounterOpts{
			Name: "kiln_cluster_hints_dropped_total",
			Help: "Hints dropped undelivered: over the per-peer byte limit, or corrupt.",
		}),
		received: f.NewCounter(prometheus.CounterOpts{
			Name: "kiln_cluster_replica_samples_received_total",
			Help: "Samples and histograms received from peers and committed locally.",
		}),
	}
}

package remotewrite

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

// protocol is the negotiated message type.
type protocol uint8

const (
	protoUnknown protocol = iota // before or failing negotiation
	protoV1                      // prometheus.WriteRequest
	protoV2                      // io.prometheus.write.v2.Request
	numProtocols
)

func (p protocol) String() string {
	switch p {
	case protoV1:
		return "1.0"
	case protoV2:
		return "2.0"
	default:
		return "unknown"
	}
}

// kind is what a rejection or write count is about.
type kind uint8

const (
	kindSample kind = iota
	kindHistogram
	kindExemplar
	numKinds
)

func (k kind) String() string {
	return [...]string{"sample", "histogram", "exemplar"}[k]
}

// reason is why data was not written. Every reason except reasonStorage is
// the sender's fault and answered 400; see batchWriter.
type reason uint8

const (
	reasonInvalidLabels reason = iota
	reasonInvalidSeries
	reasonInvalidHistogram
	reasonInvalidExemplar
	reasonOutOfOrder
	reasonOutOfBounds
	reasonTooOld
	reasonDuplicate
	reasonTooFarInFuture
	reasonNoSample       // exemplar with no sample of its series in the request
	reasonStorage        // exemplar the storage declined (AppendPartialError)
	reasonSampleRejected // exemplar whose sample was rejected
	numReasons
)

func (r reason) String() string {
	return [...]string{
		"invalid_labels", "invalid_series", "invalid_histogram", "invalid_exemplar",
		"out_of_order", "out_of_bounds", "too_old", "duplicate_timestamp", "too_far_in_future",
		"no_sample", "storage", "sample_rejected",
	}[r]
}

// statusCodes are the codes each protocol can be answered with, pre-resolved
// so that a request costs no label lookup. Negotiation failures are the only
// answers without a protocol.
var statusCodes = [numProtocols][]int{
	protoUnknown: {405, 415},
	protoV1:      {204, 400, 500, 503},
	protoV2:      {204, 400, 500, 503},
}

type metrics struct {
	requests [numProtocols]map[int]prometheus.Counter
	written  [numKinds]prometheus.Counter
	// rejected is resolved per use: rejections are the exception, and
	// pre-creating every kind×reason pair would export meaningless series.
	rejected       *prometheus.CounterVec
	decodeDuration [numProtocols]prometheus.Observer
	appendDuration [numProtocols]prometheus.Observer
}

func newMetrics(reg prometheus.Registerer, h *Handler) *metrics {
	f := promauto.With(reg)
	requests := f.NewCounterVec(prometheus.CounterOpts{
		Namespace: "kiln",
		Subsystem: "remote_write",
		Name:      "requests_total",
		Help:      "Remote-write requests by negotiated protocol version and HTTP status code.",
	}, []string{"protocol", "code"})
	written := f.NewCounterVec(prometheus.CounterOpts{
		Namespace: "kiln",
		Subsystem: "remote_write",
		Name:      "written_total",
		Help:      "Samples, histogram samples and exemplars written to storage and committed.",
	}, []string{"type"})
	rejected := f.NewCounterVec(prometheus.CounterOpts{
		Namespace: "kiln",
		Subsystem: "remote_write",
		Name:      "rejected_total",
		Help:      "Samples, histogram samples and exemplars received but not written, by reason.",
	}, []string{"type", "reason"})
	durationOpts := func(name, help string) prometheus.HistogramOpts {
		return prometheus.HistogramOpts{
			Namespace:                      "kiln",
			Subsystem:                      "remote_write",
			Name:                           name,
			Help:                           help,
			Buckets:                        prometheus.ExponentialBuckets(0.0001, 4, 9), // 100µs … 6.5s
			NativeHistogramBucketFactor:    1.1,
			NativeHistogramMaxBucketNumber: 100,
		}
	}
	decode := f.NewHistogramVec(durationOpts("decode_duration_seconds",
		"Time to decompress and decode a request body."), []string{"protocol"})
	appendDur := f.NewHistogramVec(durationOpts("append_duration_seconds",
		"Time to append a decoded request to storage, Commit included."), []string{"protocol"})
	f.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: "kiln",
		Subsystem: "remote_write",
		Name:      "inflight_requests",
		Help:      "Requests currently being decoded or appended.",
	}, func() float64 { return float64(h.inflightReqs.Load()) })
	f.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: "kiln",
		Subsystem: "remote_write",
		Name:      "inflight_bytes",
		Help:      "Memory held by in-flight requests: decompressed bodies and their decoded form.",
	}, func() float64 { return float64(h.inflightBytes.Load()) })

	m := &metrics{rejected: rejected}
	for p := range numProtocols {
		m.requests[p] = make(map[int]prometheus.Counter, len(statusCodes[p]))
		for _, code := range statusCodes[p] {
			m.requests[p][code] = requests.WithLabelValues(p.String(), strconv.Itoa(code))
		}
		m.decodeDuration[p] = decode.WithLabelValues(p.String())
		m.appendDuration[p] = appendDur.WithLabelValues(p.String())
	}
	for k := range numKinds {
		m.written[k] = written.WithLabelValues(k.String())
	}
	return m
}

func (m *metrics) request(p protocol, code int) {
	if c, ok := m.requests[p][code]; ok {
		c.Inc()
	}
}

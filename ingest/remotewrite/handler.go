// Package remotewrite receives Prometheus Remote-Write pushes (POST
// /api/v1/write) in both protocol versions and appends them to Kiln's
// storage:
//
//   - 1.0, prometheus.WriteRequest: Content-Type "application/x-protobuf"
//     with no proto parameter or proto=prometheus.WriteRequest;
//   - 2.0, io.prometheus.write.v2.Request: proto=io.prometheus.write.v2.Request.
//
// Bodies must be snappy block-compressed. Responses follow the Remote-Write
// 2.0 receiver rules (https://prometheus.io/docs/specs/prw/remote_write_spec_2_0/):
//
//	415  unsupported Content-Type or Content-Encoding, before reading the body
//	503  too many requests or decompressed bytes in flight (Retry-After: 1);
//	     503 rather than 429 because senders must retry 5xx, whereas
//	     Prometheus drops data on 429 unless retry_on_http_429 is set
//	400  corrupt snappy, malformed protobuf, a body larger than
//	     Config.MaxDecodedBytes, or any sample, histogram (and, for 2.0,
//	     exemplar) that was not written because it is invalid or the storage
//	     refused it (out of order, too old, duplicate, out of bounds).
//	     Valid data in the same request is still written and committed.
//	500  the storage failed otherwise, or Commit failed: the request is rolled
//	     back so that the sender's retry does not duplicate anything
//	503  also when a replicating storage's Commit missed its write quorum
//	     (an error with Unavailable() true, see ingest/replicate); the
//	     retry is safe because exact duplicates are accepted idempotently
//	400  also for samples replicas refused at Commit (an error with
//	     EachRejected, see committedExcept); the rest was committed
//	204  everything was written and Commit returned nil
//
// 2.0 responses (after negotiation) carry X-Prometheus-Remote-Write-
// {Samples,Histograms,Exemplars}-Written with what was committed. 1.0
// responses do not, like Prometheus: the spec forbids 1.0 senders from
// trusting their absence, and their presence confuses some senders.
//
// The decoders (DecodeV1, DecodeV2) are hand-written and zero-copy: strings
// point into the pooled decompression buffer and all per-sample structures
// live in pooled arenas, so in the steady state a request allocates only what
// the storage may keep: one label set per series, exemplar label sets, and
// native histograms.
//
// Metadata (1.0 metadata entries, 2.0 per-series type/help/unit) reaches the
// storage through AppendV2Options with each sample; see metadata.go for how
// 1.0's separately sent metadata is carried over to later samples. Exemplars
// ride on the sample they belong to (AppendV2Options.Exemplars), including
// those Prometheus sends in exemplar-only series; see pairExemplarOnly.
package remotewrite

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/golang/snappy"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/promslog"
	"github.com/prometheus/prometheus/model/exemplar"
	"github.com/prometheus/prometheus/storage"
	"github.com/valyala/fasthttp"
)

// Response headers required by Remote-Write 2.0.
const (
	HeaderSamplesWritten    = "X-Prometheus-Remote-Write-Samples-Written"
	HeaderHistogramsWritten = "X-Prometheus-Remote-Write-Histograms-Written"
	HeaderExemplarsWritten  = "X-Prometheus-Remote-Write-Exemplars-Written"
)

// Content-Type proto parameter values.
const (
	ProtoV1 = "prometheus.WriteRequest"
	ProtoV2 = "io.prometheus.write.v2.Request"
)

// maxPooledBytes: states that served a larger request are dropped instead of
// pooled, so that one huge request does not pin its buffers and arenas.
const maxPooledBytes = 8 << 20

// retryAfterSeconds is sent with 503. Overload here means other requests are
// mid-flight; they finish in well under a second at normal sizes.
const retryAfterSeconds = "1"

// Handler serves remote-write requests. It is safe for concurrent use.
type Handler struct {
	cfg      Config
	app      storage.AppendableV2
	logger   *slog.Logger
	metrics  *metrics
	families *familyCache
	states   sync.Pool // *state

	inflightReqs  atomic.Int64
	inflightBytes atomic.Int64

	now func() time.Time // for the future-timestamp limit; replaced in tests
}

// New returns a Handler appending to app.
func New(cfg Config, app storage.AppendableV2, reg prometheus.Registerer, logger *slog.Logger) (*Handler, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	if app == nil {
		return nil, errors.New("remotewrite: nil AppendableV2")
	}
	if logger == nil {
		logger = promslog.NewNopLogger()
	}
	h := &Handler{
		cfg:      cfg,
		app:      app,
		logger:   logger,
		families: newFamilyCache(),
		now:      time.Now,
	}
	h.metrics = newMetrics(reg, h)
	return h, nil
}

// writeStats counts what a request wrote, as reported in the 2.0 headers.
type writeStats struct {
	Samples, Histograms, Exemplars int
}

// result is the outcome of one request.
type result struct {
	code  int
	msg   string
	stats writeStats
}

// Handle serves one request; mount it on POST /api/v1/write.
func (h *Handler) Handle(ctx *fasthttp.RequestCtx) {
	if !ctx.IsPost() {
		ctx.Response.Header.Set(fasthttp.HeaderAllow, fasthttp.MethodPost)
		h.respond(ctx, protoUnknown, &result{code: fasthttp.StatusMethodNotAllowed, msg: "remote write requires POST"})
		return
	}
	// Negotiation comes first and looks at headers only: an unsupported
	// request is refused before any byte of its body is interpreted.
	p, err := parseContentType(ctx.Request.Header.ContentType())
	if err != nil {
		h.respond(ctx, protoUnknown, &result{code: fasthttp.StatusUnsupportedMediaType, msg: err.Error()})
		return
	}
	if err := checkContentEncoding(ctx.Request.Header.ContentEncoding()); err != nil {
		h.respond(ctx, protoUnknown, &result{code: fasthttp.StatusUnsupportedMediaType, msg: err.Error()})
		return
	}
	res := h.serve(ctx, p)
	h.respond(ctx, p, &res)
}

func (h *Handler) serve(ctx *fasthttp.RequestCtx, p protocol) result {
	// Admission control: refuse instead of queueing, so that memory stays
	// bounded and the sender's backoff absorbs the overload.
	if n := h.inflightReqs.Add(1); n > int64(h.cfg.MaxInflightRequests) {
		h.inflightReqs.Add(-1)
		return result{code: fasthttp.StatusServiceUnavailable,
			msg: fmt.Sprintf("overloaded: more than %d remote-write requests in flight", h.cfg.MaxInflightRequests)}
	}
	defer h.inflightReqs.Add(-1)

	body := ctx.PostBody()
	n, err := snappy.DecodedLen(body)
	if err != nil {
		return badRequest("decompress body: snappy: %v", err)
	}
	if int64(n) > h.cfg.MaxDecodedBytes {
		return badRequest("decompressed body of %d bytes exceeds the limit of %d bytes", n, h.cfg.MaxDecodedBytes)
	}
	if b := h.inflightBytes.Add(int64(n)); b > h.cfg.MaxInflightBytes {
		h.inflightBytes.Add(-int64(n))
		return overloaded(h.cfg.MaxInflightBytes)
	}
	st := h.getState()
	st.body, st.charged = int64(n), 0
	defer func() {
		// The body and its decoded form are released together.
		h.inflightBytes.Add(-st.body - st.charged)
		h.putState(st, n)
	}()

	start := time.Now()
	buf, err := snappy.Decode(st.buf[:cap(st.buf)], body)
	if err != nil {
		return badRequest("decompress body: snappy: %v", err)
	}
	if cap(buf) > cap(st.buf) {
		st.buf = buf[:0]
	}
	if p == protoV2 {
		err = DecodeV2(buf, &st.req)
	} else {
		err = DecodeV1(buf, &st.req)
	}
	h.metrics.decodeDuration[p].Observe(time.Since(start).Seconds())
	if err == nil {
		// Charge the exact decoded size; decoding charged it only in steps.
		err = st.grow(st.req.mem)
	}
	if errors.Is(err, errOverloaded) {
		return overloaded(h.cfg.MaxInflightBytes)
	}
	if err != nil {
		return badRequest("decode %s: %v", protoName(p), err)
	}

	start = time.Now()
	res := h.write(ctx, p, st)
	h.metrics.appendDuration[p].Observe(time.Since(start).Seconds())
	return res
}

func overloaded(maxBytes int64) result {
	return result{code: fasthttp.StatusServiceUnavailable,
		msg: fmt.Sprintf("overloaded: in-flight requests hold more than %d bytes", maxBytes)}
}

func badRequest(format string, args ...any) result {
	return result{code: fasthttp.StatusBadRequest, msg: fmt.Sprintf(format, args...)}
}

func protoName(p protocol) string {
	if p == protoV2 {
		return ProtoV2
	}
	return ProtoV1
}

func (h *Handler) respond(ctx *fasthttp.RequestCtx, p protocol, res *result) {
	if p == protoV2 {
		var b [20]byte
		hdr := &ctx.Response.Header
		hdr.SetBytesV(HeaderSamplesWritten, strconv.AppendInt(b[:0], int64(res.stats.Samples), 10))
		hdr.SetBytesV(HeaderHistogramsWritten, strconv.AppendInt(b[:0], int64(res.stats.Histograms), 10))
		hdr.SetBytesV(HeaderExemplarsWritten, strconv.AppendInt(b[:0], int64(res.stats.Exemplars), 10))
	}
	ctx.SetStatusCode(res.code)
	if res.code != fasthttp.StatusNoContent {
		if res.code == fasthttp.StatusServiceUnavailable {
			ctx.Response.Header.Set(fasthttp.HeaderRetryAfter, retryAfterSeconds)
		}
		// The spec requires a human-readable message and forbids senders
		// from parsing it.
		ctx.SetContentType("text/plain; charset=utf-8")
		ctx.SetBodyString(res.msg + "\n")
		if res.code >= 500 {
			h.logger.Error("Remote write failed", "protocol", p.String(), "code", res.code, "err", res.msg)
		} else {
			h.logger.Debug("Remote write rejected", "protocol", p.String(), "code", res.code, "err", res.msg)
		}
	}
	h.metrics.request(p, res.code)
}

// parseContentType negotiates the message type (RFC 9110 media type with an
// optional proto parameter). A missing Content-Type means 1.0, as in
// Prometheus, for senders that predate the header.
func parseContentType(v []byte) (protocol, error) {
	s := strings.TrimSpace(unsafeString(v))
	if s == "" {
		return protoV1, nil
	}
	media, params, _ := strings.Cut(s, ";")
	if !strings.EqualFold(strings.TrimSpace(media), "application/x-protobuf") {
		return protoUnknown, fmt.Errorf("unsupported Content-Type %q: want application/x-protobuf", s)
	}
	for params != "" {
		var param string
		param, params, _ = strings.Cut(params, ";")
		if param = strings.TrimSpace(param); param == "" {
			continue
		}
		k, val, ok := strings.Cut(param, "=")
		if !ok {
			return protoUnknown, fmt.Errorf("unsupported Content-Type %q: malformed parameter %q", s, param)
		}
		if !strings.EqualFold(strings.TrimSpace(k), "proto") {
			continue // e.g. charset: irrelevant to protobuf
		}
		val = strings.TrimSpace(val)
		if len(val) >= 2 && val[0] == '"' && val[len(val)-1] == '"' {
			val = val[1 : len(val)-1]
		}
		switch val {
		case ProtoV1:
			return protoV1, nil
		case ProtoV2:
			return protoV2, nil
		}
		return protoUnknown, fmt.Errorf("unsupported Content-Type %q: proto must be %s or %s", s, ProtoV2, ProtoV1)
	}
	return protoV1, nil
}

// checkContentEncoding accepts snappy only. A missing header is taken as
// snappy, as in Prometheus: the body is undecodable otherwise anyway.
func checkContentEncoding(v []byte) error {
	s := strings.TrimSpace(unsafeString(v))
	if s == "" || strings.EqualFold(s, "snappy") {
		return nil
	}
	return fmt.Errorf("unsupported Content-Encoding %q: only snappy is accepted", s)
}

// errOverloaded aborts decoding when the in-flight budget runs out.
var errOverloaded = errors.New("in-flight memory budget exhausted")

// state is the per-request working set, pooled.
type state struct {
	h   *Handler
	buf []byte
	req Request
	md  metadataResolver

	// In-flight budget held by this request: the decompressed body, and
	// its decoded form as charged so far (see grow).
	body, charged int64

	// Exemplars of the series being written, sorted by (target, timestamp).
	pending   []pendingExemplar
	exemplars []exemplar.Exemplar
	targets   []int32

	// Pairing of exemplar-only series with their samples, see pairExemplarOnly.
	keyBuf      []byte
	seriesByKey map[string]int32
	attachHead  []int32
	attachNext  []int32
}

func (h *Handler) getState() *state {
	if st, ok := h.states.Get().(*state); ok {
		return st
	}
	st := &state{h: h}
	st.req.grow = st.grow // one method value per state, not per request
	return st
}

// grow charges the growing decoded form of the request to the in-flight
// budget, which therefore bounds memory, not just body bytes. A request
// holding the whole budget alone may exceed it: its size is already bounded
// by MaxDecodedBytes and maxAmplification, and refusing it would make
// MaxDecodedBytes a lie. Otherwise running out is overload (503).
func (st *state) grow(total int64) error {
	delta := total - st.charged
	st.charged = total
	all := st.h.inflightBytes.Add(delta)
	if all > st.h.cfg.MaxInflightBytes && all > st.body+total {
		return errOverloaded
	}
	return nil
}

func (h *Handler) putState(st *state, decodedLen int) {
	if decodedLen > maxPooledBytes {
		return
	}
	h.states.Put(st)
}

// The RequestCtx is the context AppenderV2 gets: it is cancelled when the
// server shuts down.
var _ context.Context = (*fasthttp.RequestCtx)(nil)

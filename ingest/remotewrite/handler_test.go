package remotewrite

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/prometheus/prompb"
	writev2 "github.com/prometheus/prometheus/prompb/io/prometheus/write/v2"
	"github.com/prometheus/prometheus/storage"
	"github.com/stretchr/testify/require"
	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/fasthttputil"
)

const (
	ctV1 = "application/x-protobuf"
	ctV2 = "application/x-protobuf;proto=io.prometheus.write.v2.Request"
)

func newTestHandler(t testing.TB, cfg Config, app storage.AppendableV2) (*Handler, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	h, err := New(cfg, app, reg, nil)
	require.NoError(t, err)
	return h, reg
}

// response is what a test looks at.
type response struct {
	code                           int
	body                           string
	samples, histograms, exemplars string // Written headers ("" if absent)
	retryAfter                     string
}

func do(h *Handler, method, contentType, encoding string, body []byte) response {
	var req fasthttp.Request
	req.Header.SetMethod(method)
	req.SetRequestURI("/api/v1/write")
	if contentType != "" {
		req.Header.SetContentType(contentType)
	}
	if encoding != "" {
		req.Header.Set(fasthttp.HeaderContentEncoding, encoding)
	}
	req.SetBody(body)
	var ctx fasthttp.RequestCtx
	ctx.Init(&req, nil, nil)
	h.Handle(&ctx)
	hdr := &ctx.Response.Header
	return response{
		code:       ctx.Response.StatusCode(),
		body:       string(ctx.Response.Body()),
		samples:    string(hdr.Peek(HeaderSamplesWritten)),
		histograms: string(hdr.Peek(HeaderHistogramsWritten)),
		exemplars:  string(hdr.Peek(HeaderExemplarsWritten)),
		retryAfter: string(hdr.Peek(fasthttp.HeaderRetryAfter)),
	}
}

func postV1(h *Handler, req *prompb.WriteRequest) response {
	b, err := req.Marshal()
	if err != nil {
		panic(err)
	}
	return do(h, fasthttp.MethodPost, ctV1, "snappy", snappyBody(b))
}

func postV2(h *Handler, req *writev2.Request) response {
	b, err := req.Marshal()
	if err != nil {
		panic(err)
	}
	return do(h, fasthttp.MethodPost, ctV2, "snappy", snappyBody(b))
}

func TestStatusCodes(t *testing.T) {
	v1OK := marshalV1(t, &prompb.WriteRequest{Timeseries: []prompb.TimeSeries{
		{Labels: lbls("__name__", "a"), Samples: []prompb.Sample{{Value: 1, Timestamp: 1}}},
	}})
	b := newV2Builder()
	b.add(writev2.TimeSeries{LabelsRefs: b.refs("__name__", "a"), Samples: []writev2.Sample{{Value: 1, Timestamp: 1}}})
	v2OK := marshalV2(t, b.build())

	b = newV2Builder()
	good := b.refs("__name__", "good")
	b.add(writev2.TimeSeries{LabelsRefs: []uint32{good[0], 4242}, Samples: []writev2.Sample{{Value: 1, Timestamp: 1}}})
	b.add(writev2.TimeSeries{LabelsRefs: good, Samples: []writev2.Sample{{Value: 1, Timestamp: 1}, {Value: 2, Timestamp: 2}}})
	v2BadRef := marshalV2(t, b.build())

	v1Partial := marshalV1(t, &prompb.WriteRequest{Timeseries: []prompb.TimeSeries{
		{Labels: lbls("job", "no-name"), Samples: []prompb.Sample{{Value: 1, Timestamp: 1}}},
		{Labels: lbls("__name__", "ok"), Samples: []prompb.Sample{{Value: 1, Timestamp: 1}}},
	}})

	cases := []struct {
		name        string
		method      string
		contentType string
		encoding    string
		body        []byte
		maxDecoded  int64
		code        int
		wantWritten int // committed samples
		headers     string
		bodyHas     string
	}{
		{name: "v1 success", contentType: ctV1, body: snappyBody(v1OK), code: 204, wantWritten: 1},
		{name: "v1 explicit proto", contentType: "application/x-protobuf;proto=prometheus.WriteRequest", body: snappyBody(v1OK), code: 204, wantWritten: 1},
		{name: "v1 no content type", body: snappyBody(v1OK), code: 204, wantWritten: 1},
		{name: "v1 no content encoding", contentType: ctV1, encoding: "-", body: snappyBody(v1OK), code: 204, wantWritten: 1},
		{name: "v2 success", contentType: ctV2, body: snappyBody(v2OK), code: 204, wantWritten: 1, headers: "1/0/0"},
		{name: "v2 spaced, quoted, upper-case", contentType: ` Application/X-Protobuf ; charset=utf-8; Proto="io.prometheus.write.v2.Request"`,
			encoding: "Snappy", body: snappyBody(v2OK), code: 204, wantWritten: 1, headers: "1/0/0"},
		{name: "wrong content type", contentType: "application/json", body: snappyBody(v1OK), code: 415, bodyHas: "Content-Type"},
		{name: "unknown proto", contentType: "application/x-protobuf;proto=io.prometheus.write.v3.Request", body: snappyBody(v1OK), code: 415},
		{name: "malformed parameter", contentType: "application/x-protobuf;proto", body: snappyBody(v1OK), code: 415},
		{name: "wrong content encoding", contentType: ctV2, encoding: "gzip", body: snappyBody(v2OK), code: 415, bodyHas: "Content-Encoding"},
		{name: "identity encoding", contentType: ctV1, encoding: "identity", body: v1OK, code: 415},
		{name: "GET", method: fasthttp.MethodGet, contentType: ctV1, body: snappyBody(v1OK), code: 405},
		{name: "corrupt snappy", contentType: ctV2, body: []byte{0x10, 0xff, 0xff, 0xff}, code: 400, headers: "0/0/0", bodyHas: "snappy"},
		{name: "empty body", contentType: ctV1, body: nil, code: 400, bodyHas: "snappy"},
		{name: "not protobuf", contentType: ctV1, body: snappyBody([]byte("hello, world")), code: 400, bodyHas: "malformed"},
		{name: "v2 body with v1 content type", contentType: ctV1, body: snappyBody(v2OK), code: 400, bodyHas: "io.prometheus.write.v2.Request fields"},
		{name: "v1 body with v2 content type", contentType: ctV2, body: snappyBody(v1OK), code: 400, headers: "0/0/0", bodyHas: "prometheus.WriteRequest fields"},
		{name: "bad symbol ref", contentType: ctV2, body: snappyBody(v2BadRef), code: 400, wantWritten: 2, headers: "2/0/0", bodyHas: "outside of symbols table"},
		{name: "partial invalid batch", contentType: ctV1, body: snappyBody(v1Partial), code: 400, wantWritten: 1, bodyHas: "missing __name__"},
		{name: "too large", contentType: ctV1, body: snappyBody(v1OK), maxDecoded: 10, code: 400, bodyHas: "exceeds the limit"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			st := &fakeStorage{}
			h, _ := newTestHandler(t, Config{MaxDecodedBytes: c.maxDecoded}, st)
			method := c.method
			if method == "" {
				method = fasthttp.MethodPost
			}
			enc := c.encoding
			switch enc {
			case "":
				enc = "snappy"
			case "-":
				enc = ""
			}
			res := do(h, method, c.contentType, enc, c.body)
			require.Equal(t, c.code, res.code, res.body)
			require.Len(t, st.all(), c.wantWritten)
			if c.headers == "" {
				require.Empty(t, res.samples+res.histograms+res.exemplars, "no Written headers for 1.0 or failed negotiation")
			} else {
				require.Equal(t, c.headers, res.samples+"/"+res.histograms+"/"+res.exemplars)
			}
			require.Contains(t, res.body, c.bodyHas)
			if c.code == 204 {
				require.Empty(t, res.body)
			}
		})
	}
}

// blockingStorage parks AppenderV2 calls until released, to hold requests
// in flight.
type blockingStorage struct {
	fakeStorage
	entered chan struct{}
	release chan struct{}
}

func (s *blockingStorage) AppenderV2(ctx context.Context) storage.AppenderV2 {
	// entered has room for one signal: the first request's arrival is
	// never lost, however late the test gets to wait for it.
	select {
	case s.entered <- struct{}{}:
	default: // signalled already: the test is past the blocking phase
	}
	<-s.release
	return s.fakeStorage.AppenderV2(ctx)
}

func TestOverload(t *testing.T) {
	req := &prompb.WriteRequest{Timeseries: []prompb.TimeSeries{
		{Labels: lbls("__name__", "a"), Samples: []prompb.Sample{{Value: 1, Timestamp: 1}}},
	}}
	body := marshalV1(t, req)

	for _, c := range []struct {
		name string
		cfg  Config
	}{
		{"requests", Config{MaxInflightRequests: 1}},
		{"bytes", Config{MaxInflightRequests: 10, MaxDecodedBytes: int64(len(body)), MaxInflightBytes: int64(len(body)) + 1}},
	} {
		t.Run(c.name, func(t *testing.T) {
			st := &blockingStorage{entered: make(chan struct{}, 1), release: make(chan struct{})}
			h, reg := newTestHandler(t, c.cfg, st)

			var wg sync.WaitGroup
			var first response
			wg.Go(func() { first = postV1(h, req) })
			<-st.entered // the first request holds its slot and bytes

			res := postV1(h, req)
			require.Equal(t, 503, res.code, res.body)
			require.Equal(t, "1", res.retryAfter)
			require.Contains(t, res.body, "overloaded")

			close(st.release)
			wg.Wait()
			require.Equal(t, 204, first.code, first.body)
			require.Equal(t, 204, postV1(h, req).code, "slots are released")
			require.Equal(t, 1.0, testutil.ToFloat64(h.metrics.requests[protoV1][503]))
			require.Zero(t, h.inflightReqs.Load())
			require.Zero(t, h.inflightBytes.Load())
			require.NoError(t, testutil.GatherAndCompare(reg, strings.NewReader(`
# HELP kiln_remote_write_inflight_requests Requests currently being decoded or appended.
# TYPE kiln_remote_write_inflight_requests gauge
kiln_remote_write_inflight_requests 0
`), "kiln_remote_write_inflight_requests"))
		})
	}
}

// TestInflightCountsDecodedForm checks that the in-flight budget covers the
// decoded structures, not just bodies: two bodies fit, but not two bodies
// plus the first one's decoded form.
func TestInflightCountsDecodedForm(t *testing.T) {
	b := newV2Builder()
	for i := range 50 {
		b.add(writev2.TimeSeries{
			LabelsRefs: b.refs("__name__", "m", "i", strconv.Itoa(i)),
			Samples:    []writev2.Sample{{Value: 1, Timestamp: 1}},
		})
	}
	req := b.build()
	n := int64(len(marshalV2(t, req)))
	st := &blockingStorage{entered: make(chan struct{}, 1), release: make(chan struct{})}
	h, _ := newTestHandler(t, Config{MaxDecodedBytes: n, MaxInflightBytes: 2*n + 16}, st)

	var wg sync.WaitGroup
	var first response
	wg.Go(func() { first = postV2(h, req) })
	<-st.entered
	require.Greater(t, h.inflightBytes.Load(), 2*n, "body plus decoded form")
	res := postV2(h, req)
	require.Equal(t, 503, res.code, res.body)
	close(st.release)
	wg.Wait()
	require.Equal(t, 204, first.code, first.body)
	require.Zero(t, h.inflightBytes.Load())
}

func TestAmplificationBounded(t *testing.T) {
	// 2-byte empty TimeSeries messages would each become a 192-byte struct.
	body := make([]byte, 0, 1<<20)
	for len(body) < cap(body) {
		body = append(body, 0x0a, 0x00)
	}
	var r Request
	require.ErrorIs(t, DecodeV1(body, &r), ErrTooLarge)
	require.LessOrEqual(t, r.mem, int64(len(body))*maxAmplification+amplificationSlack+int64(sizeTimeSeries))

	h, _ := newTestHandler(t, Config{}, &fakeStorage{})
	res := do(h, fasthttp.MethodPost, ctV1, "snappy", snappyBody(body))
	require.Equal(t, 400, res.code)
	require.Contains(t, res.body, "too large once decoded")
	require.Zero(t, h.inflightBytes.Load())
}

func TestCommitError(t *testing.T) {
	st := &fakeStorage{commitErr: errors.New("disk on fire")}
	h, _ := newTestHandler(t, Config{}, st)
	b := newV2Builder()
	b.add(writev2.TimeSeries{LabelsRefs: b.refs("__name__", "a"), Samples: []writev2.Sample{{Value: 1, Timestamp: 1}}})
	res := postV2(h, b.build())
	require.Equal(t, 500, res.code)
	require.Contains(t, res.body, "disk on fire")
	require.Equal(t, "0/0/0", res.samples+"/"+res.histograms+"/"+res.exemplars, "nothing was committed")
	require.Empty(t, st.all())
}

func TestStorageErrorRollsBack(t *testing.T) {
	st := &fakeStorage{appendErr: func(a *appended) error {
		if a.t == 2 {
			return errors.New("unexpected")
		}
		return nil
	}}
	h, _ := newTestHandler(t, Config{}, st)
	res := postV1(h, &prompb.WriteRequest{Timeseries: []prompb.TimeSeries{
		{Labels: lbls("__name__", "a"), Samples: []prompb.Sample{{Value: 1, Timestamp: 1}, {Value: 1, Timestamp: 2}}},
	}})
	require.Equal(t, 500, res.code, res.body)
	require.Empty(t, st.all())
	require.Equal(t, 1, st.rollbacks)
}

func TestConfig(t *testing.T) {
	_, err := New(Config{MaxDecodedBytes: 100, MaxInflightBytes: 10}, &fakeStorage{}, nil, nil)
	require.ErrorContains(t, err, "MaxInflightBytes")
	_, err = New(Config{}, nil, nil, nil)
	require.Error(t, err)
	h, err := New(Config{MaxDecodedBytes: 1 << 30}, &fakeStorage{}, nil, nil)
	require.NoError(t, err)
	require.Equal(t, int64(1<<30), h.cfg.MaxInflightBytes, "default in-flight bytes grows to admit the largest request")
	require.GreaterOrEqual(t, h.cfg.MaxInflightRequests, minInflightRequests)
}

// TestServer runs the handler behind a real fasthttp server.
func TestServer(t *testing.T) {
	st := &fakeStorage{}
	h, _ := newTestHandler(t, Config{}, st)
	ln := fasthttputil.NewInmemoryListener()
	// A short idle duration lets the server's worker-pool cleaner exit
	// promptly after Shutdown, for goleak.
	srv := &fasthttp.Server{Handler: h.Handle, MaxIdleWorkerDuration: 10 * time.Millisecond}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	defer func() {
		require.NoError(t, srv.Shutdown())
		require.NoError(t, <-done)
	}()

	b := newV2Builder()
	for i := range 50 {
		b.add(writev2.TimeSeries{
			LabelsRefs: b.refs("__name__", "m", "i", strconv.Itoa(i)),
			Samples:    []writev2.Sample{{Value: float64(i), Timestamp: int64(i)}},
		})
	}
	var req fasthttp.Request
	req.Header.SetMethod(fasthttp.MethodPost)
	req.SetRequestURI("http://kiln/api/v1/write")
	req.Header.SetContentType(ctV2)
	req.Header.Set(fasthttp.HeaderContentEncoding, "snappy")
	req.Header.Set("X-Prometheus-Remote-Write-Version", "2.0.0")
	req.SetBody(snappyBody(marshalV2(t, b.build())))

	// A bare connection rather than fasthttp.Client, whose background
	// cleaners outlive the test.
	conn, err := ln.Dial()
	require.NoError(t, err)
	defer func() { require.NoError(t, conn.Close()) }()
	w := bufio.NewWriter(conn)
	require.NoError(t, req.Write(w))
	require.NoError(t, w.Flush())
	var resp fasthttp.Response
	require.NoError(t, resp.Read(bufio.NewReader(conn)))
	require.Equal(t, 204, resp.StatusCode(), string(resp.Body()))
	require.Equal(t, "50", string(resp.Header.Peek(HeaderSamplesWritten)))
	require.Len(t, st.all(), 50)
}

func TestMetrics(t *testing.T) {
	st := &fakeStorage{appendErr: func(a *appended) error {
		if a.t == 1 {
			return fmt.Errorf("wrapped: %w", storage.ErrOutOfOrderSample)
		}
		return nil
	}}
	h, reg := newTestHandler(t, Config{}, st)
	res := postV1(h, &prompb.WriteRequest{Timeseries: []prompb.TimeSeries{
		{Labels: lbls("__name__", "a"), Samples: []prompb.Sample{{Value: 1, Timestamp: 1}, {Value: 1, Timestamp: 2}}},
		{Labels: lbls("no", "name"), Samples: []prompb.Sample{{Value: 1, Timestamp: 1}}},
	}})
	require.Equal(t, 400, res.code)
	require.NoError(t, testutil.GatherAndCompare(reg, strings.NewReader(`
# HELP kiln_remote_write_rejected_total Samples, histogram samples and exemplars received but not written, by reason.
# TYPE kiln_remote_write_rejected_total counter
kiln_remote_write_rejected_total{reason="invalid_labels",type="sample"} 1
kiln_remote_write_rejected_total{reason="out_of_order",type="sample"} 1
# HELP kiln_remote_write_requests_total Remote-write requests by negotiated protocol version and HTTP status code.
# TYPE kiln_remote_write_requests_total counter
kiln_remote_write_requests_total{code="204",protocol="1.0"} 0
kiln_remote_write_requests_total{code="204",protocol="2.0"} 0
kiln_remote_write_requests_total{code="400",protocol="1.0"} 1
kiln_remote_write_requests_total{code="400",protocol="2.0"} 0
kiln_remote_write_requests_total{code="405",protocol="unknown"} 0
kiln_remote_write_requests_total{code="415",protocol="unknown"} 0
kiln_remote_write_requests_total{code="500",protocol="1.0"} 0
kiln_remote_write_requests_total{code="500",protocol="2.0"} 0
kiln_remote_write_requests_total{code="503",protocol="1.0"} 0
kiln_remote_write_requests_total{code="503",protocol="2.0"} 0
# HELP kiln_remote_write_written_total Samples, histogram samples and exemplars written to storage and committed.
# TYPE kiln_remote_write_written_total counter
kiln_remote_write_written_total{type="exemplar"} 0
kiln_remote_write_written_total{type="histogram"} 0
kiln_remote_write_written_total{type="sample"} 1
`), "kiln_remote_write_rejected_total", "kiln_remote_write_requests_total", "kiln_remote_write_written_total"))
}

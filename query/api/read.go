package api

import (
	"log/slog"
	"math"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/prometheus/config"
	"github.com/prometheus/prometheus/storage"
	"github.com/prometheus/prometheus/storage/remote"
	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/fasthttpadaptor"
)

// newRemoteReadHandler serves /api/v1/read with Prometheus's own remote
// read handler behind the fasthttp adaptor. The protocol has two response
// types (a snappy-compressed ReadResponse of samples, and a stream of
// length-prefixed, CRC-checked ChunkedReadResponse frames) whose details
// Prometheus clients depend on; reusing the reference implementation keeps
// them exact. The adaptor supports http.Flusher, which the streamed
// response needs: frames go out as they are produced.
//
// Kiln has no external labels yet, hence the empty config.
func newRemoteReadHandler(cfg Config, q storage.SampleAndChunkQueryable, reg prometheus.Registerer, logger *slog.Logger) fasthttp.RequestHandler {
	// Config uses negative for "unlimited"; the handler uses 0 for the
	// sample limit and has no such value for concurrency (its gate would
	// block forever at 0), so unlimited is a gate too large to fill: a
	// channel of empty structs costs nothing however large its capacity.
	samples := max(cfg.RemoteReadSampleLimit, 0)
	concurrency := cfg.RemoteReadConcurrencyLimit
	if concurrency < 0 {
		concurrency = math.MaxInt32
	}
	h := remote.NewReadHandler(logger.With("component", "remote read"), reg, q,
		func() config.Config { return config.Config{} },
		samples, concurrency, cfg.RemoteReadMaxBytesInFrame)
	return fasthttpadaptor.NewFastHTTPHandler(h)
}

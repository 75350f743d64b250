package fanout

import (
	"context"
	"slices"
	"sync"
	"time"

	"github.com/golang/snappy"
	"github.com/prometheus/prometheus/storage"
	"github.com/prometheus/prometheus/util/annotations"
	"github.com/valyala/fasthttp"
)

// Handle serves the peer side of the read protocol: POST
// /internal/v1/select, /select_digest, /labels, /label_values, /metadata
// and /exemplars, answered from
// the local storage only (never fanned out again). See wire.go for the
// format. The response is encoded in full before it is sent, so a storage
// error is still a clean 500 and the caller can retry elsewhere.
func (q *Queryable) Handle(fctx *fasthttp.RequestCtx) {
	if !fctx.IsPost() {
		fctx.Error("method not allowed", fasthttp.StatusMethodNotAllowed)
		return
	}
	path := string(fctx.Path())
	switch path {
	case pathSelect, pathDigest, pathLabels, pathLabelValues, pathMetadata, pathExemplars:
	default:
		fctx.Error("not found", fasthttp.StatusNotFound)
		return
	}
	req, err := unmarshalRequest(fctx.PostBody())
	if err != nil {
		fctx.Error(err.Error(), fasthttp.StatusBadRequest)
		return
	}
	// Not fctx as parent: fasthttp's RequestCtx.Done races with Server
	// Shutdown. The caller's deadline bounds the work instead.
	ctx := context.Background()
	if req.timeoutMS > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, time.Duration(req.timeoutMS)*time.Millisecond)
		defer cancel()
	}

	// Encoded straight into the response body, whose buffer fasthttp
	// reuses; Error below replaces it.
	sw := snappyWriters.Get().(*snappy.Writer)
	defer snappyWriters.Put(sw)
	sw.Reset(fctx.Response.BodyWriter())
	fw := &frameWriter{w: sw}
	switch path {
	case pathSelect:
		err = q.serveSelect(ctx, req, fw)
	case pathDigest:
		err = q.serveDigest(ctx, req, fw)
	case pathLabels, pathLabelValues:
		err = q.serveLabels(ctx, req, path == pathLabels, fw)
	case pathMetadata:
		err = q.serveMetadata(ctx, req, fw)
	case pathExemplars:
		err = q.serveExemplars(ctx, req, fw)
	}
	if err == nil {
		err = fw.end()
	}
	if err == nil {
		err = sw.Close()
	}
	if err != nil {
		q.logger.Warn("internal read failed", "path", path, "err", err)
		fctx.Error(err.Error(), fasthttp.StatusInternalServerError)
		return
	}
	fctx.SetContentType("application/x-kiln-frames")
}

// snappyWriters pools the writers of Handle: each holds two buffers of
// about 64 KiB.
var snappyWriters = sync.Pool{New: func() any { return snappy.NewBufferedWriter(nil) }}

func (q *Queryable) serveSelect(ctx context.Context, req *request, fw *frameWriter) error {
	cq := q.local.PartitionChunkQuerier(req.mint, req.maxt, &req.parts)
	defer func() { _ = cq.Close() }()
	ss := cq.Select(ctx, true, req.hints, req.matchers...)
	for ss.Next() {
		s := ss.At()
		if err := fw.series(s.Labels(), s.Iterator(nil)); err != nil {
			return err
		}
	}
	if err := ss.Err(); err != nil {
		return err
	}
	return writeWarnings(fw, ss.Warnings())
}

func (q *Queryable) serveLabels(ctx context.Context, req *request, names bool, fw *frameWriter) error {
	lq := q.local.PartitionQuerier(req.mint, req.maxt, &req.parts)
	defer func() { _ = lq.Close() }()
	var hints *storage.LabelHints
	if req.limit > 0 {
		hints = &storage.LabelHints{Limit: req.limit}
	}
	var (
		vals []string
		ws   annotations.Annotations
		err  error
	)
	if names {
		vals, ws, err = lq.LabelNames(ctx, hints, req.matchers...)
	} else {
		vals, ws, err = lq.LabelValues(ctx, req.name, hints, req.matchers...)
	}
	if err != nil {
		return err
	}
	for _, v := range vals {
		if err := fw.str(frameString, v); err != nil {
			return err
		}
	}
	return writeWarnings(fw, ws)
}

func (q *Queryable) serveMetadata(ctx context.Context, req *request, fw *frameWriter) error {
	md, err := q.local.Metadata(ctx, req.name, req.limit, req.limitPerMetric)
	if err != nil {
		return err
	}
	names := make([]string, 0, len(md))
	for n := range md {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		for _, m := range md[n] {
			if err := fw.metadata(n, m); err != nil {
				return err
			}
		}
	}
	return nil
}

func writeWarnings(fw *frameWriter, ws annotations.Annotations) error {
	for _, w := range ws {
		if err := fw.str(frameWarning, w.Error()); err != nil {
			return err
		}
	}
	return nil
}

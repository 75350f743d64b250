package fanout

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/prometheus/prometheus/util/annotations"
	"github.com/valyala/fasthttp"

	"github.com/kilnhq/kiln/cluster/ring"
)

// Internal endpoints, under the node's /internal/v1/ prefix.
const (
	pathSelect      = "/internal/v1/select"
	pathDigest      = "/internal/v1/select_digest"
	pathLabels      = "/internal/v1/labels"
	pathLabelValues = "/internal/v1/label_values"
	pathMetadata    = "/internal/v1/metadata"
	pathExemplars   = "/internal/v1/exemplars"
)

// errBadRequest marks a peer's 4xx answer: the request itself is wrong, so
// asking another replica would not help.
var errBadRequest = errors.New("peer rejected the request")

func isBadRequest(err error) bool { return errors.Is(err, errBadRequest) }

// call POSTs req to peer and returns the decompressed response. The whole
// body is received and decompressed before call returns, so a failure
// mid-transfer is seen here, while the frames are still decoded lazily.
func (q *Queryable) call(ctx context.Context, peer ring.Member, path, endpoint string, req *request) (*frameReader, error) {
	q.metrics.requests.WithLabelValues(peer.Name, endpoint).Inc()
	start := time.Now()
	deadline := start.Add(q.cfg.Timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	req.timeoutMS = uint64(max(time.Until(deadline).Milliseconds(), 1))

	hreq, hresp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
	hreq.Header.SetMethod(fasthttp.MethodPost)
	hreq.SetRequestURI("http://" + peer.Addr + path)
	hreq.Header.SetContentType("application/x-kiln-read")
	hreq.SetBodyRaw(req.marshal())

	// fasthttp takes no context: run the call aside so cancellation returns
	// at once. An abandoned call keeps its request objects (the garbage
	// collector takes them); a finished one returns them to the pools.
	done := make(chan error, 1)
	go func() { done <- q.client.DoDeadline(hreq, hresp, deadline) }()
	var (
		err  error
		body []byte
	)
	select {
	case err = <-done:
		if err == nil {
			err = checkStatus(hresp)
		}
		if err == nil {
			// Decompressed into memory of its own, so the response can go
			// back to the pool; the frames point into body.
			if body, err = unframe(hresp.Body()); err != nil {
				err = fmt.Errorf("response: %w", err)
			}
		}
		fasthttp.ReleaseRequest(hreq)
		fasthttp.ReleaseResponse(hresp)
	case <-ctx.Done():
		err = ctx.Err()
	}
	q.metrics.duration.WithLabelValues(endpoint).Observe(time.Since(start).Seconds())
	if err != nil {
		q.metrics.errors.WithLabelValues(peer.Name).Inc()
		return nil, fmt.Errorf("read from %s (%s): %w", peer.Name, peer.Addr, err)
	}
	return newFrameReader(body), nil
}

// checkStatus turns a non-200 answer into an error carrying its text.
func checkStatus(hresp *fasthttp.Response) error {
	code := hresp.StatusCode()
	if code == fasthttp.StatusOK {
		return nil
	}
	msg := bytes.TrimSpace(hresp.Body())
	if len(msg) > 512 {
		msg = msg[:512]
	}
	err := fmt.Errorf("status %d: %s", code, msg)
	if code >= 400 && code < 500 {
		err = fmt.Errorf("%w: %w", errBadRequest, err)
	}
	return err
}

// readStrings drains a response of string and warning frames.
func readStrings(fr *frameReader) ([]string, annotations.Annotations, error) {
	var (
		out []string
		ws  annotations.Annotations
	)
	for {
		f, err := fr.next()
		if err == io.EOF {
			return out, ws, nil
		}
		if err != nil {
			return nil, nil, err
		}
		switch f.typ {
		case frameString:
			out = append(out, f.str)
		case frameWarning:
			ws.Add(errors.New(f.str))
		default:
			return nil, nil, fmt.Errorf("unexpected frame %d: %w", f.typ, errMalformed)
		}
	}
}

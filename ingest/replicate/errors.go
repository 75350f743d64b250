package replicate

import (
	"errors"
	"fmt"
	"strings"

	"github.com/prometheus/prometheus/model/histogram"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/storage"
)

// unavailableError is ErrUnavailable's type. Its Unavailable method lets
// ingest/remotewrite recognise it without importing this package (ingest
// subpackages stay independent of each other).
type unavailableError struct{}

func (unavailableError) Error() string     { return "write quorum not reached" }
func (unavailableError) Unavailable() bool { return true }

// ErrUnavailable is wrapped by Commit errors that a retry may fix: a
// partition missed its write quorum, or no ring is known yet. Remote-write
// answers them 503 with Retry-After.
var ErrUnavailable error = unavailableError{}

// Rejection is one sample (or histogram) an owner refused.
type Rejection struct {
	Labels    labels.Labels
	T         int64
	Histogram bool
	Exemplars int   // exemplars that rode on it, lost with it
	Err       error // wraps the storage sentinel the owner reported, if any
}

// RejectedError is returned by Commit when peers refused some samples for
// reasons a retry cannot fix (e.g. a conflicting duplicate). Everything else
// was committed with quorum.
type RejectedError struct {
	Rejections []Rejection
}

func (e *RejectedError) Error() string {
	var sb strings.Builder
	fmt.Fprintf(&sb, "%d samples refused by replicas", len(e.Rejections))
	for i, r := range e.Rejections {
		if i == 3 {
			sb.WriteString("; ...")
			break
		}
		fmt.Fprintf(&sb, "; %s at %d: %v", r.Labels.String(), r.T, r.Err)
	}
	return sb.String()
}

// EachRejected calls fn for every rejection. It is how ingest/remotewrite
// reads them without importing this package.
func (e *RejectedError) EachRejected(fn func(ls labels.Labels, t int64, histogram bool, exemplars int, err error)) {
	for _, r := range e.Rejections {
		fn(r.Labels, r.T, r.Histogram, r.Exemplars, r.Err)
	}
}

// Reason codes on the wire: the storage sentinels a peer may report.
const (
	reasonOther byte = iota
	reasonDuplicate
	reasonOutOfBounds
	reasonOutOfOrder
	reasonTooOld
	reasonInvalidHistogram
)

func reasonOf(err error) byte {
	var herr histogram.Error
	switch {
	case errors.Is(err, storage.ErrDuplicateSampleForTimestamp):
		return reasonDuplicate
	case errors.Is(err, storage.ErrOutOfBounds):
		return reasonOutOfBounds
	case errors.Is(err, storage.ErrOutOfOrderSample):
		return reasonOutOfOrder
	case errors.Is(err, storage.ErrTooOldSample):
		return reasonTooOld
	case errors.As(err, &herr):
		return reasonInvalidHistogram
	}
	return reasonOther
}

// remoteError is a rejection decoded from a peer: its message, wrapping the
// sentinel its reason names so that errors.Is/As classify it as locally.
type remoteError struct {
	msg      string
	sentinel error
}

func (e *remoteError) Error() string { return e.msg }
func (e *remoteError) Unwrap() error { return e.sentinel }

var errRemoteOther = errors.New("refused by replica")

func errorOf(reason byte, msg string) error {
	var s error
	switch reason {
	case reasonDuplicate:
		s = storage.ErrDuplicateSampleForTimestamp
	case reasonOutOfBounds:
		s = storage.ErrOutOfBounds
	case reasonOutOfOrder:
		s = storage.ErrOutOfOrderSample
	case reasonTooOld:
		s = storage.ErrTooOldSample
	case reasonInvalidHistogram:
		// Only the type matters to classification; the message is msg.
		s = histogram.ErrHistogramSpansBucketsMismatch
	default:
		s = errRemoteOther
	}
	return &remoteError{msg: msg, sentinel: s}
}

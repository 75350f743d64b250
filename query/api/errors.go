package api

import (
	"context"
	"errors"
	"fmt"

	"github.com/prometheus/prometheus/promql"
	"github.com/valyala/fasthttp"
)

// errorType is the "errorType" string of an error response.
type errorType string

// The error types of Prometheus's API, with the HTTP status each one gets
// (web/api/v1/api.go getDefaultErrorCode).
const (
	errorTimeout       errorType = "timeout"        // 503
	errorCanceled      errorType = "canceled"       // 499
	errorExec          errorType = "execution"      // 422
	errorBadData       errorType = "bad_data"       // 400
	errorInternal      errorType = "internal"       // 500
	errorUnavailable   errorType = "unavailable"    // 503
	errorNotFound      errorType = "not_found"      // 404
	errorNotAcceptable errorType = "not_acceptable" // 406
)

// statusClientClosedRequest is nginx's non-standard 499, which Prometheus
// returns for canceled queries.
const statusClientClosedRequest = 499

func (t errorType) httpStatus() int {
	switch t {
	case errorBadData:
		return fasthttp.StatusBadRequest
	case errorExec:
		return fasthttp.StatusUnprocessableEntity
	case errorCanceled:
		return statusClientClosedRequest
	case errorTimeout, errorUnavailable:
		return fasthttp.StatusServiceUnavailable
	case errorNotFound:
		return fasthttp.StatusNotFound
	case errorNotAcceptable:
		return fasthttp.StatusNotAcceptable
	default:
		return fasthttp.StatusInternalServerError
	}
}

type apiError struct {
	typ errorType
	err error
}

func (e *apiError) Error() string {
	return fmt.Sprintf("%s: %s", e.typ, e.err)
}

func invalidParamError(err error, parameter string) apiFuncResult {
	return apiFuncResult{err: &apiError{errorBadData, fmt.Errorf("invalid parameter %q: %w", parameter, err)}}
}

func badData(err error) apiFuncResult {
	return apiFuncResult{err: &apiError{errorBadData, err}}
}

// unavailableError is the duck-typed contract that lets storage report
// "cannot answer right now" (not ready, no quorum) without an import.
type unavailableError interface {
	Unavailable() bool
}

// classifyError maps an engine or storage error to its API error type, as
// Prometheus's returnAPIError does, plus the Unavailable() convention.
func classifyError(err error) *apiError {
	if err == nil {
		return nil
	}
	var (
		canceled promql.ErrQueryCanceled
		timeout  promql.ErrQueryTimeout
		storErr  promql.ErrStorage
		unavail  unavailableError
	)
	switch {
	case errors.As(err, &unavail) && unavail.Unavailable():
		return &apiError{errorUnavailable, err}
	case errors.As(err, &canceled):
		return &apiError{errorCanceled, err}
	case errors.As(err, &timeout):
		return &apiError{errorTimeout, err}
	case errors.As(err, &storErr):
		return &apiError{errorInternal, err}
	case errors.Is(err, context.Canceled):
		return &apiError{errorCanceled, err}
	}
	return &apiError{errorExec, err}
}

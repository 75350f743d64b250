package api

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/prometheus/model/timestamp"
	"github.com/prometheus/prometheus/promql"
	"github.com/prometheus/prometheus/promql/parser"
	"github.com/prometheus/prometheus/util/stats"
)

// maxPointsPerSeries bounds range queries as Prometheus does: enough for a
// week at 60s resolution or a year at 1h.
const maxPointsPerSeries = 11000

// Accepted values of the "stats" parameter; any other non-empty value still
// enables stats but draws Prometheus's deprecation warning.
const (
	statsTrue = "true"
	statsAll  = "all"
)

func (a *API) query(r *request) (result apiFuncResult) {
	limit, err := parseLimit(r.formValue("limit"))
	if err != nil {
		return invalidParamError(err, "limit")
	}
	ts, err := r.timeParam("time", a.now())
	if err != nil {
		return invalidParamError(err, "time")
	}
	ctx := r.ctx
	if to := r.formValue("timeout"); to != "" {
		timeout, err := parseDuration(to)
		if err != nil {
			return invalidParamError(err, "timeout")
		}
		var cancel context.CancelFunc
		// Relative to the wall clock, not a.now: the deadline is about
		// real elapsed time, whatever time the query evaluates at.
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	opts, err := queryOpts(r)
	if err != nil {
		return badData(err)
	}

	qry, err := a.queries.NewInstantQuery(ctx, a.deps.Queryable, opts, r.formValue("query"), ts)
	if err != nil {
		return newQueryError(err)
	}
	return a.execQuery(ctx, r, qry, limit)
}

func (a *API) queryRange(r *request) (result apiFuncResult) {
	limit, err := parseLimit(r.formValue("limit"))
	if err != nil {
		return invalidParamError(err, "limit")
	}
	start, err := parseTime(r.formValue("start"))
	if err != nil {
		return invalidParamError(err, "start")
	}
	end, err := parseTime(r.formValue("end"))
	if err != nil {
		return invalidParamError(err, "end")
	}
	if end.Before(start) {
		return invalidParamError(errors.New("end timestamp must not be before start time"), "end")
	}
	step, err := parseDuration(r.formValue("step"))
	if err != nil {
		return invalidParamError(err, "step")
	}
	if step <= 0 {
		return invalidParamError(errors.New("zero or negative query resolution step widths are not accepted. Try a positive integer"), "step")
	}
	if end.Sub(start)/step > maxPointsPerSeries {
		return badData(errors.New("exceeded maximum resolution of 11,000 points per timeseries. Try decreasing the query resolution (?step=XX)"))
	}

	ctx := r.ctx
	if to := r.formValue("timeout"); to != "" {
		timeout, err := parseDuration(to)
		if err != nil {
			return invalidParamError(err, "timeout")
		}
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	opts, err := queryOpts(r)
	if err != nil {
		return badData(err)
	}

	qry, err := a.queries.NewRangeQuery(ctx, a.deps.Queryable, opts, r.formValue("query"), start, end, step)
	if err != nil {
		return newQueryError(err)
	}
	return a.execQuery(ctx, r, qry, limit)
}

// newQueryError classifies a failure to create a query. Creating one parses
// it, which is bad input, but parsing already waits for a concurrency slot:
// that wait timing out is a timeout, not bad data. (Prometheus reports both
// as bad_data.)
func newQueryError(err error) apiFuncResult {
	var (
		timeout  promql.ErrQueryTimeout
		canceled promql.ErrQueryCanceled
	)
	if errors.As(err, &timeout) || errors.As(err, &canceled) {
		return apiFuncResult{err: classifyError(err)}
	}
	return invalidParamError(err, "query")
}

// execQuery runs qry and shapes the result. It owns qry: either it closes
// it, or the returned finalizer does once the response has been written
// (the result's memory is pooled by the engine).
func (a *API) execQuery(ctx context.Context, r *request, qry promql.Query, limit int) (result apiFuncResult) {
	defer func() {
		if result.finalizer == nil {
			qry.Close()
		}
	}()

	res := qry.Exec(ctx)
	if res.Err != nil {
		return apiFuncResult{err: classifyError(res.Err), warnings: res.Warnings, finalizer: qry.Close}
	}

	warnings := res.Warnings
	if limit > 0 && truncateResult(res, limit) {
		warnings = warnings.Add(errTruncated)
	}
	statsParam := r.formValue("stats")
	switch statsParam {
	case "", statsTrue, statsAll:
	default:
		warnings = warnings.Add(fmt.Errorf("value %q for parameter \"stats\" is deprecated and will be rejected in the next major release, use %q or %q", statsParam, statsTrue, statsAll))
	}
	var qs stats.QueryStats
	if statsParam != "" {
		qs = stats.NewQueryStats(qry.Stats())
	}
	return apiFuncResult{
		data:      &queryData{ResultType: res.Value.Type(), Result: res.Value, Stats: qs},
		warnings:  warnings,
		finalizer: qry.Close,
	}
}

// truncateResult cuts vectors and matrices to limit series.
func truncateResult(res *promql.Result, limit int) bool {
	switch v := res.Value.(type) {
	case promql.Matrix:
		if len(v) > limit {
			res.Value = v[:limit]
			return true
		}
	case promql.Vector:
		if len(v) > limit {
			res.Value = v[:limit]
			return true
		}
	}
	return false
}

func queryOpts(r *request) (promql.QueryOpts, error) {
	var lookback time.Duration
	if s := r.formValue("lookback_delta"); s != "" {
		d, err := parseDuration(s)
		if err != nil {
			return nil, fmt.Errorf("error parsing lookback delta duration: %w", err)
		}
		lookback = d
	}
	return promql.NewPrometheusQueryOpts(r.formValue("stats") == statsAll, lookback), nil
}

func (a *API) queryExemplars(r *request) apiFuncResult {
	start, err := r.timeParam("start", minTime)
	if err != nil {
		return invalidParamError(err, "start")
	}
	end, err := r.timeParam("end", maxTime)
	if err != nil {
		return invalidParamError(err, "end")
	}
	if end.Before(start) {
		return badData(errors.New("end timestamp must not be before start timestamp"))
	}
	expr, err := a.parser.ParseExpr(r.formValue("query"))
	if err != nil {
		return badData(err)
	}
	selectors := parser.ExtractSelectors(expr)
	if len(selectors) == 0 {
		// Prometheus answers 204 No Content here; a nil result does that.
		return apiFuncResult{}
	}
	if a.deps.Exemplars == nil {
		return apiFuncResult{data: []string{}}
	}
	eq, err := a.deps.Exemplars.ExemplarQuerier(r.ctx)
	if err != nil {
		return apiFuncResult{err: classifyError(err)}
	}
	res, err := eq.Select(timestamp.FromTime(start), timestamp.FromTime(end), selectors...)
	if err != nil {
		return apiFuncResult{err: classifyError(err)}
	}
	return apiFuncResult{data: res}
}

func (a *API) formatQuery(r *request) apiFuncResult {
	expr, err := a.parser.ParseExpr(r.formValue("query"))
	if err != nil {
		return invalidParamError(err, "query")
	}
	return apiFuncResult{data: expr.Pretty(0)}
}

func (a *API) parseQuery(r *request) apiFuncResult {
	expr, err := a.parser.ParseExpr(r.formValue("query"))
	if err != nil {
		return invalidParamError(err, "query")
	}
	return apiFuncResult{data: astJSON(expr)}
}

// queryGate limits concurrently executing queries. It plugs into the
// engine as its QueryTracker (without Prometheus's mmapped active-query
// log), so the engine accounts the wait as queue time in query stats.
//
// Behaviour when full, chosen to match Prometheus: a query waits for a slot
// until its context ends, i.e. at most the engine timeout or the request's
// timeout parameter. It then fails with "query timed out in query queue"
// (errorType timeout, HTTP 503) or "query was canceled in query queue".
// Prometheus returns the bare context error there, which its API reports as
// a 422 execution error; the typed engine error reports what happened.
type queryGate struct {
	slots    chan struct{}
	timeouts prometheus.Counter
}

func newQueryGate(n int, timeouts prometheus.Counter) *queryGate {
	return &queryGate{slots: make(chan struct{}, n), timeouts: timeouts}
}

func (g *queryGate) GetMaxConcurrent() int { return cap(g.slots) }

func (g *queryGate) Insert(ctx context.Context, _ string) (int, error) {
	select {
	case g.slots <- struct{}{}:
		return 0, nil
	default:
	}
	select {
	case g.slots <- struct{}{}:
		return 0, nil
	case <-ctx.Done():
		g.timeouts.Inc()
		if errors.Is(ctx.Err(), context.Canceled) {
			return 0, promql.ErrQueryCanceled("query queue")
		}
		return 0, promql.ErrQueryTimeout("query queue")
	}
}

func (g *queryGate) Delete(int) { <-g.slots }

func (*queryGate) Close() error { return nil }

var _ promql.QueryTracker = (*queryGate)(nil)

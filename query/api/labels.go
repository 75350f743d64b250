package api

import (
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strconv"
	"strings"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/metadata"
	"github.com/prometheus/prometheus/model/timestamp"
	"github.com/prometheus/prometheus/storage"
	"github.com/prometheus/prometheus/util/annotations"
)

// checkContextEvery is how many series a listing loop handles between
// context checks; checking on every series costs more than it saves.
const checkContextEvery = 128

var errTruncated = errors.New("results truncated due to limit")

func (a *API) series(r *request) (result apiFuncResult) {
	selectors := r.formValues("match[]")
	if len(selectors) == 0 {
		return badData(errors.New("no match[] parameter provided"))
	}
	limit, err := parseLimit(r.formValue("limit"))
	if err != nil {
		return invalidParamError(err, "limit")
	}
	start, err := r.timeParam("start", minTime)
	if err != nil {
		return invalidParamError(err, "start")
	}
	end, err := r.timeParam("end", maxTime)
	if err != nil {
		return invalidParamError(err, "end")
	}
	matcherSets, err := a.parseMatchers(selectors)
	if err != nil {
		return invalidParamError(err, "match[]")
	}

	mint, maxt := timestamp.FromTime(start), timestamp.FromTime(end)
	q, err := a.deps.Queryable.Querier(mint, maxt)
	if err != nil {
		return apiFuncResult{err: classifyError(err)}
	}
	// The label sets returned may reference querier memory, so the querier
	// is closed only after the response is written.
	defer func() {
		if result.finalizer == nil {
			_ = q.Close()
		}
	}()
	closer := func() { _ = q.Close() }

	hints := &storage.SelectHints{
		Start: mint,
		End:   maxt,
		Func:  "series", // not a function: tells storage no samples are needed
		Limit: hintLimit(limit),
	}
	var set storage.SeriesSet
	if len(matcherSets) > 1 {
		sets := make([]storage.SeriesSet, 0, len(matcherSets))
		for _, ms := range matcherSets {
			// Sorted, because the merge deduplicates adjacent equal series.
			sets = append(sets, q.Select(r.ctx, true, hints, ms...))
		}
		set = storage.NewMergeSeriesSet(sets, 0, storage.ChainedSeriesMerge)
	} else {
		set = q.Select(r.ctx, false, hints, matcherSets[0]...)
	}

	metrics := []labels.Labels{}
	var warnings annotations.Annotations
	for i := 1; set.Next(); i++ {
		if i%checkContextEvery == 0 {
			if err := r.ctx.Err(); err != nil {
				return apiFuncResult{err: classifyError(err), warnings: set.Warnings(), finalizer: closer}
			}
		}
		metrics = append(metrics, set.At().Labels())
		if limit > 0 && len(metrics) > limit {
			metrics = metrics[:limit]
			warnings.Add(errTruncated)
			break
		}
	}
	warnings.Merge(set.Warnings())
	if err := set.Err(); err != nil {
		return apiFuncResult{err: classifyError(err), warnings: warnings, finalizer: closer}
	}
	return apiFuncResult{data: metrics, warnings: warnings, finalizer: closer}
}

func (a *API) labelNames(r *request) apiFuncResult {
	limit, err := parseLimit(r.formValue("limit"))
	if err != nil {
		return invalidParamError(err, "limit")
	}
	start, err := r.timeParam("start", minTime)
	if err != nil {
		return invalidParamError(err, "start")
	}
	end, err := r.timeParam("end", maxTime)
	if err != nil {
		return invalidParamError(err, "end")
	}
	matcherSets, err := a.parseMatchers(r.formValues("match[]"))
	if err != nil {
		return badData(err)
	}

	q, err := a.deps.Queryable.Querier(timestamp.FromTime(start), timestamp.FromTime(end))
	if err != nil {
		return apiFuncResult{err: classifyError(err)}
	}
	// Names may point into querier memory (e.g. an mmapped index), so
	// the querier stays open until the response is written.
	closer := func() { _ = q.Close() }

	hints := &storage.LabelHints{Limit: hintLimit(limit)}
	names, warnings, err := collectLabelStrings(matcherSets, func(ms []*labels.Matcher) ([]string, annotations.Annotations, error) {
		return q.LabelNames(r.ctx, hints, ms...)
	})
	if err != nil {
		return apiFuncResult{err: classifyError(err), warnings: warnings, finalizer: closer}
	}
	if limit > 0 && len(names) > limit {
		names = names[:limit]
		warnings.Add(errTruncated)
	}
	return apiFuncResult{data: names, warnings: warnings, finalizer: closer}
}

func (a *API) labelValuesHandler(r *request) apiFuncResult {
	name, err := labelNameFromPath(r.fctx.URI().PathOriginal())
	if err != nil {
		return badData(err)
	}
	limit, err := parseLimit(r.formValue("limit"))
	if err != nil {
		return invalidParamError(err, "limit")
	}
	start, err := r.timeParam("start", minTime)
	if err != nil {
		return invalidParamError(err, "start")
	}
	end, err := r.timeParam("end", maxTime)
	if err != nil {
		return invalidParamError(err, "end")
	}
	matcherSets, err := a.parseMatchers(r.formValues("match[]"))
	if err != nil {
		return badData(err)
	}

	q, err := a.deps.Queryable.Querier(timestamp.FromTime(start), timestamp.FromTime(end))
	if err != nil {
		return apiFuncResult{err: &apiError{errorExec, err}}
	}
	closer := func() { _ = q.Close() }

	hints := &storage.LabelHints{Limit: hintLimit(limit)}
	vals, warnings, err := collectLabelStrings(matcherSets, func(ms []*labels.Matcher) ([]string, annotations.Annotations, error) {
		return q.LabelValues(r.ctx, name, hints, ms...)
	})
	if err != nil {
		return apiFuncResult{err: classifyError(err), warnings: warnings, finalizer: closer}
	}
	if limit > 0 && len(vals) > limit {
		vals = vals[:limit]
		warnings.Add(errTruncated)
	}
	return apiFuncResult{data: vals, warnings: warnings, finalizer: closer}
}

// labelNameFromPath extracts <name> from /api/v1/label/<name>/values. It
// decodes the raw path itself so that names containing an escaped "/"
// still resolve, then applies Prometheus's U__ value-encoding escape
// (e.g. U__http_2e_status -> http.status) for UTF-8 names.
func labelNameFromPath(raw []byte) (string, error) {
	p := string(raw)
	if i := strings.IndexByte(p, '?'); i >= 0 {
		p = p[:i]
	}
	p = strings.TrimSuffix(strings.TrimPrefix(p, string(labelValuesPrefix)), string(labelValuesSuffix))
	name, err := url.PathUnescape(p)
	if err != nil {
		return "", fmt.Errorf("invalid label name: %q", p)
	}
	if strings.HasPrefix(name, "U__") {
		name = model.UnescapeName(name, model.ValueEncodingEscaping)
	}
	if !model.UTF8Validation.IsValidLabelName(name) {
		return "", fmt.Errorf("invalid label name: %q", name)
	}
	return name, nil
}

// collectLabelStrings runs get once per matcher set (once with no matchers
// when there are none) and returns the sorted union of the results.
func collectLabelStrings(matcherSets [][]*labels.Matcher, get func([]*labels.Matcher) ([]string, annotations.Annotations, error)) ([]string, annotations.Annotations, error) {
	var warnings annotations.Annotations
	if len(matcherSets) <= 1 {
		var ms []*labels.Matcher
		if len(matcherSets) == 1 {
			ms = matcherSets[0]
		}
		vals, ws, err := get(ms)
		warnings.Merge(ws)
		if err != nil {
			return nil, warnings, err
		}
		if vals == nil {
			vals = []string{}
		}
		// Storage already returns sorted results; sorting a sorted slice
		// is cheap and guards against sources that do not.
		if !slices.IsSorted(vals) {
			vals = slices.Clone(vals)
			slices.Sort(vals)
		}
		return vals, warnings, nil
	}
	set := map[string]struct{}{}
	for _, ms := range matcherSets {
		vals, ws, err := get(ms)
		warnings.Merge(ws)
		if err != nil {
			return nil, warnings, err
		}
		for _, v := range vals {
			set[v] = struct{}{}
		}
	}
	out := make([]string, 0, len(set))
	for v := range set {
		out = append(out, v)
	}
	slices.Sort(out)
	return out, warnings, nil
}

func (a *API) metricMetadata(r *request) apiFuncResult {
	limit := -1
	if s := r.formValue("limit"); s != "" {
		var err error
		if limit, err = strconv.Atoi(s); err != nil {
			return badData(errors.New("limit must be a number"))
		}
	}
	limitPerMetric := -1
	if s := r.formValue("limit_per_metric"); s != "" {
		var err error
		if limitPerMetric, err = strconv.Atoi(s); err != nil {
			return badData(errors.New("limit_per_metric must be a number"))
		}
	}
	metric := r.formValue("metric")

	res := map[string][]metadata.Metadata{}
	if a.deps.Metadata == nil {
		return apiFuncResult{data: res}
	}
	got, err := a.deps.Metadata.Metadata(r.ctx, metric, limit, limitPerMetric)
	if err != nil {
		return apiFuncResult{err: &apiError{errorInternal, err}}
	}

	// Enforce the limits here too (sources may ignore them), keeping the
	// alphabetically first families so the cut is deterministic.
	names := make([]string, 0, len(got))
	for name := range got {
		if metric == "" || name == metric {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	for _, name := range names {
		if limit >= 0 && len(res) >= limit {
			break
		}
		ms := got[name]
		if len(ms) == 0 {
			continue // a family without metadata is not known
		}
		if limitPerMetric > 0 && len(ms) > limitPerMetric {
			ms = ms[:limitPerMetric]
		}
		res[name] = ms
	}
	return apiFuncResult{data: res}
}

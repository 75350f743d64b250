package api

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"mime/multipart"
	"strconv"
	"time"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/valyala/fasthttp"

	"github.com/kilnhq/kiln/query/fanout"
)

// request gives handlers net/http-like form access over a fasthttp request.
type request struct {
	fctx *fasthttp.RequestCtx
	ctx  context.Context

	// multipart is parsed on first use; formParsed records that we tried.
	multipart  *multipart.Form
	formParsed bool
}

// bodyForm reports whether the body carries form values. Like net/http's
// ParseForm, only POST, PUT and PATCH bodies are read.
func (r *request) bodyForm() (post *fasthttp.Args, mp *multipart.Form) {
	m := r.fctx.Method()
	if !bytes.Equal(m, []byte(fasthttp.MethodPost)) && !bytes.Equal(m, []byte(fasthttp.MethodPut)) && !bytes.Equal(m, []byte(fasthttp.MethodPatch)) {
		return nil, nil
	}
	if !r.formParsed {
		r.formParsed = true
		if bytes.HasPrefix(r.fctx.Request.Header.ContentType(), []byte("multipart/form-data")) {
			r.multipart, _ = r.fctx.MultipartForm()
		}
	}
	return r.fctx.PostArgs(), r.multipart
}

// formValue returns the first value of key, body values taking precedence
// over URL query values (net/http's Request.FormValue).
func (r *request) formValue(key string) string {
	post, mp := r.bodyForm()
	if post != nil && post.Has(key) {
		return string(post.Peek(key))
	}
	if mp != nil {
		if vs := mp.Value[key]; len(vs) > 0 {
			return vs[0]
		}
	}
	return string(r.fctx.QueryArgs().Peek(key))
}

// formValues returns all values of key: body values first, then URL query
// values (net/http's Request.Form[key]).
func (r *request) formValues(key string) []string {
	var out []string
	post, mp := r.bodyForm()
	if post != nil {
		for _, v := range post.PeekMulti(key) {
			out = append(out, string(v))
		}
	}
	if mp != nil {
		out = append(out, mp.Value[key]...)
	}
	for _, v := range r.fctx.QueryArgs().PeekMulti(key) {
		out = append(out, string(v))
	}
	return out
}

// minTime and maxTime are the defaults of optional time ranges. They are
// Prometheus's values (not the int64 extremes) because clients send them
// back verbatim, e.g. client_golang formats them as RFC 3339.
var (
	minTime = time.Unix(math.MinInt64/1000+62135596801, 0).UTC()
	maxTime = time.Unix(math.MaxInt64/1000-62135596801, 999999999).UTC()

	minTimeFormatted = minTime.Format(time.RFC3339Nano)
	maxTimeFormatted = maxTime.Format(time.RFC3339Nano)
)

func (r *request) timeParam(name string, def time.Time) (time.Time, error) {
	v := r.formValue(name)
	if v == "" {
		return def, nil
	}
	t, err := parseTime(v)
	if err != nil {
		return time.Time{}, fmt.Errorf("invalid time value for '%s': %w", name, err)
	}
	return t, nil
}

// parseTime accepts float Unix seconds (rounded to milliseconds) or RFC 3339.
func parseTime(s string) (time.Time, error) {
	if f, err := strconv.ParseFloat(s, 64); err == nil {
		sec, frac := math.Modf(f)
		frac = math.Round(frac*1000) / 1000
		return time.Unix(int64(sec), int64(frac*float64(time.Second))).UTC(), nil
	}
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t, nil
	}
	// time.Parse only handles 4-digit years, so the range defaults (which
	// clients echo back) need matching by hand.
	switch s {
	case minTimeFormatted:
		return minTime, nil
	case maxTimeFormatted:
		return maxTime, nil
	}
	return time.Time{}, fmt.Errorf("cannot parse %q to a valid timestamp", s)
}

// parseDuration accepts float seconds or a Prometheus duration ("5m").
func parseDuration(s string) (time.Duration, error) {
	if f, err := strconv.ParseFloat(s, 64); err == nil {
		ns := f * float64(time.Second)
		if ns > float64(math.MaxInt64) || ns < float64(math.MinInt64) {
			return 0, fmt.Errorf("cannot parse %q to a valid duration. It overflows int64", s)
		}
		return time.Duration(ns), nil
	}
	if d, err := model.ParseDuration(s); err == nil {
		return time.Duration(d), nil
	}
	return 0, fmt.Errorf("cannot parse %q to a valid duration", s)
}

// parseLimit parses the "limit" parameter; 0 means no limit.
func parseLimit(s string) (int, error) {
	if s == "" {
		return 0, nil
	}
	limit, err := strconv.Atoi(s)
	if err != nil {
		return 0, err
	}
	if limit < 0 {
		return 0, errors.New("limit must be non-negative")
	}
	return limit, nil
}

// hintLimit asks storage for one more item than the limit, so the handler
// can tell whether the result was truncated.
func hintLimit(limit int) int {
	if limit > 0 && limit < math.MaxInt {
		return limit + 1
	}
	return limit
}

// parseMatchers parses match[] selectors. Like Prometheus, every selector
// must have a matcher that rejects the empty string, so that no selector
// selects every series.
func (a *API) parseMatchers(selectors []string) ([][]*labels.Matcher, error) {
	sets, err := a.parser.ParseMetricSelectors(selectors)
	if err != nil {
		return nil, err
	}
	for _, set := range sets {
		if !hasNonEmptyMatcher(set) {
			return nil, errors.New("match[] must contain at least one non-empty matcher")
		}
	}
	return sets, nil
}

func hasNonEmptyMatcher(set []*labels.Matcher) bool {
	for _, m := range set {
		if m != nil && !m.Matches("") {
			return true
		}
	}
	return false
}

// partialResponse reads the partial_response parameter into the request
// context. Absent, the storage's default applies.
func (r *request) partialResponse() error {
	v := r.formValue("partial_response")
	if v == "" {
		return nil
	}
	on, err := strconv.ParseBool(v)
	if err != nil {
		return fmt.Errorf("invalid parameter %q: cannot parse %q as a boolean", "partial_response", v)
	}
	r.ctx = fanout.WithPartialResponse(r.ctx, on)
	return nil
}

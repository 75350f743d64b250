package parallel

import (
	"slices"
	"strconv"
	"strings"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql/parser"
)

// combine says how the slices' results of one aggregation become its
// result.
type combine int

const (
	// byEngine: each slice evaluates the aggregation itself; the outer
	// query aggregates the slices' results again with the same operator
	// (sum for count).
	byEngine combine = iota
	// inGo: each slice evaluates only the aggregation's argument and sums
	// its series here, keeping the Kahan compensation of each slice's sum
	// apart until the slices are added up: a slice's sum rounded on its
	// own could lose what cancels against another slice (see partial).
	// For sum and avg of floats.
	inGo
)

// sliced is one aggregation evaluated in slices.
type sliced struct {
	name    string // the synthetic metric the outer query reads it from
	combine combine
	// sub is the query every slice evaluates, padded with spaces in front
	// so that positions in its annotations are those of the original text.
	sub string
	// For inGo: the operator and grouping of the aggregation.
	op       parser.ItemType
	grouping []string
	without  bool
	// metric is the one metric the argument selects.
	metric string
	// text is the aggregation's, which the engine remembers it by.
	text string
	// rollup, when set, computes an inGo argument without the engine.
	rollup *rollup
}

// plan is a query rewritten for slicing: outer reads each sliced
// aggregation from a synthetic selector. It has the original's length, and
// every expression outside a sliced aggregation keeps its position, so
// annotations of the outer query point into the original text too.
type plan struct {
	outer  string
	sliced []*sliced
}

// newPlan returns the plan for qs, or nil when nothing in it can be sliced
// (or qs does not parse, which the engine then reports). A sliceable
// aggregation that keep, when set, rejects is left to the outer query.
func newPlan(p parser.Parser, qs string, keep func(*sliced) bool) *plan {
	expr, err := p.ParseExpr(qs)
	if err != nil {
		return nil
	}
	var found []*parser.AggregateExpr
	findSliceable(expr, &found)
	if len(found) == 0 {
		return nil
	}
	out := []byte(qs)
	pl := &plan{}
	next := 0
	kept := found[:0]
	for _, a := range found {
		name := syntheticName(qs, &next)
		ar, er := a.PositionRange(), a.Expr.PositionRange()
		if int(er.End-er.Start) < len(name) || er.Start < ar.Start || er.End > ar.End || int(ar.End) > len(qs) {
			return nil // the argument is too short for any name: not worth it
		}
		// Sorted, as the label hashing of the grouping needs them.
		grouping := slices.Clone(a.Grouping)
		slices.Sort(grouping)
		s := &sliced{name: name, op: a.Op, grouping: grouping, without: a.Without, metric: metricOf(a.Expr), text: qs[ar.Start:ar.End]}
		if a.Op == parser.AVG || a.Op == parser.SUM {
			s.combine = inGo
		}
		if keep != nil && !keep(s) {
			continue
		}
		if s.combine == inGo {
			s.rollup = rollupOf(a.Expr)
			s.sub = strings.Repeat(" ", int(er.Start)) + qs[er.Start:er.End]
		} else {
			s.sub = strings.Repeat(" ", int(ar.Start)) + qs[ar.Start:ar.End]
		}
		// The argument's text becomes the synthetic name, padded.
		copy(out[er.Start:er.End], name+strings.Repeat(" ", int(er.End-er.Start)-len(name)))
		if a.Op == parser.COUNT {
			// Counts of the slices add up: "count" becomes "sum  ".
			if !strings.EqualFold(qs[ar.Start:ar.Start+5], "count") {
				return nil
			}
			copy(out[ar.Start:], "sum  ")
		}
		pl.sliced = append(pl.sliced, s)
		kept = append(kept, a)
	}
	if len(pl.sliced) == 0 {
		return nil
	}
	pl.outer = string(out)
	if !pl.verify(p, expr, kept) {
		return nil
	}
	return pl
}

// verify parses the outer query and checks it is the original with each
// sliced aggregation's argument replaced by a plain synthetic selector (no
// offset or @ left behind by a position range that did not cover them), as
// printed expressions. found are the sliced aggregations, in orig.
func (pl *plan) verify(p parser.Parser, orig parser.Expr, found []*parser.AggregateExpr) bool {
	outer, err := p.ParseExpr(pl.outer)
	if err != nil {
		return false
	}
	// orig is not used afterwards: rewrite it in place.
	for i, a := range found {
		a.Expr = &parser.VectorSelector{
			Name:          pl.sliced[i].name,
			LabelMatchers: []*labels.Matcher{labels.MustNewMatcher(labels.MatchEqual, model.MetricNameLabel, pl.sliced[i].name)},
		}
		if a.Op == parser.COUNT {
			a.Op = parser.SUM
		}
	}
	return orig.String() == outer.String()
}

// syntheticName returns a metric name that does not occur in qs.
func syntheticName(qs string, next *int) string {
	for {
		n := "_" + strconv.FormatInt(int64(*next), 36)
		*next++
		if !strings.Contains(qs, n) {
			return n
		}
	}
}

// findSliceable collects, in evaluation-tree order, the outermost
// aggregations that can be sliced and are evaluated at the query's own
// steps: reached from the root through instant-vector operations only, not
// through a subquery or range function, which evaluate at other times.
func findSliceable(n parser.Node, out *[]*parser.AggregateExpr) {
	switch n := n.(type) {
	case *parser.AggregateExpr:
		if sliceable(n) {
			*out = append(*out, n)
			return
		}
		findSliceable(n.Expr, out)
	case *parser.BinaryExpr:
		findSliceable(n.LHS, out)
		findSliceable(n.RHS, out)
	case *parser.Call:
		for _, a := range n.Args {
			if a.Type() == parser.ValueTypeVector {
				findSliceable(a, out)
			}
		}
	case *parser.ParenExpr:
		findSliceable(n.Expr, out)
	case *parser.UnaryExpr:
		findSliceable(n.Expr, out)
	}
}

// sliceable reports whether a is an aggregation whose result over all
// series is the same aggregation of its results over disjoint slices of the
// series: sum, min, max, count, group and avg of an expression that maps
// each series of one selector to at most one series of its own.
func sliceable(a *parser.AggregateExpr) bool {
	switch a.Op {
	case parser.SUM, parser.MIN, parser.MAX, parser.COUNT, parser.GROUP, parser.AVG:
	default:
		return false
	}
	for _, g := range a.Grouping {
		if g == model.MetricNameLabel {
			// Name handling differs between delayed and immediate
			// name removal; keep it the engine's alone.
			return false
		}
	}
	selectors := 0
	if !perSeries(a.Expr, &selectors) || selectors != 1 {
		return false
	}
	return true
}

// perSeries reports whether e evaluates each series of its selectors on its
// own, keeping series apart. It counts the selectors, each of which must
// name one metric: a selector over several metrics can make two series
// equal once a function drops their names, an error the engine raises only
// when it sees both.
func perSeries(e parser.Expr, selectors *int) bool {
	switch e := e.(type) {
	case *parser.VectorSelector:
		*selectors++
		return metricOf(e) != ""
	case *parser.MatrixSelector:
		return perSeries(e.VectorSelector, selectors)
	case *parser.SubqueryExpr:
		return perSeries(e.Expr, selectors)
	case *parser.ParenExpr:
		return perSeries(e.Expr, selectors)
	case *parser.UnaryExpr:
		return perSeries(e.Expr, selectors)
	case *parser.NumberLiteral, *parser.StringLiteral:
		return true
	case *parser.BinaryExpr:
		// A vector with a scalar, never two vectors (those match
		// series with each other).
		if e.LHS.Type() == parser.ValueTypeVector && e.RHS.Type() == parser.ValueTypeVector {
			return false
		}
		return perSeries(e.LHS, selectors) && perSeries(e.RHS, selectors)
	case *parser.Call:
		if !perSeriesFuncs[e.Func.Name] {
			return false
		}
		for _, a := range e.Args {
			if !perSeries(a, selectors) {
				return false
			}
		}
		return true
	}
	return false
}

// metricOf returns the metric named by the first selector in e.
func metricOf(e parser.Node) string {
	name := ""
	parser.Inspect(e, func(n parser.Node, _ []parser.Node) error {
		if vs, ok := n.(*parser.VectorSelector); ok && name == "" {
			for _, m := range vs.LabelMatchers {
				if m.Name == model.MetricNameLabel && m.Type == labels.MatchEqual {
					name = m.Value
				}
			}
		}
		return nil
	})
	return name
}

// perSeriesFuncs are the functions whose result for a series depends on
// that series alone and keeps its identity. Not here: functions that look
// across series (histogram_quantile of classic buckets, absent, sort, info,
// scalar, vector, count_values) or rewrite labels (label_replace,
// label_join), which may make two series one.
var perSeriesFuncs = map[string]bool{
	"rate": true, "irate": true, "increase": true, "delta": true, "idelta": true,
	"deriv": true, "predict_linear": true, "resets": true, "changes": true,
	"avg_over_time": true, "min_over_time": true, "max_over_time": true, "sum_over_time": true,
	"count_over_time": true, "last_over_time": true, "present_over_time": true,
	"quantile_over_time": true, "stddev_over_time": true, "stdvar_over_time": true,
	"abs": true, "ceil": true, "floor": true, "round": true, "exp": true, "sqrt": true,
	"ln": true, "log2": true, "log10": true, "sgn": true,
	"clamp": true, "clamp_min": true, "clamp_max": true,
	"histogram_count": true, "histogram_sum": true, "histogram_avg": true,
}

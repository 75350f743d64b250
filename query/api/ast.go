package api

import (
	"strconv"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql/parser"
)

// jsonObj is one AST node of /api/v1/parse_query. Maps (rather than
// structs) because Prometheus emits maps, so its keys come out sorted and
// the bytes match.
type jsonObj = map[string]any

// astJSON converts a parsed expression into the tree Prometheus's UI
// consumes from /api/v1/parse_query. Durations are in milliseconds,
// absent optional parts are null and lists are never null.
func astJSON(e parser.Expr) any {
	switch n := e.(type) {
	case nil:
		return nil
	case *parser.AggregateExpr:
		return jsonObj{
			"type":     "aggregation",
			"op":       n.Op.String(),
			"expr":     astJSON(n.Expr),
			"param":    astJSON(n.Param),
			"grouping": nonNil(n.Grouping),
			"without":  n.Without,
		}
	case *parser.BinaryExpr:
		var matching any
		if vm := n.VectorMatching; vm != nil {
			matching = jsonObj{
				"card":    vm.Card.String(),
				"labels":  nonNil(vm.MatchingLabels),
				"on":      vm.On,
				"include": nonNil(vm.Include),
				"fillValues": map[string]*float64{
					"lhs": vm.FillValues.LHS,
					"rhs": vm.FillValues.RHS,
				},
			}
		}
		return jsonObj{
			"type":     "binaryExpr",
			"op":       n.Op.String(),
			"lhs":      astJSON(n.LHS),
			"rhs":      astJSON(n.RHS),
			"matching": matching,
			"bool":     n.ReturnBool,
		}
	case *parser.Call:
		args := make([]any, 0, len(n.Args))
		for _, arg := range n.Args {
			args = append(args, astJSON(arg))
		}
		return jsonObj{
			"type": "call",
			"func": jsonObj{
				"name":       n.Func.Name,
				"argTypes":   n.Func.ArgTypes,
				"variadic":   n.Func.Variadic,
				"returnType": n.Func.ReturnType,
			},
			"args": args,
		}
	case *parser.MatrixSelector:
		vs, _ := n.VectorSelector.(*parser.VectorSelector)
		if vs == nil {
			return nil
		}
		obj := selectorJSON("matrixSelector", vs)
		obj["range"] = n.Range.Milliseconds()
		obj["rangeExpr"] = durationExprJSON(n.RangeExpr)
		return obj
	case *parser.VectorSelector:
		return selectorJSON("vectorSelector", n)
	case *parser.SubqueryExpr:
		return jsonObj{
			"type":       "subquery",
			"expr":       astJSON(n.Expr),
			"range":      n.Range.Milliseconds(),
			"rangeExpr":  durationExprJSON(n.RangeExpr),
			"offset":     n.OriginalOffset.Milliseconds(),
			"offsetExpr": durationExprJSON(n.OriginalOffsetExpr),
			"step":       n.Step.Milliseconds(),
			"stepExpr":   durationExprJSON(n.StepExpr),
			"timestamp":  n.Timestamp,
			"startOrEnd": startOrEnd(n.StartOrEnd),
		}
	case *parser.DurationExpr:
		return durationPartJSON(n)
	case *parser.NumberLiteral:
		// A plain number literal has no "duration" key, unlike one inside
		// a duration expression.
		return map[string]string{
			"type": "numberLiteral",
			"val":  strconv.FormatFloat(n.Val, 'f', -1, 64),
		}
	case *parser.ParenExpr:
		return jsonObj{"type": "parenExpr", "expr": astJSON(n.Expr)}
	case *parser.StringLiteral:
		return jsonObj{"type": "stringLiteral", "val": n.Val}
	case *parser.UnaryExpr:
		return jsonObj{"type": "unaryExpr", "op": n.Op.String(), "expr": astJSON(n.Expr)}
	case *parser.StepInvariantExpr:
		// Only the engine inserts these, never the parser.
		return astJSON(n.Expr)
	}
	return nil
}

// selectorJSON holds the keys vector and matrix selectors share.
func selectorJSON(typ string, vs *parser.VectorSelector) jsonObj {
	matchers := make([]jsonObj, 0, len(vs.LabelMatchers))
	for _, m := range vs.LabelMatchers {
		matchers = append(matchers, matcherJSON(m))
	}
	return jsonObj{
		"type":       typ,
		"name":       vs.Name,
		"offset":     vs.OriginalOffset.Milliseconds(),
		"offsetExpr": durationExprJSON(vs.OriginalOffsetExpr),
		"matchers":   matchers,
		"timestamp":  vs.Timestamp,
		"startOrEnd": startOrEnd(vs.StartOrEnd),
		"anchored":   vs.Anchored,
		"smoothed":   vs.Smoothed,
	}
}

func matcherJSON(m *labels.Matcher) jsonObj {
	return jsonObj{"name": m.Name, "value": m.Value, "type": m.Type.String()}
}

// durationExprJSON takes the typed pointer the AST stores so that a nil
// *DurationExpr becomes JSON null rather than a non-nil interface.
func durationExprJSON(d *parser.DurationExpr) any {
	if d == nil {
		return nil
	}
	return durationPartJSON(d)
}

// durationPartJSON renders a node inside a duration expression: nested
// duration operations, number literals (with their "duration" flag), or
// anything else as a normal AST node.
func durationPartJSON(e parser.Expr) any {
	switch n := e.(type) {
	case nil:
		return nil
	case *parser.DurationExpr:
		if n == nil {
			return nil
		}
		return jsonObj{
			"type":    "durationExpr",
			"op":      n.Op.String(),
			"lhs":     durationPartJSON(n.LHS),
			"rhs":     durationPartJSON(n.RHS),
			"wrapped": n.Wrapped,
		}
	case *parser.NumberLiteral:
		if n == nil {
			return nil
		}
		return jsonObj{
			"type":     "numberLiteral",
			"val":      strconv.FormatFloat(n.Val, 'f', -1, 64),
			"duration": n.Duration,
		}
	}
	return astJSON(e)
}

func startOrEnd(t parser.ItemType) any {
	if t == 0 {
		return nil
	}
	return t.String()
}

func nonNil(ss []string) []string {
	if ss == nil {
		return []string{}
	}
	return ss
}

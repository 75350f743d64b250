package parallel

import (
	"strings"
	"testing"

	"github.com/prometheus/prometheus/promql/parser"
	"github.com/stretchr/testify/require"
)

func TestPlan(t *testing.T) {
	p := parser.NewParser(parser.Options{})
	for _, tc := range []struct {
		qs    string
		outer string // "" when nothing is sliced
		subs  []string
	}{
		{`sum by (job) (rate(x_total[5m]))`, `sum by (job) (_0                )`, []string{`rate(x_total[5m])`}},
		{`count(up)`, `sum  (_0)`, []string{`count(up)`}},
		{`COUNT(up) by (job)`, `sum  (_0) by (job)`, []string{`COUNT(up) by (job)`}},
		{`max(up) - min(up)`, `max(_0) - min(_1)`, []string{`max(up)`, `          min(up)`}},
		{`avg(queue)`, `avg(_0   )`, []string{`    queue`}},
		{`histogram_quantile(0.9, sum by (le) (rate(b_bucket[5m])))`, `histogram_quantile(0.9, sum by (le) (_0                 ))`, []string{`                                     rate(b_bucket[5m])`}},
		{`topk(5, sum by (pod) (rate(cpu[5m])))`, `topk(5, sum by (pod) (_0           ))`, []string{`                      rate(cpu[5m])`}},
		{"sum(\n  rate(x_total[5m])\n)", "sum(\n  _0               \n)", []string{"      rate(x_total[5m])"}},
		// A name the query already uses is skipped.
		{`sum(_0) + sum(other)`, `sum(_1) + sum(_2   )`, []string{`    _0`, `              other`}},

		{`sum(x)`, "", nil},                                     // no room for a name
		{`sum(rate({__name__=~"x.*"}[5m]))`, "", nil},           // several metrics
		{`sum(a + b)`, "", nil},                                 // two selectors
		{`sum(label_replace(up, "a", "b", "c", "d"))`, "", nil}, // rewrites labels
		{`quantile(0.5, up)`, "", nil},                          // not decomposable
		{`sum by (__name__) (up)`, "", nil},                     // name handling
		{`max_over_time(sum(up)[5m:1m])`, "", nil},              // other steps
		{`up`, "", nil},
		{`sum(`, "", nil}, // the engine reports the parse error
	} {
		pl := newPlan(p, tc.qs, nil)
		if tc.outer == "" {
			require.Nil(t, pl, tc.qs)
			continue
		}
		require.NotNil(t, pl, tc.qs)
		// Every position outside the rewritten text stays as it was: a
		// byte differs only where a synthetic name, its padding or the
		// "sum" of a "count" went.
		require.Len(t, pl.outer, len(tc.qs))
		for i := range pl.outer {
			if c := pl.outer[i]; c != tc.qs[i] {
				require.True(t, c == ' ' || c == '_' || c >= '0' && c <= '9' || strings.IndexByte("sum", c) >= 0, "%q: byte %d is %q, was %q", tc.qs, i, c, tc.qs[i])
			}
		}
		require.Equal(t, strings.Join(strings.Fields(tc.outer), " "), strings.Join(strings.Fields(pl.outer), " "), tc.qs)
		require.Len(t, pl.sliced, len(tc.subs), tc.qs)
		for i, s := range tc.subs {
			sub := strings.TrimSpace(s)
			// A slice's query is padded to start where it starts in the
			// original text.
			require.Equal(t, strings.Repeat(" ", strings.Index(tc.qs, sub))+sub, pl.sliced[i].sub, tc.qs)
		}
	}
}

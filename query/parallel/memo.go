package parallel

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/storage"
)

// memo is what the engine learned not to slice. Entries expire, so that
// what changed since (a metric's native histograms gone, more series per
// group) is learned again, and the memo is bounded, as query texts are not.
type memo struct {
	now     func() time.Time
	mu      sync.Mutex
	expires map[memoKey]time.Time
}

type memoKey struct {
	kind memoKind
	s    string
}

type memoKind uint8

const (
	// fellBack: s is a metric whose sums or means had to be evaluated
	// again unsliced (native histograms, mostly).
	fellBack memoKind = iota
	// wide: s is the text of an aggregation whose slices returned about
	// as many groups as they read series.
	wide
)

const (
	// memoTTL is how long an entry holds.
	memoTTL = 10 * time.Minute
	// maxMemo bounds the entries.
	maxMemo = 4096
)

func (m *memo) has(k memoKey) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	exp, ok := m.expires[k]
	if !ok {
		return false
	}
	if !m.now().Before(exp) {
		delete(m.expires, k)
		return false
	}
	return true
}

// add remembers k for memoTTL. A full memo drops its expired entries, or
// all of them when none expired: forgetting costs one query a slicing it
// would have skipped.
func (m *memo) add(k memoKey) {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	if _, ok := m.expires[k]; !ok && len(m.expires) >= maxMemo {
		for k, exp := range m.expires {
			if !now.Before(exp) {
				delete(m.expires, k)
			}
		}
		if len(m.expires) >= maxMemo {
			clear(m.expires)
		}
	}
	m.expires[k] = now.Add(memoTTL)
}

// minWideSeries is the fewest series a sliced aggregation must read before
// it can be learned as wide: below that, re-aggregating its groups costs
// little either way, and small data (the PromQL conformance suites, a
// panel filtered to a few series) would teach the memo from a handful.
const minWideSeries = 256

// isWide reports whether an aggregation whose slices read in series and
// gave the outer query out series to aggregate again is not worth slicing:
// with about as many groups as series, the outer query repeats most of the
// slices' work, on one core, after they are done.
func isWide(in, out int64) bool {
	return in >= minWideSeries && 2*out >= in
}

// counted is the storage as a slice reads it: it counts the series read,
// the input that a slicing is judged against.
type counted struct {
	storage.Queryable
	n *atomic.Int64
}

func (c counted) Querier(mint, maxt int64) (storage.Querier, error) {
	q, err := c.Queryable.Querier(mint, maxt)
	if err != nil {
		return nil, err
	}
	return countedQuerier{Querier: q, n: c.n}, nil
}

type countedQuerier struct {
	storage.Querier
	n *atomic.Int64
}

func (q countedQuerier) Select(ctx context.Context, sortSeries bool, hints *storage.SelectHints, ms ...*labels.Matcher) storage.SeriesSet {
	return &countedSet{SeriesSet: q.Querier.Select(ctx, sortSeries, hints, ms...), n: q.n}
}

type countedSet struct {
	storage.SeriesSet
	n *atomic.Int64
}

func (s *countedSet) Next() bool {
	if !s.SeriesSet.Next() {
		return false
	}
	s.n.Add(1)
	return true
}

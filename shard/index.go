package shard

import (
	"slices"
	"sort"
	"sync"

	"github.com/prometheus/prometheus/model/labels"
)

// index is the in-memory inverted index: label name -> value -> sorted series
// refs. It is derived from the series records and rebuilt at start-up, the
// way the Prometheus head rebuilds its postings from the WAL.
//
// Refs are allocated in increasing order under the index lock, so appending a
// new ref keeps every postings list sorted without a sort.
type index struct {
	mu       sync.RWMutex
	postings map[string]map[string][]uint64
	all      []uint64
}

func newIndex() *index {
	return &index{postings: map[string]map[string][]uint64{}}
}

// add indexes a series. ref must be larger than every ref added before, or
// the caller must call sortAll afterwards (bulk load).
func (ix *index) add(ref uint64, ls labels.Labels) {
	ix.mu.Lock()
	ix.addLocked(ref, ls)
	ix.mu.Unlock()
}

func (ix *index) addLocked(ref uint64, ls labels.Labels) {
	ix.all = append(ix.all, ref)
	ls.Range(func(l labels.Label) {
		vals := ix.postings[l.Name]
		if vals == nil {
			vals = map[string][]uint64{}
			ix.postings[l.Name] = vals
		}
		vals[l.Value] = append(vals[l.Value], ref)
	})
}

// sortAll restores the sorted order after a bulk load in arbitrary order.
func (ix *index) sortAll() {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	slices.Sort(ix.all)
	for _, vals := range ix.postings {
		for _, p := range vals {
			slices.Sort(p)
		}
	}
}

// remove drops a series from the index.
func (ix *index) remove(ref uint64, ls labels.Labels) {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	ix.all = removeRef(ix.all, ref)
	ls.Range(func(l labels.Label) {
		vals := ix.postings[l.Name]
		if vals == nil {
			return
		}
		p := removeRef(vals[l.Value], ref)
		if len(p) == 0 {
			delete(vals, l.Value)
			if len(vals) == 0 {
				delete(ix.postings, l.Name)
			}
			return
		}
		vals[l.Value] = p
	})
}

func removeRef(p []uint64, ref uint64) []uint64 {
	i, ok := slices.BinarySearch(p, ref)
	if !ok {
		return p
	}
	return slices.Delete(p, i, i+1)
}

// postingsForMatchers returns the sorted refs of series matching all
// matchers. A matcher that matches the empty string also matches series that
// lack the label, as in Prometheus.
func (ix *index) postingsForMatchers(ms ...*labels.Matcher) []uint64 {
	ix.mu.RLock()
	defer ix.mu.RUnlock()

	var its, notIts [][]uint64
	for _, m := range ms {
		if m.Matches("") {
			// Series without the label match; exclude those whose value
			// does not match.
			if p := ix.unionLocked(m, false); len(p) > 0 {
				notIts = append(notIts, p)
			}
			continue
		}
		p := ix.unionLocked(m, true)
		if len(p) == 0 {
			return nil
		}
		its = append(its, p)
	}
	var res []uint64
	if len(its) == 0 {
		res = slices.Clone(ix.all)
	} else {
		sort.Slice(its, func(i, j int) bool { return len(its[i]) < len(its[j]) })
		res = slices.Clone(its[0])
		for _, p := range its[1:] {
			res = intersect(res, p)
			if len(res) == 0 {
				return nil
			}
		}
	}
	for _, p := range notIts {
		res = subtract(res, p)
	}
	return res
}

// unionLocked returns the union of postings of values v of m.Name for which
// m.Matches(v) == want.
func (ix *index) unionLocked(m *labels.Matcher, want bool) []uint64 {
	vals := ix.postings[m.Name]
	if len(vals) == 0 {
		return nil
	}
	if want && m.Type == labels.MatchEqual {
		return vals[m.Value]
	}
	if want && m.Type == labels.MatchRegexp {
		if set := m.SetMatches(); len(set) > 0 {
			lists := make([][]uint64, 0, len(set))
			for _, v := range set {
				if p := vals[v]; len(p) > 0 {
					lists = append(lists, p)
				}
			}
			return union(lists)
		}
	}
	if !want && m.Type == labels.MatchNotEqual {
		return vals[m.Value]
	}
	var lists [][]uint64
	for v, p := range vals {
		if m.Matches(v) == want {
			lists = append(lists, p)
		}
	}
	return union(lists)
}

// labelValues returns the sorted values of name among the given refs (all
// series when refs is nil).
func (ix *index) labelValues(name string, refs []uint64) []string {
	ix.mu.RLock()
	defer ix.mu.RUnlock()
	vals := ix.postings[name]
	out := make([]string, 0, len(vals))
	for v, p := range vals {
		if refs == nil || intersects(p, refs) {
			out = append(out, v)
		}
	}
	slices.Sort(out)
	return out
}

// labelNames returns the sorted label names among refs (all when nil).
func (ix *index) labelNames(refs []uint64) []string {
	ix.mu.RLock()
	defer ix.mu.RUnlock()
	out := make([]string, 0, len(ix.postings))
	for name, vals := range ix.postings {
		if refs == nil {
			out = append(out, name)
			continue
		}
		for _, p := range vals {
			if intersects(p, refs) {
				out = append(out, name)
				break
			}
		}
	}
	slices.Sort(out)
	return out
}

func intersect(a, b []uint64) []uint64 {
	out := a[:0]
	i, j := 0, 0
	for i < len(a) && j < len(b) {
		switch {
		case a[i] < b[j]:
			i++
		case a[i] > b[j]:
			j++
		default:
			out = append(out, a[i])
			i++
			j++
		}
	}
	return out
}

func intersects(a, b []uint64) bool {
	if len(a) > len(b) {
		a, b = b, a
	}
	// Binary search the shorter list's items in the longer one when the
	// lengths differ a lot; merge otherwise.
	if len(a)*16 < len(b) {
		for _, x := range a {
			if _, ok := slices.BinarySearch(b, x); ok {
				return true
			}
		}
		return false
	}
	i, j := 0, 0
	for i < len(a) && j < len(b) {
		switch {
		case a[i] < b[j]:
			i++
		case a[i] > b[j]:
			j++
		default:
			return true
		}
	}
	return false
}

func subtract(a, b []uint64) []uint64 {
	out := a[:0]
	j := 0
	for _, x := range a {
		for j < len(b) && b[j] < x {
			j++
		}
		if j < len(b) && b[j] == x {
			continue
		}
		out = append(out, x)
	}
	return out
}

func union(lists [][]uint64) []uint64 {
	switch len(lists) {
	case 0:
		return nil
	case 1:
		return lists[0]
	}
	n := 0
	for _, l := range lists {
		n += len(l)
	}
	out := make([]uint64, 0, n)
	for _, l := range lists {
		out = append(out, l...)
	}
	slices.Sort(out)
	return slices.Compact(out)
}

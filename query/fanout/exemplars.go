package fanout

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"math"
	"slices"

	"github.com/prometheus/prometheus/model/exemplar"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/storage"

	"github.com/kilnhq/kiln/cluster/ring"
)

// Exemplars are not partitioned: a node keeps those of the samples it
// stored, in memory, so a series' exemplars are on its owners, each holding
// what it received. A query asks this node and every live peer, like
// Metadata, and merges what comes back: an exemplar held by several
// replicas counts once.

// ExemplarQuerier implements storage.ExemplarQueryable over the cluster.
func (q *Queryable) ExemplarQuerier(ctx context.Context) (storage.ExemplarQuerier, error) {
	return &exemplarQuerier{q: q, ctx: ctx}, nil
}

type exemplarQuerier struct {
	q   *Queryable
	ctx context.Context
}

// Select returns the exemplars in [start, end] of the series matching any
// of the matcher sets. A peer that fails makes it fail unless partial
// response is on, in which case the peer is skipped (the exemplar API has
// no warnings to say so).
func (e *exemplarQuerier) Select(start, end int64, matchers ...[]*labels.Matcher) ([]exemplar.QueryResult, error) {
	q, ctx := e.q, e.ctx
	leq, err := q.local.ExemplarQuerier(ctx)
	if err != nil {
		return nil, err
	}
	local, err := leq.Select(start, end, matchers...)
	if err != nil {
		return nil, err
	}
	m := newExemplarMerger()
	for _, r := range local {
		m.add(r.SeriesLabels, r.Exemplars)
	}
	err = q.eachPeer(ctx, func(peer ring.Member) ([]frame, error) {
		return q.peerExemplars(ctx, peer, start, end, matchers)
	}, func(got []frame) {
		for _, f := range got {
			m.add(f.lset, f.exemplars)
		}
	})
	if err != nil {
		return nil, fmt.Errorf("exemplars: %w", err)
	}
	return m.results(), nil
}

// peerExemplars asks peer for each matcher set in turn (a request carries
// one set).
func (q *Queryable) peerExemplars(ctx context.Context, peer ring.Member, start, end int64, matchers [][]*labels.Matcher) ([]frame, error) {
	var out []frame
	for _, ms := range matchers {
		fr, err := q.call(ctx, peer, pathExemplars, "exemplars", &request{mint: start, maxt: end, matchers: ms})
		if err != nil {
			return nil, err
		}
		for {
			f, err := fr.next()
			if err == io.EOF {
				break
			}
			if err != nil {
				return nil, fmt.Errorf("exemplars from %s: %w", peer.Name, err)
			}
			if f.typ != frameExemplars {
				return nil, fmt.Errorf("exemplars from %s: unexpected frame %d: %w", peer.Name, f.typ, errMalformed)
			}
			out = append(out, f)
		}
	}
	return out, nil
}

func (q *Queryable) serveExemplars(ctx context.Context, req *request, fw *frameWriter) error {
	eq, err := q.local.ExemplarQuerier(ctx)
	if err != nil {
		return err
	}
	res, err := eq.Select(req.mint, req.maxt, req.matchers)
	if err != nil {
		return err
	}
	for _, r := range res {
		if err := fw.exemplars(r.SeriesLabels, r.Exemplars); err != nil {
			return err
		}
	}
	return nil
}

func appendLabels(b []byte, ls labels.Labels) []byte {
	b = binary.AppendUvarint(b, uint64(ls.Len()))
	ls.Range(func(l labels.Label) {
		b = appendStr(b, l.Name)
		b = appendStr(b, l.Value)
	})
	return b
}

func (fw *frameWriter) exemplars(ls labels.Labels, es []exemplar.Exemplar) error {
	fw.buf = append(fw.buf, frameExemplars)
	fw.buf = appendLabels(fw.buf, ls)
	fw.buf = binary.AppendUvarint(fw.buf, uint64(len(es)))
	for _, e := range es {
		fw.buf = appendLabels(fw.buf, e.Labels)
		fw.buf = binary.LittleEndian.AppendUint64(fw.buf, math.Float64bits(e.Value))
		fw.buf = binary.AppendVarint(fw.buf, e.Ts)
		fw.buf = appendBool(fw.buf, e.HasTs)
	}
	return fw.flush()
}

func (fr *frameReader) exemplars(f *frame) {
	d := &fr.d
	f.lset = fr.labels()
	n := d.uvarint(maxExemplars)
	for range n {
		var e exemplar.Exemplar
		e.Labels = fr.labels()
		if d.err == nil && len(d.b) < 8 {
			d.fail()
		}
		if d.err != nil {
			return
		}
		e.Value = math.Float64frombits(binary.LittleEndian.Uint64(d.b))
		d.b = d.b[8:]
		e.Ts = d.varint()
		e.HasTs = d.bool()
		if d.err != nil {
			return
		}
		f.exemplars = append(f.exemplars, e)
	}
}

// exemplarMerger collects exemplars by series, each once.
type exemplarMerger struct {
	series map[string]*exemplar.QueryResult
	seen   map[string]map[exemplarKey]struct{}
}

type exemplarKey struct {
	ts     int64
	value  uint64
	labels string
}

func newExemplarMerger() *exemplarMerger {
	return &exemplarMerger{series: map[string]*exemplar.QueryResult{}, seen: map[string]map[exemplarKey]struct{}{}}
}

func (m *exemplarMerger) add(ls labels.Labels, es []exemplar.Exemplar) {
	key := ls.String()
	r, ok := m.series[key]
	if !ok {
		r = &exemplar.QueryResult{SeriesLabels: ls}
		m.series[key] = r
		m.seen[key] = map[exemplarKey]struct{}{}
	}
	seen := m.seen[key]
	for _, e := range es {
		k := exemplarKey{ts: e.Ts, value: math.Float64bits(e.Value), labels: e.Labels.String()}
		if _, dup := seen[k]; dup {
			continue
		}
		seen[k] = struct{}{}
		r.Exemplars = append(r.Exemplars, e)
	}
}

// results returns the series sorted by labels, each one's exemplars by
// time, as one node's storage answers.
func (m *exemplarMerger) results() []exemplar.QueryResult {
	out := make([]exemplar.QueryResult, 0, len(m.series))
	for _, r := range m.series {
		slices.SortStableFunc(r.Exemplars, func(a, b exemplar.Exemplar) int {
			switch {
			case a.Ts < b.Ts:
				return -1
			case a.Ts > b.Ts:
				return 1
			}
			return 0
		})
		out = append(out, *r)
	}
	slices.SortFunc(out, func(a, b exemplar.QueryResult) int { return labels.Compare(a.SeriesLabels, b.SeriesLabels) })
	return out
}

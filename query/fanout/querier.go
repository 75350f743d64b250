package fanout

import (
	"bytes"
	"context"
	"errors"
	"io"
	"slices"
	"sync"

	"github.com/prometheus/prometheus/model/histogram"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/storage"
	"github.com/prometheus/prometheus/tsdb/chunkenc"
	"github.com/prometheus/prometheus/tsdb/chunks"
	"github.com/prometheus/prometheus/util/annotations"

	"github.com/kilnhq/kiln/cluster/ring"
	"github.com/kilnhq/kiln/shard"
)

// Querier implements storage.Queryable. The plan is made per Select, so a
// long query sees the topology of the moment it reads.
func (q *Queryable) Querier(mint, maxt int64) (storage.Querier, error) {
	return &querier{base: base{q: q, mint: mint, maxt: maxt}}, nil
}

// ChunkQuerier implements storage.ChunkQueryable (remote read).
func (q *Queryable) ChunkQuerier(mint, maxt int64) (storage.ChunkQuerier, error) {
	return &chunkQuerier{base: base{q: q, mint: mint, maxt: maxt}}, nil
}

// base holds what Querier and ChunkQuerier share: label queries and the
// local queriers to close.
type base struct {
	q          *Queryable
	mint, maxt int64

	mu      sync.Mutex
	closers []io.Closer
}

func (b *base) track(c io.Closer) {
	b.mu.Lock()
	b.closers = append(b.closers, c)
	b.mu.Unlock()
}

func (b *base) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	var errs []error
	for _, c := range b.closers {
		errs = append(errs, c.Close())
	}
	b.closers = nil
	return errors.Join(errs...)
}

func (b *base) localQuerier(parts *shard.PartitionSet) storage.Querier {
	lq := b.q.local.PartitionQuerier(b.mint, b.maxt, parts)
	b.track(lq)
	return lq
}

// selectPeers fetches the peers' part of a Select. It returns the plan, the
// peers' response streams and the warnings of a partial response.
func (b *base) selectPeers(ctx context.Context, p *plan, hints *storage.SelectHints, ms []*labels.Matcher) ([]*frameReader, annotations.Annotations, error) {
	var (
		frs     []*frameReader
		missing = p.missing
		err     error
	)
	if !p.onlyLocal() {
		req := request{mint: b.mint, maxt: b.maxt, matchers: ms, hints: hints}
		frs, missing, err = fetchPeers(ctx, b.q, p, func(ctx context.Context, peer ring.Member, parts *shard.PartitionSet) (*frameReader, error) {
			r := req
			r.parts = *parts
			return b.q.call(ctx, peer, pathSelect, "select", &r)
		})
		if err != nil {
			return nil, nil, err
		}
	}
	ws, err := b.q.checkMissing(ctx, missing)
	return frs, ws, err
}

func (b *base) LabelNames(ctx context.Context, hints *storage.LabelHints, ms ...*labels.Matcher) ([]string, annotations.Annotations, error) {
	return b.labelStrings(ctx, pathLabels, "labels", "", hints, ms, func(lq storage.Querier) ([]string, annotations.Annotations, error) {
		return lq.LabelNames(ctx, hints, ms...)
	})
}

func (b *base) LabelValues(ctx context.Context, name string, hints *storage.LabelHints, ms ...*labels.Matcher) ([]string, annotations.Annotations, error) {
	return b.labelStrings(ctx, pathLabelValues, "label_values", name, hints, ms, func(lq storage.Querier) ([]string, annotations.Annotations, error) {
		return lq.LabelValues(ctx, name, hints, ms...)
	})
}

type stringsResult struct {
	vals []string
	ws   annotations.Annotations
}

func (b *base) labelStrings(ctx context.Context, path, endpoint, name string, hints *storage.LabelHints, ms []*labels.Matcher,
	local func(storage.Querier) ([]string, annotations.Annotations, error),
) ([]string, annotations.Annotations, error) {
	p := b.q.plan()
	if p.onlyLocal() && len(p.missing) == 0 {
		return local(b.localQuerier(p.local))
	}
	var (
		results []stringsResult
		missing = p.missing
		err     error
	)
	if !p.onlyLocal() {
		req := request{mint: b.mint, maxt: b.maxt, matchers: ms, name: name}
		if hints != nil {
			req.limit = hints.Limit
		}
		results, missing, err = fetchPeers(ctx, b.q, p, func(ctx context.Context, peer ring.Member, parts *shard.PartitionSet) (stringsResult, error) {
			r := req
			r.parts = *parts
			fr, err := b.q.call(ctx, peer, path, endpoint, &r)
			if err != nil {
				return stringsResult{}, err
			}
			vals, ws, err := readStrings(fr)
			return stringsResult{vals, ws}, err
		})
		if err != nil {
			return nil, nil, err
		}
	}
	ws, err := b.q.checkMissing(ctx, missing)
	if err != nil {
		return nil, nil, err
	}
	var all []string
	if p.localUsed {
		vals, lws, err := local(b.localQuerier(p.local))
		if err != nil {
			return nil, lws, err
		}
		ws.Merge(lws)
		all = vals
	}
	for _, r := range results {
		all = append(all, r.vals...)
		ws.Merge(r.ws)
	}
	slices.Sort(all)
	all = slices.Compact(all)
	if hints != nil && hints.Limit > 0 && len(all) > hints.Limit {
		all = all[:hints.Limit]
	}
	if all == nil {
		all = []string{}
	}
	return all, ws, nil
}

type querier struct{ base }

func (qr *querier) Select(ctx context.Context, sortSeries bool, hints *storage.SelectHints, ms ...*labels.Matcher) storage.SeriesSet {
	p := qr.q.plan()
	if slice, ok := shard.QuerySlice(ctx); ok {
		p.restrict(&slice)
	}
	if p.onlyLocal() && len(p.missing) == 0 && p.degraded == 0 {
		// The common single-node case: the local querier, nothing added.
		return qr.localQuerier(p.local).Select(ctx, sortSeries, hints, ms...)
	}
	// Peers send their stored chunks whole (DisableTrimming), without
	// decoding them, and remoteSeries clips the samples to the range the
	// local querier would read: [mint, maxt] narrowed by the hints.
	mint, maxt := qr.mint, qr.maxt
	wire := storage.SelectHints{Start: mint, End: maxt}
	if hints != nil {
		mint, maxt = max(mint, hints.Start), min(maxt, hints.End)
		wire = *hints
	}
	wire.DisableTrimming = true
	if p.localUsed && wire.Limit == 0 && !qr.q.noDigests {
		return qr.selectDigestFirst(ctx, p, hints, &wire, ms, mint, maxt, sortSeries)
	}
	frs, ws, err := qr.selectPeers(ctx, p, &wire, ms)
	if err != nil {
		return storage.ErrSeriesSet(err)
	}
	ws = p.degradedWarning(ws)
	sets := make([]storage.SeriesSet, 0, len(frs)+1)
	if p.localUsed && len(frs) == 0 {
		sets = append(sets, qr.localQuerier(p.local).Select(ctx, true, hints, ms...))
	} else if p.localUsed {
		// Peers hold other replicas of (some of) these partitions: the
		// local replica comes as chunks, so that identical replicas are
		// read once (distinctReplicas) instead of merged sample by sample,
		// and unsorted: the replicas are joined by labels below.
		cq := qr.q.local.PartitionChunkQuerier(qr.mint, qr.maxt, p.local)
		qr.track(cq)
		sets = append(sets, &localReplicaSet{ChunkSeriesSet: cq.Select(ctx, false, &wire, ms...), mint: mint, maxt: maxt})
	}
	for _, fr := range frs {
		sets = append(sets, &remoteSeriesSet{remoteChunkSet: remoteChunkSet{fr: fr}, mint: mint, maxt: maxt})
	}
	limit := 0
	if hints != nil {
		limit = hints.Limit
	}
	if len(sets) == 1 {
		// One replica of each series, sorted (the local querier was asked
		// to, a peer always sends them so) and limited already.
		return &warnSeriesSet{SeriesSet: sets[0], ws: ws}
	}
	return joinReplicas(sets, nil, sortSeries, limit, ws)
}

// joinReplicas reads every set and groups the series by their labels (a
// hash join), each group becoming one series through replicaMerge. The
// engine reads every series of a Select before it evaluates anything, and
// does not ask for them sorted, so this costs less than sorting the local
// replica and merging the sets in label order through a heap (a fifth of
// an instant query's time through a node at R=2). Sorted only on request.
//
// Series in direct need no join (one replica was enough) and are added as
// they are.
func joinReplicas(sets []storage.SeriesSet, direct []storage.Series, sortSeries bool, limit int, ws annotations.Annotations) storage.SeriesSet {
	type group struct {
		reps []storage.Series
		next int // next group with the same hash, -1 if none
	}
	var groups []group
	byHash := make(map[uint64]int)
	for _, set := range sets {
	series:
		for set.Next() {
			s := set.At()
			ls := s.Labels()
			h := ls.Hash()
			head, ok := byHash[h]
			if !ok {
				head = -1
			}
			for i := head; i >= 0; i = groups[i].next {
				if labels.Equal(groups[i].reps[0].Labels(), ls) {
					groups[i].reps = append(groups[i].reps, s)
					continue series
				}
			}
			reps := make([]storage.Series, 1, 2)
			reps[0] = s
			groups = append(groups, group{reps: reps, next: head})
			byHash[h] = len(groups) - 1
		}
		if err := set.Err(); err != nil {
			return storage.ErrSeriesSet(err)
		}
		ws.Merge(set.Warnings())
	}
	out := slices.Grow(direct, len(groups))
	for _, g := range groups {
		out = append(out, replicaMerge(g.reps...))
	}
	if sortSeries || limit > 0 {
		slices.SortFunc(out, func(a, b storage.Series) int { return labels.Compare(a.Labels(), b.Labels()) })
	}
	if limit > 0 && len(out) > limit {
		out = out[:limit]
	}
	return &sliceSeriesSet{series: out, i: -1, ws: ws}
}

// sliceSeriesSet is a SeriesSet over a slice.
type sliceSeriesSet struct {
	series []storage.Series
	i      int
	ws     annotations.Annotations
}

func (s *sliceSeriesSet) Next() bool {
	s.i++
	return s.i < len(s.series)
}

func (s *sliceSeriesSet) At() storage.Series                { return s.series[s.i] }
func (s *sliceSeriesSet) Err() error                        { return nil }
func (s *sliceSeriesSet) Warnings() annotations.Annotations { return s.ws }

type chunkQuerier struct{ base }

func (qr *chunkQuerier) Select(ctx context.Context, sortSeries bool, hints *storage.SelectHints, ms ...*labels.Matcher) storage.ChunkSeriesSet {
	p := qr.q.plan()
	localChunks := func(sort bool) storage.ChunkSeriesSet {
		lq := qr.q.local.PartitionChunkQuerier(qr.mint, qr.maxt, p.local)
		qr.track(lq)
		return lq.Select(ctx, sort, hints, ms...)
	}
	if p.onlyLocal() && len(p.missing) == 0 {
		return localChunks(sortSeries)
	}
	frs, ws, err := qr.selectPeers(ctx, p, hints, ms)
	if err != nil {
		return storage.ErrChunkSeriesSet(err)
	}
	sets := make([]storage.ChunkSeriesSet, 0, len(frs)+1)
	if p.localUsed {
		sets = append(sets, localChunks(true))
	}
	for _, fr := range frs {
		sets = append(sets, &remoteChunkSet{fr: fr})
	}
	limit := 0
	if hints != nil {
		limit = hints.Limit
	}
	merged := storage.NewMergeChunkSeriesSet(sets, limit, storage.NewCompactingChunkSeriesMerger(replicaMerge))
	return &warnChunkSet{ChunkSeriesSet: merged, ws: ws}
}

// warnSeriesSet adds the fan-out's own warnings to a set's.
type warnSeriesSet struct {
	storage.SeriesSet
	ws annotations.Annotations
}

func (s *warnSeriesSet) Warnings() annotations.Annotations {
	var ws annotations.Annotations
	ws.Merge(s.SeriesSet.Warnings())
	return ws.Merge(s.ws)
}

type warnChunkSet struct {
	storage.ChunkSeriesSet
	ws annotations.Annotations
}

func (s *warnChunkSet) Warnings() annotations.Annotations {
	var ws annotations.Annotations
	ws.Merge(s.ChunkSeriesSet.Warnings())
	return ws.Merge(s.ws)
}

// remoteChunkSet decodes a peer's select response one series at a time.
type remoteChunkSet struct {
	fr   *frameReader
	cur  frame
	ws   annotations.Annotations
	err  error
	done bool
}

func (s *remoteChunkSet) Next() bool {
	for !s.done {
		f, err := s.fr.next()
		switch {
		case err == io.EOF:
			s.done = true
		case err != nil:
			s.err, s.done = err, true
		case f.typ == frameSeries:
			s.cur = f
			return true
		case f.typ == frameWarning:
			s.ws.Add(errors.New(f.str))
		default:
			s.err, s.done = errMalformed, true
		}
	}
	return false
}

func (s *remoteChunkSet) At() storage.ChunkSeries {
	metas, err := s.cur.metas()
	return &storage.ChunkSeriesEntry{Lset: s.cur.lset, ChunkIteratorFn: func(chunks.Iterator) chunks.Iterator {
		if err != nil {
			return storage.NewListChunkSeriesIterator() // cannot happen: the reader checked the encodings
		}
		return storage.NewListChunkSeriesIterator(metas...)
	}}
}

func (s *remoteChunkSet) Err() error                        { return s.err }
func (s *remoteChunkSet) Warnings() annotations.Annotations { return s.ws }

// remoteSeriesSet presents a peer's chunks as sample series clipped to
// [mint, maxt].
type remoteSeriesSet struct {
	remoteChunkSet
	mint, maxt int64
	slab       []remoteSeries
}

func (s *remoteSeriesSet) At() storage.Series {
	if len(s.slab) == 0 {
		s.slab = make([]remoteSeries, 64) // one allocation for many series
	}
	rs := &s.slab[0]
	s.slab = s.slab[1:]
	*rs = remoteSeries{lset: s.cur.lset, chunks: s.cur.chunks, mint: s.mint, maxt: s.maxt}
	return rs
}

// localReplicaSet presents local chunk series as remoteSeries, so that they
// compare with peers' replicas chunk by chunk (distinctReplicas).
type localReplicaSet struct {
	storage.ChunkSeriesSet
	mint, maxt int64
	metas      []chunks.Meta
	cur        *remoteSeries
	err        error
}

func (s *localReplicaSet) Next() bool {
	if s.err != nil || !s.ChunkSeriesSet.Next() {
		return false
	}
	cs := s.ChunkSeriesSet.At()
	if s.metas, s.err = appendMetas(s.metas[:0], cs.Iterator(nil)); s.err != nil {
		return false
	}
	// The chunks themselves are read, not a wire copy: an in-memory chunk
	// carries the decoder checkpoints earlier queries left, so an instant
	// query seeks into its last minutes instead of decoding it from the
	// start. sameAs compares them with a peer's wire form in place.
	local := slices.Clone(s.metas)
	clear(s.metas)
	s.cur = &remoteSeries{lset: cs.Labels(), mint: s.mint, maxt: s.maxt, local: local}
	return true
}

func (s *localReplicaSet) At() storage.Series { return s.cur }

func (s *localReplicaSet) Err() error {
	if s.err != nil {
		return s.err
	}
	return s.ChunkSeriesSet.Err()
}

type remoteSeries struct {
	lset       labels.Labels
	chunks     []byte // as in frame
	mint, maxt int64
	// local holds the chunks instead of chunks when they were read from
	// local storage (localReplicaSet).
	local []chunks.Meta
}

func (s *remoteSeries) Labels() labels.Labels { return s.lset }

// sameAs reports whether o holds the same chunks clipped to the same range.
func (s *remoteSeries) sameAs(o *remoteSeries) bool {
	if s.mint != o.mint || s.maxt != o.maxt {
		return false
	}
	switch {
	case s.local == nil && o.local == nil:
		return bytes.Equal(s.chunks, o.chunks)
	case s.local != nil && o.local == nil:
		return sameChunks(s.local, o.chunks)
	case s.local == nil && o.local != nil:
		return sameChunks(o.local, s.chunks)
	}
	return false // two local replicas: there is one local set
}

// sameChunks reports whether the wire form of metas (appendWireChunks)
// would be wire, without writing it.
func sameChunks(metas []chunks.Meta, wire []byte) bool {
	w := wireChunks{wire}
	for _, m := range metas {
		enc, mint, maxt, b, ok := w.next()
		if !ok || enc != m.Chunk.Encoding() || mint != m.MinTime || maxt != m.MaxTime || !shard.ChunkBytesEqual(m.Chunk, b) {
			return false
		}
	}
	_, _, _, _, more := w.next()
	return !more
}

func (s *remoteSeries) Iterator(reuse chunkenc.Iterator) chunkenc.Iterator {
	it, ok := reuse.(*chainIterator)
	if !ok {
		it = &chainIterator{}
	}
	*it = chainIterator{chunks: wireChunks{s.chunks}, local: s.local, mint: s.mint, maxt: s.maxt, cur: it.cur, chks: it.chks}
	return it
}

// chainIterator walks the chunks of a series frame, which are in time order
// and do not overlap, decoding each only when reached, and yields only the
// samples in [mint, maxt]: the first and last chunks may extend past it.
type chainIterator struct {
	chunks     wireChunks    // chunks not opened yet
	local      []chunks.Meta // or these, when read from local storage
	mint, maxt int64
	// curMaxt is the end of the chunk cur iterates.
	curMaxt int64
	cur     chunkenc.Iterator
	chks    *[numEncodings]chunkenc.Chunk // reused by encoding, pointing into the response
	started bool                          // cur is open; vt ValNone then means done
	vt      chunkenc.ValueType
	err     error
}

// open moves cur to the next chunk that ends at or after t.
func (it *chainIterator) open(t int64) bool {
	for len(it.local) > 0 {
		m := it.local[0]
		it.local = it.local[1:]
		if m.MaxTime < t {
			continue
		}
		it.cur, it.curMaxt = shard.ChunkIterator(m.Chunk, it.cur), m.MaxTime
		return true
	}
	for {
		enc, _, maxt, b, ok := it.chunks.next()
		if !ok {
			return false
		}
		if maxt < t {
			continue
		}
		if it.chks == nil {
			it.chks = new([numEncodings]chunkenc.Chunk)
		}
		c := it.chks[enc]
		if c == nil {
			var err error
			if c, err = chunkenc.FromData(enc, b); err != nil {
				it.err = err // cannot happen: the reader checked the encodings
				return false
			}
			it.chks[enc] = c
		} else {
			c.Reset(b)
		}
		it.cur, it.curMaxt = shard.ChunkIterator(c, it.cur), maxt
		return true
	}
}

func (it *chainIterator) Next() chunkenc.ValueType {
	if !it.started {
		return it.Seek(it.mint)
	}
	if it.vt == chunkenc.ValNone {
		return chunkenc.ValNone
	}
	return it.clip(it.cur.Next(), it.mint)
}

func (it *chainIterator) Seek(t int64) chunkenc.ValueType {
	if it.started {
		if it.vt == chunkenc.ValNone {
			return chunkenc.ValNone
		}
		if it.cur.AtT() >= t {
			return it.vt
		}
	}
	t = max(t, it.mint)
	if !it.started || it.curMaxt < t {
		it.started = true
		if !it.open(t) {
			it.vt = chunkenc.ValNone
			return it.vt
		}
	}
	return it.clip(it.cur.Seek(t), t)
}

// clip settles on the first sample at or after t, given the current
// chunk's answer vt, opening the following chunks as needed, and stops at
// the first sample past maxt.
func (it *chainIterator) clip(vt chunkenc.ValueType, t int64) chunkenc.ValueType {
	for {
		if vt == chunkenc.ValNone {
			if it.err = it.cur.Err(); it.err != nil || !it.open(t) {
				break
			}
			vt = it.cur.Seek(t)
			continue
		}
		if it.cur.AtT() > it.maxt {
			break
		}
		it.vt = vt
		return vt
	}
	it.chunks, it.local = wireChunks{}, nil
	it.vt = chunkenc.ValNone
	return it.vt
}

func (it *chainIterator) At() (int64, float64) { return it.cur.At() }

func (it *chainIterator) AtHistogram(h *histogram.Histogram) (int64, *histogram.Histogram) {
	return it.cur.AtHistogram(h)
}

func (it *chainIterator) AtFloatHistogram(fh *histogram.FloatHistogram) (int64, *histogram.FloatHistogram) {
	return it.cur.AtFloatHistogram(fh)
}

func (it *chainIterator) AtT() int64  { return it.cur.AtT() }
func (it *chainIterator) AtST() int64 { return it.cur.AtST() }
func (it *chainIterator) Err() error  { return it.err }

// ReadsQuerySlices reports that Select honours shard.WithQuerySlice: each
// peer is asked for the slice's partitions only.
func (q *Queryable) ReadsQuerySlices() bool { return true }

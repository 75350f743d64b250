package fanout

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"

	"github.com/cespare/xxhash/v2"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/storage"
	"github.com/prometheus/prometheus/tsdb/chunks"
	"github.com/prometheus/prometheus/util/annotations"

	"github.com/kilnhq/kiln/cluster/ring"
	"github.com/kilnhq/kiln/shard"
)

// Digest-first reads (docs/cluster.md, "Digest first"). When this node
// holds a replica of a partition that the plan also reads from a peer
// (R ≥ 2 on an owner), the peer is asked for a digest instead of the data,
// in two steps. First the cells: this node sends its cell digests
// (shard/cells.go) and the peer answers "same" for the partitions whose
// cells agree, reading no data; those are read by the local querier as on
// a single node. For the other partitions the peer answers a Select
// digest: per partition, the number of matching series and the sum of one
// hash per series over its labels and the wire form of its chunks. The
// local replica answers the partitions whose Select digests agree; only
// those that differ are fetched whole and merged sample by sample.

// partDigest summarises the series of one partition that a Select matches.
type partDigest struct {
	series uint64
	sum    uint64 // of seriesDigest, modulo 2^64: independent of order
}

func (d *partDigest) add(h uint64) {
	d.series++
	d.sum += h
}

// seriesDigest hashes what a series frame would carry: the labels and each
// chunk's encoding, time span and bytes. d is scratch.
func seriesDigest(d *xxhash.Digest, ls labels.Labels, metas []chunks.Meta) uint64 {
	d.Reset()
	var b [25]byte
	binary.LittleEndian.PutUint64(b[:], ls.Hash())
	_, _ = d.Write(b[:8])
	for _, m := range metas {
		b[0] = byte(m.Chunk.Encoding())
		binary.LittleEndian.PutUint64(b[1:], uint64(m.MinTime))
		binary.LittleEndian.PutUint64(b[9:], uint64(m.MaxTime))
		binary.LittleEndian.PutUint64(b[17:], uint64(shard.ChunkSize(m.Chunk)))
		_, _ = d.Write(b[:])
		shard.HashChunk(d, m.Chunk)
	}
	return d.Sum64()
}

// partitionOf is the partition of a series of a PartitionChunkQuerier,
// which knows it.
func partitionOf(s storage.ChunkSeries) uint16 {
	if ps, ok := s.(*shard.PartitionChunkSeries); ok {
		return ps.Partition
	}
	return shard.PartitionOf(s.Labels())
}

// appendMetas appends the chunks of it to dst.
func appendMetas(dst []chunks.Meta, it chunks.Iterator) ([]chunks.Meta, error) {
	for it.Next() {
		dst = append(dst, it.At())
	}
	return dst, it.Err()
}

// serveDigest answers pathDigest: first the partitions whose cell digests
// equal the asking node's (a same frame), then one digest frame per other
// partition with matching series, in partition order.
func (q *Queryable) serveDigest(ctx context.Context, req *request, fw *frameWriter) error {
	var (
		same shard.PartitionSet
		buf  []shard.CellDigest
		ok   bool
	)
	for _, pc := range req.cells {
		if !req.parts.Has(pc.part) {
			continue
		}
		if buf, ok = q.local.PartitionCells(pc.part, req.mint, req.maxt, buf[:0]); ok && slices.Equal(buf, pc.cells) {
			same.Add(pc.part)
		}
	}
	if same.Len() > 0 {
		if err := fw.same(&same); err != nil {
			return err
		}
	}
	rest := req.parts
	rest.Subtract(&same)
	if rest.Len() == 0 {
		return nil
	}
	cq := q.local.PartitionChunkQuerier(req.mint, req.maxt, &rest)
	defer func() { _ = cq.Close() }()
	ss := cq.Select(ctx, false, req.hints, req.matchers...)
	var (
		acc   = make([]partDigest, shard.NumPartitions)
		d     = xxhash.New()
		metas []chunks.Meta
		err   error
	)
	for ss.Next() {
		s := ss.At()
		if metas, err = appendMetas(metas[:0], s.Iterator(nil)); err != nil {
			return err
		}
		acc[partitionOf(s)].add(seriesDigest(d, s.Labels(), metas))
	}
	clear(metas)
	if err := ss.Err(); err != nil {
		return err
	}
	for part, pd := range acc {
		if pd.series > 0 {
			if err := fw.digest(uint16(part), pd); err != nil {
				return err
			}
		}
	}
	return writeWarnings(fw, ss.Warnings())
}

// digestResult is one peer's digest answer.
type digestResult struct {
	peer  string
	parts shard.PartitionSet // asked for; those without a frame had no series
	// same holds the partitions whose cell digests were equal: nothing
	// else to compare.
	same shard.PartitionSet
	sums map[uint16]partDigest
	// unknown is set when the peer could not digest (a version without
	// the endpoint): all its partitions are fetched whole.
	unknown bool
	ws      annotations.Annotations
}

func readDigests(fr *frameReader, res *digestResult) error {
	for {
		f, err := fr.next()
		switch {
		case err == io.EOF:
			return nil
		case err != nil:
			return err
		case f.typ == frameSame:
			ps := f.parts
			ps.Subtract(&res.parts)
			if ps.Len() > 0 {
				return fmt.Errorf("cells of partitions not asked for: %w", errMalformed)
			}
			res.same = f.parts
		case f.typ == frameDigest:
			if !res.parts.Has(f.part) || res.same.Has(f.part) {
				return fmt.Errorf("digest of partition %d, not asked for: %w", f.part, errMalformed)
			}
			res.sums[f.part] = f.digest
		case f.typ == frameWarning:
			res.ws.Add(errors.New(f.str))
		default:
			return fmt.Errorf("unexpected frame %d: %w", f.typ, errMalformed)
		}
	}
}

// selectFetch reads whole series from a peer.
func (b *base) selectFetch(hints *storage.SelectHints, ms []*labels.Matcher) fetchFunc[*frameReader] {
	req := request{mint: b.mint, maxt: b.maxt, matchers: ms, hints: hints}
	return func(ctx context.Context, peer ring.Member, parts *shard.PartitionSet) (*frameReader, error) {
		r := req
		r.parts = *parts
		return b.q.call(ctx, peer, pathSelect, "select", &r)
	}
}

// digestFetch reads partition digests from a peer, sending this node's
// cell digests of the same partitions.
func (b *base) digestFetch(hints *storage.SelectHints, ms []*labels.Matcher) fetchFunc[*digestResult] {
	req := request{mint: b.mint, maxt: b.maxt, matchers: ms, hints: hints}
	return func(ctx context.Context, peer ring.Member, parts *shard.PartitionSet) (*digestResult, error) {
		r := req
		r.parts = *parts
		var all []shard.CellDigest
		for _, part := range parts.Partitions() {
			n := len(all)
			var ok bool
			if all, ok = b.q.local.PartitionCells(part, b.mint, b.maxt, all); ok {
				r.cells = append(r.cells, partCells{part: part, cells: all[n:len(all):len(all)]})
			}
		}
		res := &digestResult{peer: peer.Name, parts: *parts, sums: make(map[uint16]partDigest)}
		fr, err := b.q.call(ctx, peer, pathDigest, "select_digest", &r)
		if isBadRequest(err) {
			// An older peer, or one that cannot digest this request:
			// the whole read will tell which.
			res.unknown = true
			return res, nil
		}
		if err != nil {
			return nil, err
		}
		if err := readDigests(fr, res); err != nil {
			return nil, fmt.Errorf("read from %s (%s): %w", peer.Name, peer.Addr, err)
		}
		return res, nil
	}
}

// localReplica is a series of the local replica and its partition.
type localReplica struct {
	s    *remoteSeries
	part uint16
}

// selectDigestFirst is Select on a plan that reads some partitions both
// locally and from peers. Peers' partitions this node does not hold are
// read whole, in parallel with the digests of the shared ones (see above).
// The shared partitions whose cells agree with every peer's are then read
// by the local querier as a single node reads them; the rest are read as
// chunks, compared by Select digest and, where they differ, merged with
// the peer's replica.
func (qr *querier) selectDigestFirst(ctx context.Context, p *plan, hints, wire *storage.SelectHints, ms []*labels.Matcher, mint, maxt int64, sortSeries bool) storage.SeriesSet {
	localSet := p.sets[p.self]
	whole, dig := p.clone(), p.clone()
	dig.missing = nil
	for i := range p.sets {
		if i != p.self {
			whole.sets[i].Subtract(&localSet)
			dig.sets[i].Intersect(&localSet)
		}
	}

	var (
		wg       sync.WaitGroup
		wholeFrs []*frameReader
		missing  = p.missing
		wholeErr error
		digs     []*digestResult
		digErr   error
	)
	if !whole.onlyLocal() {
		wg.Go(func() { wholeFrs, missing, wholeErr = fetchPeers(ctx, qr.q, whole, qr.selectFetch(wire, ms)) })
	}
	if !dig.onlyLocal() {
		// Partitions no peer could digest are covered by the local
		// replica, as in a whole read whose peer failed.
		digs, _, digErr = fetchPeers(ctx, qr.q, dig, qr.digestFetch(wire, ms))
	}
	wg.Wait()
	if wholeErr != nil {
		return storage.ErrSeriesSet(wholeErr)
	}
	if digErr != nil {
		return storage.ErrSeriesSet(digErr)
	}
	var ws annotations.Annotations
	mws, err := qr.q.checkMissing(ctx, missing)
	if err != nil {
		return storage.ErrSeriesSet(err)
	}
	ws.Merge(mws)
	ws = p.degradedWarning(ws)

	// compare: the local partitions some peer's cells did not vouch for.
	var compare shard.PartitionSet
	cellsEqual := 0
	for _, r := range digs {
		ws.Merge(r.ws)
		ps := r.parts
		if !r.unknown {
			cellsEqual += r.same.Len()
			ps.Subtract(&r.same)
		}
		compare.Union(&ps)
	}
	qr.q.metrics.digests.WithLabelValues("cells_equal").Add(float64(cellsEqual))
	sameSet := localSet
	sameSet.Subtract(&compare)
	var native storage.SeriesSet
	if sameSet.Len() > 0 {
		native = qr.localQuerier(&sameSet).Select(ctx, sortSeries, hints, ms...)
	}
	if compare.Len() == 0 && len(wholeFrs) == 0 {
		if native == nil {
			return &warnSeriesSet{SeriesSet: storage.EmptySeriesSet(), ws: ws}
		}
		return &warnSeriesSet{SeriesSet: native, ws: ws}
	}

	// The local replica of the partitions to compare, as chunks.
	var localSeries []localReplica
	if compare.Len() > 0 {
		cq := qr.q.local.PartitionChunkQuerier(qr.mint, qr.maxt, &compare)
		qr.track(cq)
		set := cq.Select(ctx, false, wire, ms...)
		for set.Next() {
			s := set.At()
			metas, err := appendMetas(nil, s.Iterator(nil))
			if err != nil {
				return storage.ErrSeriesSet(err)
			}
			localSeries = append(localSeries, localReplica{s: &remoteSeries{lset: s.Labels(), mint: mint, maxt: maxt, local: metas}, part: partitionOf(s)})
		}
		if err := set.Err(); err != nil {
			return storage.ErrSeriesSet(err)
		}
		ws.Merge(set.Warnings())
	}
	localDigests := make([]partDigest, shard.NumPartitions)
	d := xxhash.New()
	for _, l := range localSeries {
		localDigests[l.part].add(seriesDigest(d, l.s.lset, l.s.local))
	}

	// Partitions whose digests differ are read whole from the peer that
	// digested them (or, if it fails now, another owner).
	refetch := p.clone()
	for i := range refetch.sets {
		if i != p.self {
			refetch.sets[i] = shard.PartitionSet{}
		}
	}
	refetch.missing = nil
	var differ shard.PartitionSet
	members := p.ring.Members()
	matched, mismatched := 0, 0
	for _, r := range digs {
		idx := memberIndex(members, r.peer)
		for _, part := range r.parts.Partitions() {
			switch {
			case !r.unknown && r.same.Has(part):
			case !r.unknown && r.sums[part] == localDigests[part]:
				matched++
			default:
				mismatched++
				differ.Add(part)
				if idx >= 0 {
					refetch.sets[idx].Add(part)
				}
			}
		}
	}
	qr.q.metrics.digests.WithLabelValues("equal").Add(float64(matched))
	qr.q.metrics.digests.WithLabelValues("different").Add(float64(mismatched))
	var refetched []*frameReader
	if !refetch.onlyLocal() {
		var err error
		if refetched, _, err = fetchPeers(ctx, qr.q, refetch, qr.selectFetch(wire, ms)); err != nil {
			return storage.ErrSeriesSet(err)
		}
	}

	var (
		direct []storage.Series // local series of partitions whose digests agree
		joined []storage.Series // local series to merge with a peer's replica
	)
	for _, l := range localSeries {
		if differ.Has(l.part) {
			joined = append(joined, l.s)
		} else {
			direct = append(direct, l.s)
		}
	}
	sets := make([]storage.SeriesSet, 0, 1+len(wholeFrs)+len(refetched))
	if len(joined) > 0 {
		sets = append(sets, &sliceSeriesSet{series: joined, i: -1})
	}
	for _, fr := range append(wholeFrs, refetched...) {
		sets = append(sets, &remoteSeriesSet{remoteChunkSet: remoteChunkSet{fr: fr}, mint: mint, maxt: maxt})
	}
	rest := joinReplicas(sets, direct, sortSeries, 0, ws)
	switch {
	case native == nil:
		return rest
	case sortSeries:
		// Disjoint partitions: no series is in both.
		return storage.NewMergeSeriesSet([]storage.SeriesSet{native, rest}, 0, storage.ChainedSeriesMerge)
	}
	return &concatSeriesSet{sets: []storage.SeriesSet{native, rest}}
}

// concatSeriesSet yields the series of each set in turn.
type concatSeriesSet struct {
	sets []storage.SeriesSet
	i    int
	ws   annotations.Annotations
}

func (c *concatSeriesSet) Next() bool {
	for ; c.i < len(c.sets); c.i++ {
		if c.sets[c.i].Next() {
			return true
		}
		if c.sets[c.i].Err() != nil {
			return false
		}
		c.ws.Merge(c.sets[c.i].Warnings())
	}
	return false
}

func (c *concatSeriesSet) At() storage.Series { return c.sets[c.i].At() }

func (c *concatSeriesSet) Err() error {
	if c.i < len(c.sets) {
		return c.sets[c.i].Err()
	}
	return nil
}

func (c *concatSeriesSet) Warnings() annotations.Annotations {
	var ws annotations.Annotations
	ws.Merge(c.ws)
	if c.i < len(c.sets) {
		ws.Merge(c.sets[c.i].Warnings())
	}
	return ws
}

func memberIndex(members []ring.Member, name string) int {
	for i, m := range members {
		if m.Name == name {
			return i
		}
	}
	return -1
}

// clone copies the plan, so that fetchPeers can add retries to its sets.
func (p *plan) clone() *plan {
	c := *p
	c.sets = append([]shard.PartitionSet(nil), p.sets...)
	return &c
}

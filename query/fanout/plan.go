package fanout

import (
	"context"
	"fmt"
	"slices"
	"sync"

	"github.com/prometheus/prometheus/util/annotations"

	"github.com/kilnhq/kiln/cluster/ring"
	"github.com/kilnhq/kiln/shard"
)

// plan says which node reads which partitions.
type plan struct {
	ring  *ring.Ring           // nil: no assignment known, read local storage alone
	self  int                  // index of this node in ring.Members(), -1 if not a member
	alive []bool               // by member index, sampled once per plan
	sets  []shard.PartitionSet // by member index: partitions that member reads
	// local is what this node reads; nil parts means "everything".
	local     *shard.PartitionSet
	localUsed bool
	missing   []uint16 // partitions with no live owner
	// degraded counts partitions read from fewer live replicas than the
	// read quorum: R + W > RF no longer holds for them, so a sample
	// acknowledged just before an owner failed may be missing until
	// hinted handoff delivers it.
	degraded int
}

// plan builds the read plan for one query from the current topology.
func (q *Queryable) plan() *plan {
	r := q.topo.Ring()
	if r == nil || len(r.Members()) == 0 {
		return &plan{self: -1, localUsed: true}
	}
	members := r.Members()
	self := q.topo.Self()
	p := &plan{ring: r, self: -1, alive: make([]bool, len(members)), sets: make([]shard.PartitionSet, len(members))}
	for i, m := range members {
		if m.Name == self {
			p.self = i
			p.alive[i] = true
		} else {
			p.alive[i] = q.topo.Alive(m.Name)
		}
	}
	want := q.readReplicas(r.RF())
	var live [16]int32
	for part := range uint16(shard.NumPartitions) {
		owners := r.OwnerIndexes(part)
		peers := live[:0]
		hasSelf := false
		for _, o := range owners {
			switch {
			case int(o) == p.self:
				hasSelf = true
			case p.alive[o]:
				peers = append(peers, o)
			}
		}
		n := want
		if hasSelf {
			p.sets[p.self].Add(part)
			n--
		}
		if !hasSelf && len(peers) == 0 {
			p.missing = append(p.missing, part)
			continue
		}
		// Rotate by partition so that the peers share the reads.
		for k := range min(n, len(peers)) {
			p.sets[peers[(int(part)+k)%len(peers)]].Add(part)
		}
		planned := min(n, len(peers))
		if hasSelf {
			planned++
		}
		if planned < min(want, len(owners)) {
			p.degraded++
		}
	}
	if p.self >= 0 {
		if s := &p.sets[p.self]; s.Len() > 0 {
			p.localUsed = true
			if !s.Full() {
				p.local = s
			}
		}
	}
	return p
}

// restrict narrows the plan's reads to the partitions in slice (a query
// slice, shard.WithQuerySlice). Missing and degraded partitions are kept as
// the whole plan has them, so every slice of a query reports the same
// warning or error, which annotations then merge into one.
func (p *plan) restrict(slice *shard.PartitionSet) {
	for i := range p.sets {
		p.sets[i].Intersect(slice)
	}
	if !p.localUsed {
		return
	}
	if p.self >= 0 {
		p.local = &p.sets[p.self]
	} else {
		s := *slice
		p.local = &s // no ring: local storage holds everything
	}
	p.localUsed = p.local.Len() > 0
}

// onlyLocal reports whether the plan needs no peer.
func (p *plan) onlyLocal() bool {
	if p.ring == nil {
		return true
	}
	for i := range p.sets {
		if i != p.self && p.sets[i].Len() > 0 {
			return false
		}
	}
	return true
}

// fetchFunc reads parts from one peer.
type fetchFunc[T any] func(ctx context.Context, peer ring.Member, parts *shard.PartitionSet) (T, error)

// fetchPeers runs fetch on every peer of the plan in parallel; the
// partitions of a failed peer are retried once on owners not used yet. It
// returns the results and the partitions nobody answered for (including
// those without a live owner), and the first error that cannot be helped by
// a retry (a bad request).
func fetchPeers[T any](ctx context.Context, q *Queryable, p *plan, fetch fetchFunc[T]) ([]T, []uint16, error) {
	members := p.ring.Members()
	type job struct {
		idx   int
		parts shard.PartitionSet
	}
	var jobs []job
	for i := range p.sets {
		if i != p.self && p.sets[i].Len() > 0 {
			jobs = append(jobs, job{i, p.sets[i]})
		}
	}
	var (
		results []T
		failed  = make([]bool, len(members))
		mu      sync.Mutex
	)
	run := func(jobs []job) ([]job, error) {
		var (
			wg      sync.WaitGroup
			bad     []job
			hardErr error
		)
		for _, j := range jobs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				res, err := fetch(ctx, members[j.idx], &j.parts)
				mu.Lock()
				defer mu.Unlock()
				if err == nil {
					results = append(results, res)
					return
				}
				q.logger.Warn("peer read failed", "peer", members[j.idx].Name, "partitions", j.parts.Len(), "err", err)
				if isBadRequest(err) && hardErr == nil {
					hardErr = err
				}
				failed[j.idx] = true
				bad = append(bad, j)
			}()
		}
		wg.Wait()
		return bad, hardErr
	}
	bad, err := run(jobs)
	if err != nil {
		return results, nil, err
	}
	if ctx.Err() != nil {
		return results, nil, ctx.Err()
	}
	missing := slices.Clone(p.missing)
	if len(bad) > 0 {
		retry := map[int]*job{}
		var lost []uint16
		for _, b := range bad {
			for _, part := range b.parts.Partitions() {
				alt := -1
				covered := false
				for _, o := range p.ring.OwnerIndexes(part) {
					oi := int(o)
					if failed[oi] || !p.alive[oi] {
						continue
					}
					if p.sets[oi].Has(part) {
						covered = true // another replica already answered for it
						continue
					}
					if alt < 0 {
						alt = oi
					}
				}
				switch {
				case alt >= 0 && alt != p.self:
					if retry[alt] == nil {
						retry[alt] = &job{idx: alt}
					}
					retry[alt].parts.Add(part)
					p.sets[alt].Add(part)
				case covered:
				default:
					// The local node reads its partitions up front; any it
					// owns are already covered, so an alternate is a peer.
					lost = append(lost, part)
				}
			}
		}
		var second []job
		for _, j := range retry {
			second = append(second, *j)
		}
		bad, err = run(second)
		if err != nil {
			return results, nil, err
		}
		for _, b := range bad {
			for _, part := range b.parts.Partitions() {
				if !coveredBy(p, failed, part) {
					lost = append(lost, part)
				}
			}
		}
		missing = append(missing, lost...)
		slices.Sort(missing)
		missing = slices.Compact(missing)
	}
	if ctx.Err() != nil {
		return results, nil, ctx.Err()
	}
	return results, missing, nil
}

// coveredBy reports whether a member that has not failed reads part.
func coveredBy(p *plan, failed []bool, part uint16) bool {
	for i := range p.sets {
		if !failed[i] && p.sets[i].Has(part) {
			return true
		}
	}
	return false
}

// degradedWarning is the warning for a plan that reads some partitions from
// fewer replicas than the read quorum.
func (p *plan) degradedWarning(ws annotations.Annotations) annotations.Annotations {
	if p.degraded == 0 {
		return ws
	}
	return ws.Add(fmt.Errorf("%d of %d partitions were read from fewer live replicas than the read quorum: samples acknowledged just before a node failed may be missing until hinted handoff delivers them", p.degraded, shard.NumPartitions))
}

// checkMissing turns missing partitions into an error, or into a warning
// when ctx allows partial responses.
func (q *Queryable) checkMissing(ctx context.Context, missing []uint16) (annotations.Annotations, error) {
	if len(missing) == 0 {
		return nil, nil
	}
	counted := len(missing)
	if slice, ok := shard.QuerySlice(ctx); ok {
		// Every slice of a query reports all its missing partitions
		// (so that their warnings merge), but counts only its own.
		counted = 0
		for _, part := range missing {
			if slice.Has(part) {
				counted++
			}
		}
	}
	q.metrics.missing.Add(float64(counted))
	err := &MissingPartitionsError{Partitions: missing}
	if !q.partial(ctx) {
		return nil, err
	}
	var ws annotations.Annotations
	ws.Add(fmt.Errorf("partial response: %w", err))
	return ws, nil
}

package fanout

import (
	"context"
	"fmt"
	"io"
	"slices"
	"sync"

	"github.com/prometheus/prometheus/model/metadata"

	"github.com/kilnhq/kiln/cluster/ring"
)

// Metadata returns metric metadata merged from this node and every live
// peer: metadata is not partitioned, and a family's metadata lives on the
// nodes that received its series. A peer that fails makes the call fail
// unless partial response is on, in which case it is skipped.
func (q *Queryable) Metadata(ctx context.Context, metric string, limit, limitPerMetric int) (map[string][]metadata.Metadata, error) {
	out, err := q.local.Metadata(ctx, metric, -1, limitPerMetric)
	if err != nil {
		return nil, err
	}
	err = q.eachPeer(ctx, func(peer ring.Member) ([]frame, error) {
		return q.peerMetadata(ctx, peer, metric, limitPerMetric)
	}, func(got []frame) {
		for _, f := range got {
			if !slices.Contains(out[f.str], f.meta) {
				out[f.str] = append(out[f.str], f.meta)
			}
		}
	})
	if err != nil {
		return nil, fmt.Errorf("metadata: %w", err)
	}
	if limit > 0 && len(out) > limit {
		names := make([]string, 0, len(out))
		for n := range out {
			names = append(names, n)
		}
		slices.Sort(names)
		for _, n := range names[limit:] {
			delete(out, n)
		}
	}
	return out, nil
}

func (q *Queryable) peerMetadata(ctx context.Context, peer ring.Member, metric string, limitPerMetric int) ([]frame, error) {
	fr, err := q.call(ctx, peer, pathMetadata, "metadata", &request{name: metric, limit: -1, limitPerMetric: limitPerMetric})
	if err != nil {
		return nil, err
	}
	var out []frame
	for {
		f, err := fr.next()
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return nil, err
		}
		if f.typ != frameMetadata {
			return nil, fmt.Errorf("metadata: unexpected frame %d: %w", f.typ, errMalformed)
		}
		out = append(out, f)
	}
}

// eachPeer asks every live peer, in parallel, for what is not partitioned
// (metadata, exemplars): fetch runs per peer and merge takes each answer,
// one at a time. It returns the first peer's error, or nil when partial
// response is on and the failed peers are skipped.
func (q *Queryable) eachPeer(ctx context.Context, fetch func(ring.Member) ([]frame, error), merge func([]frame)) error {
	self := q.topo.Self()
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		firstErr error
	)
	for _, peer := range q.topo.Ring().Members() {
		if peer.Name == self || !q.topo.Alive(peer.Name) {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			got, err := fetch(peer)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				if firstErr == nil {
					firstErr = err
				}
				return
			}
			merge(got)
		}()
	}
	wg.Wait()
	if q.partial(ctx) {
		return nil
	}
	return firstErr
}

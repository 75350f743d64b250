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
	r := q.topo.Ring()
	self := q.topo.Self()
	var peers []ring.Member
	for _, m := range r.Members() {
		if m.Name != self && q.topo.Alive(m.Name) {
			peers = append(peers, m)
		}
	}
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		firstErr error
	)
	merge := func(name string, m metadata.Metadata) {
		if !slices.Contains(out[name], m) {
			out[name] = append(out[name], m)
		}
	}
	for _, peer := range peers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got, err := q.peerMetadata(ctx, peer, metric, limitPerMetric)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				if firstErr == nil {
					firstErr = err
				}
				return
			}
			for _, f := range got {
				merge(f.str, f.meta)
			}
		}()
	}
	wg.Wait()
	if firstErr != nil && !q.partial(ctx) {
		return nil, fmt.Errorf("metadata: %w", firstErr)
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

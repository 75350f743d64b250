package replicate

import (
	"cmp"
	"context"
	"fmt"
	"math/bits"
	"slices"
	"time"

	"github.com/prometheus/prometheus/model/histogram"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/storage"

	"github.com/kilnhq/kiln/cluster/ring"
	"github.com/kilnhq/kiln/shard"
)

// appender routes samples: appended to the local storage at once where this
// node owns the partition (so per-sample errors are synchronous), buffered
// per peer for the other owners until Commit.
type appender struct {
	w    *Writer
	ctx  context.Context
	ring *ring.Ring // snapshot: one transaction sees one assignment
	self int32      // this node's index in ring.Members(), -1 if absent

	local   storage.AppenderV2
	hashed  shard.HashedAppender // local, when it takes our hash
	batches []*batch             // by member index
	touched [shard.NumPartitions / 64]uint64
	done    bool
}

func (a *appender) Append(ref storage.SeriesRef, ls labels.Labels, st, t int64, v float64, h *histogram.Histogram, fh *histogram.FloatHistogram, opts storage.AppendV2Options) (storage.SeriesRef, error) {
	if a.done {
		return 0, errAppClosed
	}
	if a.ring == nil {
		return 0, nil // Commit reports the missing ring
	}
	// Routed by the labels the shard stores (an empty value is no label).
	ls = ls.WithoutEmpty()
	hash := labels.StableHash(ls)
	p := uint16(hash % shard.NumPartitions) // == shard.PartitionOf(ls)
	// Settled owners and, while the partition moves, its new owners: they
	// must receive writes from the moment they are assigned.
	owners := a.ring.WriteOwnerIndexes(p)
	var (
		r   storage.SeriesRef
		err error
	)
	if a.self >= 0 && slices.Contains(owners, a.self) {
		if a.local == nil {
			a.local = a.w.local.AppenderV2(a.ctx)
			a.hashed, _ = a.local.(shard.HashedAppender)
		}
		if a.hashed != nil {
			r, err = a.hashed.AppendHashed(ref, ls, hash, st, t, v, h, fh, opts)
		} else {
			r, err = a.local.Append(ref, ls, st, t, v, h, fh, opts)
		}
		if err != nil && !isPartial(err) {
			return r, err // refused here: not forwarded either
		}
	}
	// Exemplar slices are the caller's to reuse; one copy serves all peers.
	exs := slices.Clone(opts.Exemplars)
	for _, o := range owners {
		if o == a.self {
			continue
		}
		if a.batches == nil {
			a.batches = make([]*batch, len(a.ring.Members()))
		}
		b := a.batches[o]
		if b == nil {
			b = a.w.newBatch()
			a.batches[o] = b
		}
		sidx := b.seriesIndex(ls, hash, opts.MetricFamilyName, opts.Metadata)
		b.hasEx = b.hasEx || exs != nil
		if h == nil && fh == nil {
			b.floats = append(b.floats, fsample{sidx: sidx, st: st, t: t, v: v, ex: exs})
			b.series[sidx].nf++
		} else {
			b.hists = append(b.hists, hsample{sidx: sidx, st: st, t: t, h: h, fh: fh, ex: exs})
			b.series[sidx].nh++
		}
	}
	a.touched[p/64] |= 1 << (p % 64)
	return r, err
}

// peerResult is the outcome of one peer's batch.
type peerResult struct {
	ok  bool
	enc *encoded
	rej []rejection
	err error
}

func (a *appender) Commit() error {
	if a.done {
		return errAppClosed
	}
	a.done = true
	w := a.w
	defer a.releaseBatches()
	if a.ring == nil {
		w.m.quorumFailures.Inc()
		return fmt.Errorf("no partition assignment known yet: %w", ErrUnavailable)
	}
	members := a.ring.Members()
	results := make([]peerResult, len(a.batches))
	type outcome struct {
		i   int
		res peerResult
	}
	// Buffered for every peer, so a forward still running after Commit
	// returned never blocks.
	done := make(chan outcome, len(a.batches))
	pending := 0
	for i, b := range a.batches {
		if b == nil || b.empty() {
			continue
		}
		w.sawBatch(b)
		m := members[i]
		if !w.topo.Alive(m.Name) {
			results[i].err = fmt.Errorf("%s: reported dead by gossip", m.Name)
			continue // straight to a hint
		}
		pending++
		b.refs.Add(1)
		go func() {
			defer w.releaseBatch(b)
			// Not the request's context: a forward that outlives Commit
			// (quorum reached without it) still delivers, and its hint
			// makes sure of it either way.
			ctx := context.WithoutCancel(a.ctx)
			e, rej, err := w.forward(ctx, w.peer(m.Name), m.Addr, b)
			done <- outcome{i, peerResult{ok: err == nil, enc: e, rej: rej, err: err}}
		}()
	}
	var localErr error
	if a.local != nil {
		localErr = a.local.Commit()
	}
	if localErr != nil {
		return fmt.Errorf("commit local: %w", localErr)
	}
	// Wait for every peer; once every partition has its quorum, wait for
	// the rest only StragglerTimeout more: a peer that is slow, or cut off
	// without gossip knowing yet, gets a hint instead of holding the sender
	// up for the whole forward timeout.
	need := w.cfg.acksNeeded(a.ring.RF())
	var straggle <-chan time.Time
	for pending > 0 {
		if straggle == nil && a.quorum(results, need) {
			t := time.NewTimer(w.cfg.StragglerTimeout)
			defer t.Stop()
			straggle = t.C
		}
		select {
		case o := <-done:
			results[o.i] = o.res
			pending--
			continue
		case <-straggle:
		}
		break
	}
	for i := range results {
		if a.batches[i] != nil && !a.batches[i].empty() && !results[i].ok && results[i].err == nil {
			results[i].err = fmt.Errorf("%s: no answer yet when the write reached quorum", members[i].Name)
		}
	}

	var firstErr error
	quorum := true
	for wi, word := range a.touched {
		for word != 0 {
			p := uint16(wi*64 + bits.TrailingZeros64(word))
			word &= word - 1
			// W acks among the settled owners keep R + W > RF for reads,
			// which use settled owners; while the partition moves, W acks
			// among the new owners too, so the write is not lost to the
			// readers of the next assignment.
			ok, err := a.acked(a.ring.OwnerIndexes(p), results, min(need, len(a.ring.OwnerIndexes(p))))
			if !ok {
				quorum = false
			}
			if a.ring.Moving(p) {
				tok, terr := a.acked(a.ring.TargetIndexes(p), results, min(need, len(a.ring.TargetIndexes(p))))
				if !tok {
					quorum, err = false, cmp.Or(err, terr)
				}
			}
			if firstErr == nil {
				firstErr = err
			}
		}
	}
	if !quorum {
		w.m.quorumFailures.Inc()
		return fmt.Errorf("a partition has fewer than %d durable copies (%v): %w", need, firstErr, ErrUnavailable)
	}

	// Quorum everywhere: every owner that missed its batch gets a hint,
	// durable before we acknowledge.
	var rejected []Rejection
	seen := map[string]struct{}{}
	for i, res := range results {
		b := a.batches[i]
		if b == nil || b.empty() {
			continue
		}
		if !res.ok {
			body := encode(w.enc, w.topo.Self(), b, nil).body
			if err := w.hints.add(members[i].Name, body); err != nil {
				w.m.quorumFailures.Inc()
				return fmt.Errorf("hint for %s: %v: %w", members[i].Name, err, ErrUnavailable)
			}
			continue
		}
		for _, rj := range res.rej {
			if x, ok := rejectionOf(b, res.enc, rj); ok {
				k := fmt.Sprintf("%s\xff%d\xff%t", x.Labels.String(), x.T, x.Histogram)
				if _, dup := seen[k]; !dup {
					seen[k] = struct{}{}
					rejected = append(rejected, x)
				}
			}
		}
	}
	if len(rejected) > 0 {
		return &RejectedError{Rejections: rejected}
	}
	return nil
}

// quorum reports whether every touched partition has its acks with the
// results known so far.
func (a *appender) quorum(results []peerResult, need int) bool {
	for wi, word := range a.touched {
		for word != 0 {
			p := uint16(wi*64 + bits.TrailingZeros64(word))
			word &= word - 1
			if ok, _ := a.acked(a.ring.OwnerIndexes(p), results, min(need, len(a.ring.OwnerIndexes(p)))); !ok {
				return false
			}
			if a.ring.Moving(p) {
				if ok, _ := a.acked(a.ring.TargetIndexes(p), results, min(need, len(a.ring.TargetIndexes(p)))); !ok {
					return false
				}
			}
		}
	}
	return true
}

// acked reports whether at least need of owners durably accepted their
// batch (this node counts when it is an owner), and the first error seen.
func (a *appender) acked(owners []int32, results []peerResult, need int) (bool, error) {
	acks := 0
	var firstErr error
	for _, o := range owners {
		switch {
		case o == a.self:
			acks++
		case int(o) < len(results) && results[o].ok:
			acks++
		case int(o) < len(results) && firstErr == nil:
			firstErr = results[o].err
		}
	}
	return acks >= need, firstErr
}

// rejectionOf maps a peer's rejection (canonical index) back to the sample.
func rejectionOf(b *batch, e *encoded, rj rejection) (Rejection, bool) {
	err := errorOf(rj.reason, rj.msg)
	switch {
	case rj.idx < len(e.forder):
		f := &b.floats[e.forder[rj.idx]]
		return Rejection{Labels: b.series[f.sidx].ls, T: f.t, Exemplars: len(f.ex), Err: err}, true
	case rj.idx-len(e.forder) < len(e.horder):
		h := &b.hists[e.horder[rj.idx-len(e.forder)]]
		return Rejection{Labels: b.series[h.sidx].ls, T: h.t, Histogram: true, Exemplars: len(h.ex), Err: err}, true
	}
	return Rejection{}, false
}

// releaseBatches drops the transaction's hold on its batches.
func (a *appender) releaseBatches() {
	for _, b := range a.batches {
		if b != nil {
			a.w.releaseBatch(b)
		}
	}
	a.batches = nil
}

func (a *appender) Rollback() error {
	if a.done {
		return errAppClosed
	}
	a.done = true
	a.releaseBatches()
	if a.local != nil {
		return a.local.Rollback()
	}
	return nil
}

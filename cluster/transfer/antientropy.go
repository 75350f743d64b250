package transfer

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/kilnhq/kiln/cluster/ring"
	"github.com/kilnhq/kiln/shard"
)

// ErrBadDigest is returned for a digest response that does not decode.
var ErrBadDigest = errors.New("malformed digest response")

// PassStats describes one anti-entropy pass.
type PassStats struct {
	Partitions int           // partitions compared
	Compared   int           // (partition, peer) comparisons made
	Differing  int           // buckets whose digests differed
	Repaired   int           // buckets pulled successfully
	Errors     int           // comparisons or pulls that failed
	Duration   time.Duration // wall time of the pass
}

// Run repeats CheckAll every AntiEntropyInterval until ctx is done. The
// first pass starts one interval after start, so a booting cluster first
// settles.
func (t *Transfer) Run(ctx context.Context) error {
	if t.cfg.AntiEntropyInterval <= 0 {
		<-ctx.Done()
		return nil
	}
	tick := time.NewTicker(t.cfg.AntiEntropyInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		st := t.CheckAll(ctx)
		if ctx.Err() != nil {
			return nil
		}
		lvl := t.logger.Debug
		if st.Differing > 0 || st.Errors > 0 {
			lvl = t.logger.Info
		}
		lvl("anti-entropy pass done", "partitions", st.Partitions, "comparisons", st.Compared,
			"differing_buckets", st.Differing, "repaired", st.Repaired, "errors", st.Errors, "duration", st.Duration)
	}
}

// CheckAll compares every partition this node is a settled owner of with
// every other alive settled owner and pulls the buckets that differ.
func (t *Transfer) CheckAll(ctx context.Context) PassStats {
	start := t.cfg.Now()
	var st PassStats
	r := t.topo.Ring()
	self := t.topo.Self()
	step := t.cfg.DigestStep.Milliseconds()
	// Both sides digest exactly this window: the peer is asked for it.
	maxt := start.Add(-t.cfg.SettleLag).UnixMilli()
	mint := start.Add(-t.cfg.Retention).UnixMilli()
	mint -= mint % step // buckets aligned on every node
	for _, p := range r.PartitionsOf(self) {
		if ctx.Err() != nil {
			break
		}
		var peers []ring.Member
		for _, m := range r.Owners(p) {
			if m.Name != self && t.topo.Alive(m.Name) {
				peers = append(peers, m)
			}
		}
		if len(peers) == 0 {
			continue
		}
		st.Partitions++
		local, err := t.store.PartitionDigest(ctx, p, mint, maxt, step)
		if ctx.Err() != nil {
			break
		}
		if err != nil {
			st.Errors++
			if !errors.Is(err, shard.ErrCorrupt) {
				t.logger.Warn("anti-entropy: local digest failed", "partition", p, "err", err)
				continue
			}
			// The local copy cannot be read: replace it with a peer's,
			// fetched first so the partition is never left empty here.
			t.logger.Warn("anti-entropy: local partition corrupt; replacing it with a peer's copy", "partition", p, "peer", peers[0].Name, "err", err)
			if err := t.replace(ctx, p, peers[0]); err != nil {
				t.logger.Warn("anti-entropy: replacing a corrupt partition failed", "partition", p, "err", err)
				continue
			}
			st.Repaired++
			continue
		}
		for _, peer := range peers {
			st.Compared++
			remote, err := t.digest(ctx, p, peer, mint, maxt, step)
			if err != nil {
				st.Errors++
				t.logger.Debug("anti-entropy: digest from peer failed", "partition", p, "peer", peer.Name, "err", err)
				continue
			}
			for _, b := range differing(local, remote) {
				st.Differing++
				t.m.differing.Inc()
				if _, err := t.pull(ctx, p, peer, b.Mint, b.Maxt-1); err != nil {
					st.Errors++
					t.m.repaired.WithLabelValues("failed").Inc()
					t.logger.Debug("anti-entropy: repair failed", "partition", p, "peer", peer.Name, "err", err)
					continue
				}
				st.Repaired++
				t.m.repaired.WithLabelValues("ok").Inc()
			}
		}
	}
	st.Duration = t.cfg.Now().Sub(start)
	t.m.passes.Inc()
	t.m.passSeconds.Set(st.Duration.Seconds())
	return st
}

// replace swaps a corrupt local copy of p for a peer's: the peer's stream
// is read completely into memory before anything is dropped here.
func (t *Transfer) replace(ctx context.Context, p uint16, from ring.Member) error {
	var buf bytes.Buffer
	if err := t.download(ctx, p, from, math.MinInt64, math.MaxInt64, &buf); err != nil {
		return err
	}
	if err := t.store.DropPartition(ctx, p); err != nil {
		return err
	}
	_, err := t.store.ImportPartition(ctx, &buf)
	return err
}

// differing returns the remote buckets whose digest differs from the local
// one (a bucket missing locally differs when the peer has data in it).
func differing(local, remote []shard.BucketDigest) []shard.BucketDigest {
	have := make(map[int64]shard.BucketDigest, len(local))
	for _, b := range local {
		have[b.Mint] = b
	}
	var out []shard.BucketDigest
	for _, b := range remote {
		l, ok := have[b.Mint]
		if b.Samples == 0 && (!ok || l.Samples == 0) {
			continue
		}
		if !ok || l.Hash != b.Hash || l.Samples != b.Samples || l.Series != b.Series {
			out = append(out, b)
		}
	}
	return out
}

func (t *Transfer) digest(ctx context.Context, p uint16, peer ring.Member, mint, maxt, step int64) ([]shard.BucketDigest, error) {
	ctx, cancel := context.WithTimeout(ctx, t.cfg.Timeout)
	defer cancel()
	q := url.Values{
		"p": {strconv.Itoa(int(p))}, "mint": {strconv.FormatInt(mint, 10)},
		"maxt": {strconv.FormatInt(maxt, 10)}, "step": {strconv.FormatInt(step, 10)},
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+peer.Addr+DigestPath+"?"+q.Encode(), nil)
	if err != nil {
		return nil, err
	}
	resp, err := t.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer func() { _ = resp.Body.Close() }()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("digest of partition %d from %s: status %d: %.200s", p, peer.Name, resp.StatusCode, body)
	}
	return decodeDigests(body)
}

// encodeDigests: uvarint count, then per bucket varint mint, varint maxt,
// uvarint series, uvarint samples, 8-byte big-endian hash.
func encodeDigests(ds []shard.BucketDigest) []byte {
	b := binary.AppendUvarint(make([]byte, 0, 8+len(ds)*24), uint64(len(ds)))
	for _, d := range ds {
		b = binary.AppendVarint(b, d.Mint)
		b = binary.AppendVarint(b, d.Maxt)
		b = binary.AppendUvarint(b, uint64(d.Series))
		b = binary.AppendUvarint(b, uint64(d.Samples))
		b = binary.BigEndian.AppendUint64(b, d.Hash)
	}
	return b
}

func decodeDigests(b []byte) ([]shard.BucketDigest, error) {
	n, k := binary.Uvarint(b)
	// Each bucket takes at least 12 bytes: a count beyond that is a lie.
	if k <= 0 || n > uint64(len(b))/12 {
		return nil, ErrBadDigest
	}
	b = b[k:]
	out := make([]shard.BucketDigest, 0, n)
	for range n {
		var d shard.BucketDigest
		var ok bool
		if d.Mint, b, ok = varint(b); !ok {
			return nil, ErrBadDigest
		}
		if d.Maxt, b, ok = varint(b); !ok {
			return nil, ErrBadDigest
		}
		var s, c uint64
		if s, b, ok = uvarint(b); !ok || s > 1<<31 {
			return nil, ErrBadDigest
		}
		if c, b, ok = uvarint(b); !ok || c > 1<<62 {
			return nil, ErrBadDigest
		}
		if len(b) < 8 {
			return nil, ErrBadDigest
		}
		d.Series, d.Samples, d.Hash = int(s), int(c), binary.BigEndian.Uint64(b)
		b = b[8:]
		out = append(out, d)
	}
	if len(b) != 0 {
		return nil, ErrBadDigest
	}
	return out, nil
}

func varint(b []byte) (int64, []byte, bool) {
	v, k := binary.Varint(b)
	if k <= 0 {
		return 0, b, false
	}
	return v, b[k:], true
}

func uvarint(b []byte) (uint64, []byte, bool) {
	v, k := binary.Uvarint(b)
	if k <= 0 {
		return 0, b, false
	}
	return v, b[k:], true
}

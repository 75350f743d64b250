package shard

import (
	"math"
	"sync"
	"sync/atomic"

	"github.com/cespare/xxhash/v2"
)

// Cell digests: for every partition and every two-hour cell of time, the
// number of samples the partition holds in the cell and the sum, modulo
// 2^64, of one hash per sample over its series' labels, timestamp and value
// bits. Commits add to them as they apply, so they cost a few nanoseconds
// per sample and nothing to read. A sum does not depend on the order
// samples arrived in, nor on how they were cut into chunks: two replicas
// holding the same samples have equal cells, and the query fan-out then
// reads the local replica alone without asking the peer to read anything.
//
// A cell is only valid while it has seen every sample of its data. So cells
// are not valid:
//   - for time before the newest sample at start-up (data loaded from disk
//     and replayed was not counted);
//   - up to the retention cutoff once retention has run (it deletes samples
//     without subtracting them; it raises the bound before deleting);
//   - for a partition dropped from this node, until restart.
//
// A sample counted twice (a retried write of an old sample that the
// duplicate check, which sees only the newest samples, missed) makes cells
// differ where data does not: the reader then compares data instead, so
// this costs speed, never correctness.

// CellWidth is the span of time one cell digest covers, in milliseconds.
const CellWidth = 2 * 60 * 60 * 1000

// maxCells bounds a PartitionCells answer (about 83 days).
const maxCells = 1000

// CellDigest summarises the samples of one partition in one cell.
type CellDigest struct {
	Samples uint64
	Sum     uint64
}

// cellOf is the index of the cell holding t.
func cellOf(t int64) int64 {
	c := t / CellWidth
	if t < 0 && t%CellWidth != 0 {
		c--
	}
	return c
}

type partCells struct {
	// hot is the newest cell, where nearly every sample lands: kept out of
	// the map, as a map update per sample was a sixth of a commit's CPU.
	hot     int64
	hotD    CellDigest
	hasHot  bool
	cells   map[int64]CellDigest // every other cell
	dropped bool
}

// get returns the digest of cell c; the caller holds the cellState's mu.
func (pc *partCells) get(c int64) CellDigest {
	if pc.hasHot && c == pc.hot {
		return pc.hotD
	}
	return pc.cells[c]
}

// cellState is the DB's cell digests.
type cellState struct {
	// mu guards parts. One lock for all partitions, taken once per
	// commit: a lock per sample on its partition was a tenth of a commit
	// (two atomic instructions per sample), and a commit holds this one only
	// while it adds its collected samples, no hashing or series work.
	mu    sync.Mutex
	parts [NumPartitions]partCells
	// from is the first cell index that may be valid. It only grows.
	from atomic.Int64
}

// cellAdd is one sample's contribution to its partition's cell, collected
// by a commit and added with the others by addAll.
type cellAdd struct {
	c    int64
	h    uint64
	part uint16
}

// invalidateThrough makes every cell up to and including the one holding
// t invalid for good.
func (cs *cellState) invalidateThrough(t int64) {
	if t == math.MinInt64 {
		return
	}
	from := cellOf(t) + 1
	for {
		cur := cs.from.Load()
		if from <= cur || cs.from.CompareAndSwap(cur, from) {
			break
		}
	}
	cs.mu.Lock()
	defer cs.mu.Unlock()
	for i := range cs.parts {
		pc := &cs.parts[i]
		for c := range pc.cells {
			if c < from {
				delete(pc.cells, c)
			}
		}
		if pc.hasHot && pc.hot < from {
			pc.hasHot, pc.hotD = false, CellDigest{}
		}
	}
}

// drop makes partition p's cells invalid until restart: its data was
// removed without being subtracted.
func (cs *cellState) drop(p uint16) {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	pc := &cs.parts[p]
	pc.dropped = true
	pc.cells = nil
	pc.hasHot, pc.hotD = false, CellDigest{}
}

// collect appends to dst the contribution of one sample of series s, which
// the caller has just appended; addAll then counts it.
func (cs *cellState) collect(dst []cellAdd, s *memSeries, sm sample) []cellAdd {
	c := cellOf(sm.t)
	if c < cs.from.Load() {
		return dst // never read
	}
	return append(dst, cellAdd{c: c, h: sampleHash(s.stableHash, sm), part: s.part})
}

// addAll counts samples collected by collect.
func (cs *cellState) addAll(adds []cellAdd) {
	if len(adds) == 0 {
		return
	}
	from := cs.from.Load()
	cs.mu.Lock()
	defer cs.mu.Unlock()
	for _, a := range adds {
		if a.c < from {
			continue // invalidated meanwhile
		}
		pc := &cs.parts[a.part]
		switch {
		case pc.hasHot && a.c == pc.hot:
			pc.hotD.Samples++
			pc.hotD.Sum += a.h
		case !pc.hasHot || a.c > pc.hot:
			if pc.hasHot {
				if pc.cells == nil {
					pc.cells = map[int64]CellDigest{}
				}
				pc.cells[pc.hot] = pc.hotD
			}
			// The map holds only cells older than hot (or none, when
			// there is no hot cell), so c starts afresh.
			pc.hot, pc.hotD, pc.hasHot = a.c, CellDigest{Samples: 1, Sum: a.h}, true
		default: // an older cell (out of order, backfill)
			if pc.cells == nil {
				pc.cells = map[int64]CellDigest{}
			}
			d := pc.cells[a.c]
			d.Samples++
			d.Sum += a.h
			pc.cells[a.c] = d
		}
	}
}

// sampleHash hashes a sample of the series whose labels' StableHash is
// seed: floats by their bits, histograms by appendSampleBits, so that chunk
// layouts do not matter.
func sampleHash(seed uint64, sm sample) uint64 {
	var x uint64
	if sm.h == nil && sm.fh == nil {
		x = mix64(mix64(uint64(sm.t)^0x9e3779b97f4a7c15) ^ math.Float64bits(sm.f))
	} else {
		var buf [256]byte
		x = mix64(xxhash.Sum64(appendSampleBits(buf[:0], sm)))
	}
	return mix64(x ^ seed)
}

// PartitionCells appends to dst the cell digests of partition p for every
// cell from the one holding mint to the one holding maxt. It returns false
// when they are not valid (see above) or span more than maxCells.
func (db *DB) PartitionCells(p uint16, mint, maxt int64, dst []CellDigest) ([]CellDigest, bool) {
	if p >= NumPartitions || mint > maxt {
		return dst, false
	}
	first, last := cellOf(mint), cellOf(maxt)
	if last-first >= maxCells || first < db.cells.from.Load() {
		return dst, false
	}
	db.cells.mu.Lock()
	pc := &db.cells.parts[p]
	dropped := pc.dropped
	n := len(dst)
	for c := first; c <= last; c++ {
		dst = append(dst, pc.get(c))
	}
	db.cells.mu.Unlock()
	// Retention may have invalidated the cells meanwhile.
	if dropped || first < db.cells.from.Load() {
		return dst[:n], false
	}
	return dst, true
}

package shard

import (
	"errors"
	"fmt"
	"os"

	"github.com/dgraph-io/badger/v4"
	"github.com/prometheus/prometheus/model/labels"
)

type loadStats struct {
	series, chunks, walSegments, walRecords, walSamples int
}

// load rebuilds memory from disk: series records and the index, each series'
// extent on disk, metadata, and finally the write-ahead records not yet
// covered by persisted chunks: badger W keys left by an older Kiln, then
// the segment files. It leaves the write-ahead log open for appends.
func (db *DB) load() (loadStats, error) {
	var st loadStats
	lost := 0
	err := db.bdb.View(func(txn *badger.Txn) error {
		if err := db.loadSeries(txn, &st); err != nil {
			return err
		}
		if err := db.loadChunkExtents(txn, &st); err != nil {
			return err
		}
		if err := db.meta.load(txn); err != nil {
			return err
		}
		return db.replayLegacyWAL(txn, &st, &lost)
	})
	if err == nil && db.wal != nil {
		err = db.replaySegments(&st, &lost)
	}
	if lost > 0 {
		db.logger.Warn("write-ahead samples reference unknown series", "samples", lost)
	}
	return st, err
}

// replaySegments replays the write-ahead segments and opens the log for
// appends in a new segment after them.
func (db *DB) replaySegments(st *loadStats, lost *int) error {
	if err := os.MkdirAll(db.wal.dir, 0o755); err != nil {
		return err
	}
	// A directory just created must survive a power cut with the records
	// in it.
	if err := syncDir(db.cfg.Path); err != nil {
		return err
	}
	segs, err := replayWALDir(db.wal.dir, db.logger, func(v []byte) error {
		return db.replayValue(v, st, lost)
	})
	if err != nil {
		return fmt.Errorf("replay write-ahead log: %w", err)
	}
	st.walSegments = len(segs)
	return db.wal.open(segs)
}

// replayValue applies one write-ahead value to memory.
func (db *DB) replayValue(v []byte, st *loadStats, lost *int) error {
	db.walBytes.Add(int64(len(v)))
	err := decodeWAL(v, func(ref uint64, sm sample) {
		s := db.seriesByRef(ref)
		if s == nil {
			*lost++
			return
		}
		st.walSamples++
		if sm.t < s.minT {
			s.minT = sm.t
		}
		if _, err := s.append(sm, db.newChunkSeq); err == nil {
			db.maxTime.Store(max(db.maxTime.Load(), sm.t))
		}
	})
	if err != nil && !errors.Is(err, ErrCorrupt) {
		// The record passed its checksum, so this is damage, not a torn write.
		err = fmt.Errorf("%w: %w", ErrCorrupt, err)
	}
	if err == nil {
		st.walRecords++
	}
	return err
}

func (db *DB) loadSeries(txn *badger.Txn, st *loadStats) error {
	it := txn.NewIterator(badger.IteratorOptions{PrefetchValues: false, Prefix: []byte{tagSeries}})
	defer it.Close()
	var sb labels.ScratchBuilder
	var list []*memSeries
	maxRef := uint64(0)
	for it.Rewind(); it.Valid(); it.Next() {
		item := it.Item()
		part, ref, err := parseSeriesKey(item.Key())
		if err != nil {
			return err
		}
		var ls labels.Labels
		if err := item.Value(func(v []byte) error {
			ls, err = decodeLabels(v, &sb)
			return err
		}); err != nil {
			return fmt.Errorf("series %d: %w", ref, err)
		}
		s := newMemSeries(ref, part, ls, labels.StableHash(ls))
		s.saved.Store(true)
		list = append(list, s)
		maxRef = max(maxRef, ref)
	}
	db.refs = make([]*memSeries, maxRef+1, maxRef+1+1024)
	for _, s := range list {
		db.refs[s.ref] = s
		h := s.stableHash
		db.stripes[h%stripeCount].t.add(h, s)
		db.index.addLocked(s.ref, s.lset)
	}
	db.index.sortAll()
	st.series = len(list)
	db.metrics.seriesCreated.Add(float64(len(list)))
	return nil
}

// loadChunkExtents reads chunk keys only (no values) to learn each series'
// time span on disk and the largest chunk id in use.
func (db *DB) loadChunkExtents(txn *badger.Txn, st *loadStats) error {
	it := txn.NewIterator(badger.IteratorOptions{PrefetchValues: false, Prefix: []byte{tagChunk}})
	defer it.Close()
	var cur *memSeries
	var curRef uint64
	maxSeq := uint64(0)
	for it.Rewind(); it.Valid(); it.Next() {
		k, err := parseChunkKey(it.Item().Key())
		if err != nil {
			return err
		}
		st.chunks++
		maxSeq = max(maxSeq, k.seq)
		if cur == nil || curRef != k.ref {
			curRef = k.ref
			cur = db.seriesByRef(k.ref)
		}
		if cur == nil {
			continue // orphan chunk of a deleted series; retention removes it
		}
		cur.diskMaxT = max(cur.diskMaxT, k.maxt)
		cur.lastT = max(cur.lastT, k.maxt)
		cur.minT = min(cur.minT, k.mint)
		cur.maxT = max(cur.maxT, k.maxt)
		db.maxTime.Store(max(db.maxTime.Load(), k.maxt))
	}
	db.chunkSeq.Store(maxSeq)
	return nil
}

// replayLegacyWAL replays the badger W keys an older Kiln wrote; the first
// flush deletes them.
func (db *DB) replayLegacyWAL(txn *badger.Txn, st *loadStats, lost *int) error {
	it := txn.NewIterator(badger.IteratorOptions{PrefetchValues: false, Prefix: []byte{tagWAL}})
	defer it.Close()
	for it.Rewind(); it.Valid(); it.Next() {
		item := it.Item()
		k := item.Key()
		if len(k) != 9 {
			return fmt.Errorf("wal key %x: %w", k, errBadKey)
		}
		db.legacyWAL = true
		if err := item.Value(func(v []byte) error { return db.replayValue(v, st, lost) }); err != nil {
			return fmt.Errorf("replay write-ahead record %x: %w", k, err)
		}
	}
	return nil
}

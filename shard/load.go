package shard

import (
	"encoding/binary"
	"fmt"

	"github.com/dgraph-io/badger/v4"
	"github.com/prometheus/prometheus/model/labels"
)

type loadStats struct {
	series, chunks, walRecords, walSamples int
}

// load rebuilds memory from disk: series records and the index, each series'
// extent on disk, metadata, and finally the write-ahead records not yet
// covered by persisted chunks.
func (db *DB) load() (loadStats, error) {
	var st loadStats
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
		return db.replayWAL(txn, &st)
	})
	return st, err
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
		s := newMemSeries(ref, part, ls)
		s.saved.Store(true)
		list = append(list, s)
		maxRef = max(maxRef, ref)
	}
	db.refs = make([]*memSeries, maxRef+1, maxRef+1+1024)
	for _, s := range list {
		db.refs[s.ref] = s
		h := s.lset.Hash()
		db.stripes[h%stripeCount].m[h] = append(db.stripes[h%stripeCount].m[h], s)
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

func (db *DB) replayWAL(txn *badger.Txn, st *loadStats) error {
	it := txn.NewIterator(badger.IteratorOptions{PrefetchValues: false, Prefix: []byte{tagWAL}})
	defer it.Close()
	lost := 0
	for it.Rewind(); it.Valid(); it.Next() {
		item := it.Item()
		k := item.Key()
		if len(k) != 9 {
			return fmt.Errorf("wal key %x: %w", k, errBadKey)
		}
		db.walSeq.Store(max(db.walSeq.Load(), binary.BigEndian.Uint64(k[1:])))
		err := item.Value(func(v []byte) error {
			db.walBytes.Add(int64(len(v)))
			return decodeWAL(v, func(ref uint64, sm sample) {
				s := db.seriesByRef(ref)
				if s == nil {
					lost++
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
		})
		if err != nil {
			return fmt.Errorf("replay write-ahead record %x: %w", k, err)
		}
		st.walRecords++
	}
	if lost > 0 {
		db.logger.Warn("write-ahead samples reference unknown series", "samples", lost)
	}
	return nil
}

package shard

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"slices"
	"time"

	"github.com/dgraph-io/badger/v4"
)

// flush persists every chunk that changed since it was last persisted, then
// deletes the write-ahead segments that the persisted chunks now cover, and
// evicts old persisted chunks from memory.
func (db *DB) flush() error {
	db.flushMu.Lock()
	defer db.flushMu.Unlock()
	start := time.Now()

	// Once no commit holds commitMu, every record written so far is
	// applied to memory; rotating puts them all in segments before upto.
	db.commitMu.Lock()
	var upto uint64
	var rotErr error
	if db.wal != nil {
		upto, rotErr = db.wal.rotate()
	}
	walBytes := db.walBytes.Swap(0)
	db.commitMu.Unlock()
	if rotErr != nil {
		// Chunks are still persisted below, but no segment is deleted.
		db.walBytes.Add(walBytes)
		upto = 0
	}

	wb := db.bdb.NewWriteBatch()
	defer wb.Cancel()
	evictBefore := db.maxTime.Load() - db.cfg.HeadWindow.Milliseconds()
	written := 0
	var err error
	db.forEachSeries(func(s *memSeries) {
		if err != nil {
			return
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.deleted {
			return
		}
		s.settle()
		if len(s.ooo) > 0 {
			s.compactOOO(db.newChunkSeq)
		}
		persist := func(c *memChunk) {
			if err != nil {
				return
			}
			n := c.chk.NumSamples()
			if c.savedKey != nil && n == c.savedN {
				return
			}
			k := chunkKey(s.part, s.ref, c.mint, c.maxt, c.seq)
			if c.savedKey != nil && !bytes.Equal(c.savedKey, k) {
				if err = wb.Delete(c.savedKey); err != nil {
					return
				}
			}
			if err = wb.Set(k, encodeChunkValue(c)); err != nil {
				return
			}
			c.savedKey, c.savedN = k, n
			written++
		}
		for _, c := range s.chunks {
			persist(c)
		}
		for _, c := range s.oooChunks {
			persist(c)
		}
		s.evict(evictBefore)
	})
	if err == nil {
		err = wb.Flush()
	}
	if err != nil {
		db.walBytes.Add(walBytes)
		db.metrics.flushFailures.Inc()
		return fmt.Errorf("persist chunks: %w", err)
	}
	db.metrics.chunksPersisted.Add(float64(written))
	if rotErr != nil {
		db.metrics.flushFailures.Inc()
		return fmt.Errorf("rotate write-ahead segment: %w", rotErr)
	}
	if db.wal != nil {
		if err := db.wal.deleteBefore(upto); err != nil {
			db.metrics.flushFailures.Inc()
			return fmt.Errorf("delete write-ahead segments: %w", err)
		}
	}
	if db.legacyWAL {
		// Replayed at start-up and now covered by the chunks just written.
		if err := db.deleteLegacyWAL(); err != nil {
			db.metrics.flushFailures.Inc()
			return fmt.Errorf("delete legacy write-ahead records: %w", err)
		}
		db.legacyWAL = false
	}
	db.metrics.flushDuration.Observe(time.Since(start).Seconds())
	// With the write-ahead log in its own files the value log only holds
	// the rare value over 16 KiB (a large series or metadata record), so
	// this usually finds nothing to rewrite; asking is cheap.
	return db.gcValueLog()
}

// evict drops persisted, closed chunks that end before t from memory; reads
// then go to disk for them. Caller holds s.mu.
func (s *memSeries) evict(t int64) {
	keep := func(c *memChunk, open bool) bool {
		if open || c.savedKey == nil || c.savedN != c.chk.NumSamples() || c.maxt >= t {
			return true
		}
		s.diskMaxT = max(s.diskMaxT, c.maxt)
		return false
	}
	open := s.head()
	s.chunks = slices.DeleteFunc(s.chunks, func(c *memChunk) bool { return !keep(c, c == open) })
	if len(s.chunks) == 0 {
		s.app = nil
	}
	s.oooChunks = slices.DeleteFunc(s.oooChunks, func(c *memChunk) bool { return !keep(c, false) })
}

// encodeChunkValue is the persisted form of a chunk; see chunkFromValue.
func encodeChunkValue(c *memChunk) []byte {
	b := c.chk.Bytes()
	v := make([]byte, 1+len(b), 1+len(b)+4)
	v[0] = byte(c.chk.Encoding())
	copy(v[1:], b)
	return binary.BigEndian.AppendUint32(v, crc32.Checksum(v, castagnoli))
}

// deleteLegacyWAL deletes the badger W keys that Kiln wrote before the
// write-ahead log moved to segment files.
func (db *DB) deleteLegacyWAL() error {
	return db.deletePrefix(context.Background(), []byte{tagWAL})
}

// applyRetention deletes chunks that end before the retention cutoff, drops
// series left without data and reclaims value-log space. It works in small
// batches so ingest and queries go on meanwhile.
func (db *DB) applyRetention(ctx context.Context) error {
	if db.cfg.Retention <= 0 {
		return db.gcValueLog()
	}
	cutoff := db.minValidTime()
	start := time.Now()
	db.cells.invalidateThrough(cutoff - 1) // before anything is deleted

	// Memory first: chunks and series that end before the cutoff.
	var dead []*memSeries
	db.forEachSeries(func(s *memSeries) {
		s.mu.Lock()
		open := s.head()
		s.chunks = slices.DeleteFunc(s.chunks, func(c *memChunk) bool { return c.maxt < cutoff && c != open })
		s.oooChunks = slices.DeleteFunc(s.oooChunks, func(c *memChunk) bool { return c.maxt < cutoff })
		s.ooo = slices.DeleteFunc(s.ooo, func(sm sample) bool { return sm.t < cutoff })
		if s.maxT < cutoff {
			s.deleted = true
			dead = append(dead, s)
		} else if s.minT < cutoff {
			s.minT = cutoff
		}
		s.mu.Unlock()
	})

	// Then disk: chunk keys whose end is before the cutoff.
	var keys [][]byte
	err := db.bdb.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{PrefetchValues: false, Prefix: []byte{tagChunk}})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			k, err := parseChunkKey(it.Item().Key())
			if err != nil {
				return err
			}
			if k.maxt < cutoff {
				keys = append(keys, it.Item().KeyCopy(nil))
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, s := range dead {
		keys = append(keys, seriesKey(s.part, s.ref))
		db.removeSeries(s)
	}
	if err := db.deleteKeys(keys); err != nil {
		return err
	}
	db.metrics.retentionDeletedChunks.Add(float64(len(keys) - len(dead)))
	db.logger.Debug("retention applied", "cutoff", cutoff, "deleted_keys", len(keys), "series_dropped", len(dead), "duration", time.Since(start))
	return db.gcValueLog()
}

func (db *DB) deleteKeys(keys [][]byte) error {
	if len(keys) == 0 {
		return nil
	}
	wb := db.bdb.NewWriteBatch()
	defer wb.Cancel()
	for _, k := range keys {
		if err := wb.Delete(k); err != nil {
			return err
		}
	}
	return wb.Flush()
}

// gcValueLog rewrites value-log files that are mostly garbage, until badger
// finds none left, to give disk back after deletes.
func (db *DB) gcValueLog() error {
	if db.cfg.Path == "" {
		return nil
	}
	for i := 0; i < 16; i++ {
		err := db.bdb.RunValueLogGC(0.5)
		if errors.Is(err, badger.ErrNoRewrite) || errors.Is(err, badger.ErrRejected) {
			return nil
		}
		if err != nil {
			return err
		}
	}
	return nil
}

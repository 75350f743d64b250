// Package raftstore is a hashicorp/raft LogStore and StableStore on badger v4.
//
// raft-boltdb/v2 (the usual choice) imports github.com/hashicorp/go-metrics/compat,
// which the go-metrics v0.7.0 that Kiln's module graph selects no longer has,
// so it does not build here. Badger is already Kiln's storage engine; the Raft
// log is tiny (membership and other metadata changes), so one small badger
// instance with synchronous writes is enough.
package raftstore

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/hashicorp/raft"
)

// errNotFound is what raft expects from StableStore for a missing key: it
// compares err.Error() with "not found" (raft api.go HasExistingState).
var errNotFound = errors.New("not found")

// ErrCorrupt reports a stored log entry that cannot be decoded.
var ErrCorrupt = errors.New("raftstore: corrupt log entry")

const (
	prefixLog    = 'l'
	prefixStable = 's'
)

// Store implements raft.LogStore and raft.StableStore.
type Store struct {
	db *badger.DB
}

var (
	_ raft.LogStore    = (*Store)(nil)
	_ raft.StableStore = (*Store)(nil)
)

// Open opens (or creates) the store in dir.
func Open(dir string) (*Store, error) {
	opts := badger.DefaultOptions(dir).
		WithSyncWrites(true). // Raft requires that acknowledged entries survive a crash.
		WithLogger(nil).
		// The log holds a few kilobytes of metadata: keep memory small.
		WithMemTableSize(8 << 20).
		WithValueThreshold(64 << 10).
		WithNumMemtables(2).
		WithValueLogFileSize(16 << 20).
		WithBlockCacheSize(1 << 20).
		WithIndexCacheSize(1 << 20).
		WithNumCompactors(2)
	db, err := badger.Open(opts)
	if err != nil {
		return nil, fmt.Errorf("raftstore: open %s: %w", dir, err)
	}
	return &Store{db: db}, nil
}

// Close closes the database.
func (s *Store) Close() error { return s.db.Close() }

func logKey(idx uint64) []byte {
	k := make([]byte, 9)
	k[0] = prefixLog
	binary.BigEndian.PutUint64(k[1:], idx)
	return k
}

func stableKey(key []byte) []byte {
	return append([]byte{prefixStable}, key...)
}

// FirstIndex returns the first index written, 0 for no entries.
func (s *Store) FirstIndex() (uint64, error) { return s.edgeIndex(false) }

// LastIndex returns the last index written, 0 for no entries.
func (s *Store) LastIndex() (uint64, error) { return s.edgeIndex(true) }

func (s *Store) edgeIndex(last bool) (uint64, error) {
	var idx uint64
	err := s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Reverse: last, Prefix: []byte{prefixLog}})
		defer it.Close()
		seek := logKey(0)
		if last {
			seek = logKey(math.MaxUint64)
		}
		it.Seek(seek)
		if it.Valid() {
			idx = binary.BigEndian.Uint64(it.Item().Key()[1:])
		}
		return nil
	})
	return idx, err
}

// GetLog reads the entry at index into log.
func (s *Store) GetLog(index uint64, log *raft.Log) error {
	return s.db.View(func(txn *badger.Txn) error {
		item, err := txn.Get(logKey(index))
		if errors.Is(err, badger.ErrKeyNotFound) {
			return raft.ErrLogNotFound
		}
		if err != nil {
			return err
		}
		return item.Value(func(v []byte) error { return decodeLog(v, log) })
	})
}

// StoreLog stores one entry.
func (s *Store) StoreLog(log *raft.Log) error { return s.StoreLogs([]*raft.Log{log}) }

// StoreLogs stores entries in one transaction (batches if it grows too big).
func (s *Store) StoreLogs(logs []*raft.Log) error {
	wb := s.db.NewWriteBatch()
	defer wb.Cancel()
	for _, l := range logs {
		if err := wb.Set(logKey(l.Index), encodeLog(l)); err != nil {
			return fmt.Errorf("raftstore: store log %d: %w", l.Index, err)
		}
	}
	return wb.Flush()
}

// DeleteRange deletes entries min..max inclusive.
func (s *Store) DeleteRange(lo, hi uint64) error {
	wb := s.db.NewWriteBatch()
	defer wb.Cancel()
	for i := lo; i <= hi; i++ {
		if err := wb.Delete(logKey(i)); err != nil {
			return fmt.Errorf("raftstore: delete log %d: %w", i, err)
		}
		if i == math.MaxUint64 {
			break
		}
	}
	return wb.Flush()
}

// Set stores a stable key.
func (s *Store) Set(key, val []byte) error {
	return s.db.Update(func(txn *badger.Txn) error { return txn.Set(stableKey(key), val) })
}

// Get reads a stable key; a missing key is an error whose text is "not found".
func (s *Store) Get(key []byte) ([]byte, error) {
	var out []byte
	err := s.db.View(func(txn *badger.Txn) error {
		item, err := txn.Get(stableKey(key))
		if errors.Is(err, badger.ErrKeyNotFound) {
			return errNotFound
		}
		if err != nil {
			return err
		}
		out, err = item.ValueCopy(nil)
		return err
	})
	return out, err
}

// SetUint64 stores a uint64 stable key.
func (s *Store) SetUint64(key []byte, val uint64) error {
	return s.Set(key, binary.BigEndian.AppendUint64(nil, val))
}

// GetUint64 reads a uint64 stable key.
func (s *Store) GetUint64(key []byte) (uint64, error) {
	v, err := s.Get(key)
	if err != nil {
		return 0, err
	}
	if len(v) != 8 {
		return 0, fmt.Errorf("raftstore: key %q holds %d bytes, want 8", key, len(v))
	}
	return binary.BigEndian.Uint64(v), nil
}

// Log layout: index u64 | term u64 | type u8 | appended_at unix ns i64 |
// len(data) uvarint | data | len(extensions) uvarint | extensions.
func encodeLog(l *raft.Log) []byte {
	b := make([]byte, 0, 25+2*binary.MaxVarintLen64+len(l.Data)+len(l.Extensions))
	b = binary.BigEndian.AppendUint64(b, l.Index)
	b = binary.BigEndian.AppendUint64(b, l.Term)
	b = append(b, byte(l.Type))
	var at int64
	if !l.AppendedAt.IsZero() {
		at = l.AppendedAt.UnixNano()
	}
	b = binary.BigEndian.AppendUint64(b, uint64(at))
	b = binary.AppendUvarint(b, uint64(len(l.Data)))
	b = append(b, l.Data...)
	b = binary.AppendUvarint(b, uint64(len(l.Extensions)))
	b = append(b, l.Extensions...)
	return b
}

func decodeLog(b []byte, l *raft.Log) error {
	if len(b) < 25 {
		return fmt.Errorf("%w: %d bytes", ErrCorrupt, len(b))
	}
	l.Index = binary.BigEndian.Uint64(b)
	l.Term = binary.BigEndian.Uint64(b[8:])
	l.Type = raft.LogType(b[16])
	l.AppendedAt = time.Time{}
	if at := int64(binary.BigEndian.Uint64(b[17:])); at != 0 {
		l.AppendedAt = time.Unix(0, at)
	}
	rest := b[25:]
	var err error
	if l.Data, rest, err = readBytes(rest); err != nil {
		return err
	}
	if l.Extensions, rest, err = readBytes(rest); err != nil {
		return err
	}
	if len(rest) != 0 {
		return fmt.Errorf("%w: %d trailing bytes", ErrCorrupt, len(rest))
	}
	return nil
}

func readBytes(b []byte) (field, rest []byte, err error) {
	n, k := binary.Uvarint(b)
	// A last byte of zero after others is a longer encoding than the
	// writer's: not a record it wrote.
	if k <= 0 || k > 1 && b[k-1] == 0 || n > uint64(len(b)-k) {
		return nil, nil, fmt.Errorf("%w: bad length", ErrCorrupt)
	}
	b = b[k:]
	if n == 0 {
		return nil, b, nil
	}
	return append([]byte(nil), b[:n]...), b[n:], nil
}

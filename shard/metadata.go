package shard

import (
	"context"
	"slices"
	"sync"

	"github.com/dgraph-io/badger/v4"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/metadata"
)

// metadataStore keeps the latest type/help/unit per metric family. It is tiny
// next to the samples, so it lives in memory and in one key per family.
type metadataStore struct {
	mu sync.RWMutex
	m  map[string]metadata.Metadata
}

func newMetadataStore() *metadataStore { return &metadataStore{m: map[string]metadata.Metadata{}} }

func (ms *metadataStore) get(name string) (metadata.Metadata, bool) {
	ms.mu.RLock()
	defer ms.mu.RUnlock()
	m, ok := ms.m[name]
	return m, ok
}

func (ms *metadataStore) set(name string, m metadata.Metadata) {
	ms.mu.Lock()
	ms.m[name] = m
	ms.mu.Unlock()
}

func (ms *metadataStore) load(txn *badger.Txn) error {
	it := txn.NewIterator(badger.IteratorOptions{PrefetchValues: false, Prefix: []byte{tagMetadata}})
	defer it.Close()
	for it.Rewind(); it.Valid(); it.Next() {
		item := it.Item()
		name := string(item.Key()[1:])
		if err := item.Value(func(v []byte) error {
			m, err := decodeMetadata(v)
			if err == nil {
				ms.m[name] = m
			}
			return err
		}); err != nil {
			return err
		}
	}
	return nil
}

func encodeMetadata(m metadata.Metadata) []byte {
	b := appendUvarint(nil, uint64(len(m.Type)))
	b = append(b, m.Type...)
	b = appendUvarint(b, uint64(len(m.Unit)))
	b = append(b, m.Unit...)
	b = appendUvarint(b, uint64(len(m.Help)))
	return append(b, m.Help...)
}

func decodeMetadata(b []byte) (metadata.Metadata, error) {
	var m metadata.Metadata
	var typ string
	var ok bool
	if typ, b, ok = readString(b); !ok {
		return m, errBadLabels
	}
	if m.Unit, b, ok = readString(b); !ok {
		return m, errBadLabels
	}
	if m.Help, _, ok = readString(b); !ok {
		return m, errBadLabels
	}
	m.Type = model.MetricType(typ)
	return m, nil
}

// Metadata returns metric metadata by family name, as /api/v1/metadata
// shows it: every family (or just metric when set), at most limit families
// (<= 0: no limit). Kiln keeps one entry per family, so any per-metric limit
// is already met.
func (db *DB) Metadata(_ context.Context, metric string, limit, _ int) (map[string][]metadata.Metadata, error) {
	db.meta.mu.RLock()
	defer db.meta.mu.RUnlock()
	out := map[string][]metadata.Metadata{}
	if metric != "" {
		if m, ok := db.meta.m[metric]; ok {
			out[metric] = []metadata.Metadata{m}
		}
		return out, nil
	}
	names := make([]string, 0, len(db.meta.m))
	for n := range db.meta.m {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		if limit > 0 && len(out) >= limit {
			break
		}
		out[n] = []metadata.Metadata{db.meta.m[n]}
	}
	return out, nil
}

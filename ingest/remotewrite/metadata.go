package remotewrite

import (
	"hash/maphash"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/metadata"
)

// Metadata reaches storage only through AppendV2Options, i.e. attached to a
// sample. RW 1.0 senders (Prometheus' queue manager) send metadata in
// requests of their own, without samples, so the handler remembers the latest
// metadata per family and attaches it to later samples of that family.
// RW 2.0 sends metadata with every series; the cache then serves to hand the
// storage owned strings without copying them per series (AppendV2Options
// lets the storage keep Metadata strings, so they must not alias the pooled
// request buffer).

const (
	familyShards = 16
	// familyShardMax bounds each shard. A full shard is cleared rather than
	// evicted piecemeal: metadata is resent periodically (1.0) or with every
	// series (2.0), so forgetting is cheap and needs no LRU bookkeeping.
	familyShardMax = 1 << 13 // 128k families in total
)

type familyCache struct {
	seed   maphash.Seed
	size   atomic.Int64 // entries over all shards; 0 lets 1.0 skip lookups
	shards [familyShards]familyShard
}

type familyShard struct {
	mu sync.RWMutex
	m  map[string]metadata.Metadata
	_  [32]byte // 64 bytes per shard: keeps the locks on separate cache lines
}

func newFamilyCache() *familyCache {
	c := &familyCache{seed: maphash.MakeSeed()}
	for i := range c.shards {
		c.shards[i].m = make(map[string]metadata.Metadata)
	}
	return c
}

func (c *familyCache) shard(family string) *familyShard {
	return &c.shards[maphash.String(c.seed, family)%familyShards]
}

func (c *familyCache) get(family string) (metadata.Metadata, bool) {
	s := c.shard(family)
	s.mu.RLock()
	md, ok := s.m[family]
	s.mu.RUnlock()
	return md, ok
}

// put records md for family and returns an owned copy, which is the cached
// value itself when nothing changed (the common case, no allocation).
func (c *familyCache) put(family string, md metadata.Metadata) metadata.Metadata {
	s := c.shard(family)
	s.mu.RLock()
	old, ok := s.m[family]
	s.mu.RUnlock()
	if ok && old == md {
		return old
	}
	owned := metadata.Metadata{
		// Type is one of a few constants; share them instead of cloning.
		Type: metricTypeConst(md.Type),
		Help: strings.Clone(md.Help),
		Unit: strings.Clone(md.Unit),
	}
	if owned.Type == "" {
		owned.Type = model.MetricType(strings.Clone(string(md.Type)))
	}
	s.mu.Lock()
	if _, exists := s.m[family]; !exists {
		if len(s.m) >= familyShardMax {
			c.size.Add(-int64(len(s.m)))
			clear(s.m)
		}
		c.size.Add(1)
	}
	s.m[strings.Clone(family)] = owned
	s.mu.Unlock()
	return owned
}

func metricTypeConst(t model.MetricType) model.MetricType {
	for _, c := range metricTypes {
		if c == t {
			return c
		}
	}
	return ""
}

// familySuffixes are the series-name suffixes that classic histograms,
// summaries, counters (OpenMetrics) and info metrics add to the family name.
var familySuffixes = [...]string{"_bucket", "_count", "_sum", "_total", "_created", "_info", "_gcount", "_gsum"}

// familyOf derives a 2.0 series' family name from its metric name and type:
// the suffixes only apply to the types that add them.
func familyOf(name string, typ model.MetricType) string {
	switch typ {
	case model.MetricTypeHistogram, model.MetricTypeGaugeHistogram, model.MetricTypeSummary:
		for _, suf := range [...]string{"_bucket", "_count", "_sum", "_gcount", "_gsum", "_created"} {
			if f, ok := strings.CutSuffix(name, suf); ok && f != "" {
				return f
			}
		}
	}
	return name
}

// memoEntry is a per-request lookup result, negative results included.
type memoEntry struct {
	family string
	md     metadata.Metadata
	ok     bool
}

// metadataResolver resolves metadata for one request's series. Its memo is
// keyed by strings aliasing the request buffer and cleared per request.
type metadataResolver struct {
	cache *familyCache
	memo  map[string]memoEntry
}

func (m *metadataResolver) reset(c *familyCache) {
	m.cache = c
	if m.memo == nil {
		m.memo = make(map[string]memoEntry)
	}
	clear(m.memo)
}

// addV1 records a request's 1.0 metadata entries in the cache; the entries
// then win over older cached metadata for this request's series.
func (m *metadataResolver) addV1(entries []Metadata) {
	for _, e := range entries {
		if e.FamilyName == "" {
			continue
		}
		owned := m.cache.put(e.FamilyName, metadata.Metadata{Type: e.Type, Help: e.Help, Unit: e.Unit})
		m.memo[e.FamilyName] = memoEntry{family: e.FamilyName, md: owned, ok: true}
	}
}

// v1 finds the metadata of a 1.0 series by its metric name, trying the name
// itself and then the name without each known suffix.
func (m *metadataResolver) v1(name string) (string, metadata.Metadata) {
	if m.cache.size.Load() == 0 && len(m.memo) == 0 {
		return "", metadata.Metadata{}
	}
	if e, ok := m.memo[name]; ok {
		return e.family, e.md
	}
	e := m.lookupV1(name)
	m.memo[name] = e
	return e.family, e.md
}

func (m *metadataResolver) lookupV1(name string) memoEntry {
	if md, ok := m.cache.get(name); ok {
		return memoEntry{family: name, md: md, ok: true}
	}
	for _, suf := range familySuffixes {
		if f, ok := strings.CutSuffix(name, suf); ok && f != "" {
			if e, ok := m.memo[f]; ok && e.ok {
				return e
			}
			if md, ok := m.cache.get(f); ok {
				return memoEntry{family: f, md: md, ok: true}
			}
		}
	}
	return memoEntry{}
}

// v2 returns owned metadata for a 2.0 series.
func (m *metadataResolver) v2(name string, md Metadata) (string, metadata.Metadata) {
	if md.IsEmpty() {
		return "", metadata.Metadata{}
	}
	family := familyOf(name, md.Type)
	want := metadata.Metadata{Type: md.Type, Help: md.Help, Unit: md.Unit}
	if e, ok := m.memo[family]; ok && e.md == want {
		return family, e.md
	}
	owned := m.cache.put(family, want)
	m.memo[family] = memoEntry{family: family, md: owned, ok: true}
	return family, owned
}

package shard

import (
	"math"
	"slices"
	"strings"

	"github.com/prometheus/common/model"
)

// Stats are the cardinality statistics behind /api/v1/status/tsdb.
type Stats struct {
	NumSeries      uint64
	NumLabelPairs  int
	ChunkCount     int64 // chunks held in memory
	MinTime        int64
	MaxTime        int64
	SeriesByMetric []NameCount // series per metric name
	ValuesByLabel  []NameCount // distinct values per label name
	BytesByLabel   []NameCount // summed value lengths per label name
	SeriesByPair   []NameCount // series per "name=value" pair
}

// NameCount is one entry of a top-N list.
type NameCount struct {
	Name  string
	Count uint64
}

// Stats computes cardinality statistics; each list holds its top limit
// entries, largest first.
func (db *DB) Stats(limit int) Stats {
	var st Stats
	db.index.mu.RLock()
	st.NumSeries = uint64(len(db.index.all))
	for name, vals := range db.index.postings {
		st.NumLabelPairs += len(vals)
		st.ValuesByLabel = append(st.ValuesByLabel, NameCount{name, uint64(len(vals))})
		var size uint64
		for v, p := range vals {
			size += uint64(len(v) * len(p))
			st.SeriesByPair = append(st.SeriesByPair, NameCount{name + "=" + v, uint64(len(p))})
			if name == model.MetricNameLabel {
				st.SeriesByMetric = append(st.SeriesByMetric, NameCount{v, uint64(len(p))})
			}
		}
		st.BytesByLabel = append(st.BytesByLabel, NameCount{name, size})
	}
	db.index.mu.RUnlock()

	st.MinTime, st.MaxTime = math.MaxInt64, math.MinInt64
	db.forEachSeries(func(s *memSeries) {
		s.mu.Lock()
		st.ChunkCount += int64(len(s.chunks) + len(s.oooChunks))
		st.MinTime = min(st.MinTime, s.minT)
		st.MaxTime = max(st.MaxTime, s.maxT)
		s.mu.Unlock()
	})
	if st.NumSeries == 0 {
		st.MinTime, st.MaxTime = 0, 0
	}
	for _, l := range []*[]NameCount{&st.SeriesByMetric, &st.ValuesByLabel, &st.BytesByLabel, &st.SeriesByPair} {
		*l = topN(*l, limit)
	}
	return st
}

func topN(l []NameCount, n int) []NameCount {
	slices.SortFunc(l, func(a, b NameCount) int {
		if a.Count != b.Count {
			if a.Count > b.Count {
				return -1
			}
			return 1
		}
		return strings.Compare(a.Name, b.Name)
	})
	if n > 0 && len(l) > n {
		l = l[:n]
	}
	if l == nil {
		l = []NameCount{}
	}
	return l
}

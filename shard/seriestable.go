package shard

import "github.com/prometheus/prometheus/model/labels"

// seriesTable finds series by labels.StableHash: open addressing with
// linear probing, the hash kept in the slot. A Go map of hash -> []*memSeries
// cost a remote-write sample ~0.5 µs in cache misses (map header, table,
// group, slice, series); here a lookup touches the slot and the series.
// Not safe for concurrent use: each stripe locks its own.
type seriesTable struct {
	slots []seriesSlot // a power of two long, at most half full
	n     int
}

type seriesSlot struct {
	hash uint64
	s    *memSeries // nil: empty
}

// home is the first slot probed for h. Stripes are chosen by the low bits
// of the hash, so the table uses the high ones.
func (t *seriesTable) home(h uint64) int {
	return int((h >> 32) & uint64(len(t.slots)-1))
}

// get returns the series with hash h and labels ls, or nil.
func (t *seriesTable) get(h uint64, ls labels.Labels) *memSeries {
	if len(t.slots) == 0 {
		return nil
	}
	mask := len(t.slots) - 1
	for i := t.home(h); ; i = (i + 1) & mask {
		sl := &t.slots[i]
		if sl.s == nil {
			return nil
		}
		if sl.hash == h && labels.Equal(sl.s.lset, ls) {
			return sl.s
		}
	}
}

// add inserts s, whose labels' hash is h.
func (t *seriesTable) add(h uint64, s *memSeries) {
	if 2*(t.n+1) > len(t.slots) {
		t.grow()
	}
	mask := len(t.slots) - 1
	i := t.home(h)
	for t.slots[i].s != nil {
		i = (i + 1) & mask
	}
	t.slots[i] = seriesSlot{hash: h, s: s}
	t.n++
}

func (t *seriesTable) grow() {
	old := t.slots
	t.slots = make([]seriesSlot, max(8, 2*len(old)))
	t.n = 0
	for _, sl := range old {
		if sl.s != nil {
			t.add(sl.hash, sl.s)
		}
	}
}

// remove deletes s, whose labels' hash is h, if present. Later slots of
// the probe run shift back so that no lookup stops early at the hole.
func (t *seriesTable) remove(h uint64, s *memSeries) {
	if len(t.slots) == 0 {
		return
	}
	mask := len(t.slots) - 1
	i := t.home(h)
	for t.slots[i].s != s {
		if t.slots[i].s == nil {
			return
		}
		i = (i + 1) & mask
	}
	t.n--
	for j := (i + 1) & mask; ; j = (j + 1) & mask {
		sl := t.slots[j]
		if sl.s == nil {
			break
		}
		// sl may fill the hole at i unless its home lies cyclically in (i, j].
		k := t.home(sl.hash)
		if (i < j && (k <= i || k > j)) || (i > j && k <= i && k > j) {
			t.slots[i] = sl
			i = j
		}
	}
	t.slots[i] = seriesSlot{}
}

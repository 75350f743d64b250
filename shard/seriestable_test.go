package shard

import (
	"fmt"
	"math/rand"
	"testing"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/stretchr/testify/require"
)

// The table agrees with a map through random adds and removes, with hashes
// squeezed into few home slots (and some equal) so that probe runs wrap
// and removals shift entries back.
func TestSeriesTableMatchesMap(t *testing.T) {
	r := rand.New(rand.NewSource(1))
	var tab seriesTable
	want := map[*memSeries]uint64{}
	var all []*memSeries
	for i := range 3000 {
		ls := labels.FromStrings("i", fmt.Sprint(i))
		h := uint64(r.Intn(40)) << 32 // few homes; equal hashes too
		if r.Intn(4) == 0 {
			h |= uint64(r.Intn(1 << 20))
		}
		s := &memSeries{lset: ls}
		all = append(all, s)
		tab.add(h, s)
		want[s] = h
		if r.Intn(3) == 0 { // remove a random live one
			for x, xh := range want {
				tab.remove(xh, x)
				delete(want, x)
				break
			}
		}
		if i%97 == 0 {
			for _, x := range all {
				xh, live := want[x]
				if !live {
					xh = uint64(r.Intn(40)) << 32
				}
				got := tab.get(xh, x.lset)
				if live {
					require.Same(t, x, got, "series %s", x.lset)
				} else {
					require.Nil(t, got, "removed series %s", x.lset)
				}
			}
			require.Equal(t, len(want), tab.n)
		}
	}
	// Removing what is absent changes nothing.
	tab.remove(12345, &memSeries{})
	require.Equal(t, len(want), tab.n)
}

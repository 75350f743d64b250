package parallel

import (
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestMemoBounded: a full memo makes room by dropping expired entries
// first, and everything only when none expired.
func TestMemoBounded(t *testing.T) {
	now := time.Unix(1e9, 0)
	m := &memo{now: func() time.Time { return now }, expires: map[memoKey]time.Time{}}
	for i := range maxMemo / 2 {
		m.add(memoKey{wide, fmt.Sprint("old", i)})
	}
	now = now.Add(memoTTL / 2)
	for i := range maxMemo / 2 {
		m.add(memoKey{wide, fmt.Sprint("new", i)})
	}
	require.Len(t, m.expires, maxMemo)
	now = now.Add(memoTTL / 2) // the old ones expired
	m.add(memoKey{fellBack, "x"})
	require.Len(t, m.expires, maxMemo/2+1)
	require.True(t, m.has(memoKey{wide, "new0"}))
	require.False(t, m.has(memoKey{wide, "old0"}))

	for i := range maxMemo {
		m.add(memoKey{wide, fmt.Sprint("more", i)})
	}
	require.LessOrEqual(t, len(m.expires), maxMemo)
	require.True(t, m.has(memoKey{wide, fmt.Sprint("more", maxMemo-1)}))
}

func TestIsWide(t *testing.T) {
	require.True(t, isWide(1700, 1700))
	require.True(t, isWide(600, 300))
	require.False(t, isWide(600, 200))
	require.False(t, isWide(100, 100)) // too few series to judge
}

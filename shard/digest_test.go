package shard

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/prometheus/prometheus/tsdb/tsdbutil"
	"github.com/stretchr/testify/require"
)

const digestStep = 2 * 3600 * 1000

// digestReplica writes 6 h of data of partition testPart: floats every 15 s
// and histograms every minute. edit may change or drop a sample (return
// false to drop). reverse writes newest first, which takes the
// out-of-order path and gives different chunks for the same data.
func digestReplica(t *testing.T, reverse bool, edit func(series int, sm *sample) bool) *DB {
	t.Helper()
	db := open(t, Config{HeadWindow: time.Hour})
	floats := seriesIn(testPart, "m", 3)
	hist := seriesIn(testPart, "h", 1)[0]
	fhist := seriesIn(testPart, "fh", 1)[0]
	var all [5][]sample
	for i := int64(0); i < 6*240; i++ {
		for s := range floats {
			all[s] = append(all[s], sample{t: i * 15000, f: float64(i*int64(s+1)) / 3})
		}
		if i%4 == 0 {
			all[3] = append(all[3], sample{t: i * 15000, h: tsdbutil.GenerateTestHistogram(i)})
			all[4] = append(all[4], sample{t: i * 15000, fh: tsdbutil.GenerateTestFloatHistogram(i)})
		}
	}
	for s, ls := range append(floats, hist, fhist) {
		ss := all[s][:0:0]
		for _, sm := range all[s] {
			if edit == nil || edit(s, &sm) {
				ss = append(ss, sm)
			}
		}
		if reverse {
			for i, j := 0, len(ss)-1; i < j; i, j = i+1, j-1 {
				ss[i], ss[j] = ss[j], ss[i]
			}
		}
		for len(ss) > 0 {
			n := min(len(ss), 500)
			appendSamples(t, db, ls, ss[:n]...)
			ss = ss[n:]
			if !reverse {
				require.NoError(t, db.flush())
			}
		}
	}
	return db
}

func digest(t *testing.T, db *DB) []BucketDigest {
	t.Helper()
	d, err := db.PartitionDigest(context.Background(), testPart, 0, 6*3600*1000, digestStep)
	require.NoError(t, err)
	return d
}

func TestPartitionDigest(t *testing.T) {
	a := digestReplica(t, false, nil)
	defer func() { _ = a.Close() }()
	b := digestReplica(t, true, nil)
	defer func() { _ = b.Close() }()
	da := digest(t, a)
	require.Len(t, da, 3)
	for i, bd := range da {
		require.Equal(t, int64(i)*digestStep, bd.Mint)
		require.Equal(t, int64(i+1)*digestStep, bd.Maxt)
		require.Equal(t, 5, bd.Series)
		require.Equal(t, 3*480+2*120, bd.Samples)
		require.NotZero(t, bd.Hash)
	}
	require.Equal(t, da, digest(t, b), "same data, other chunk layout")

	// A copy made by export and import matches too.
	var buf bytes.Buffer
	_, err := a.ExportPartition(context.Background(), testPart, -1<<62, 1<<62, &buf, ExportOptions{})
	require.NoError(t, err)
	c := open(t, Config{})
	defer func() { _ = c.Close() }()
	_, err = c.ImportPartition(context.Background(), &buf)
	require.NoError(t, err)
	require.Equal(t, da, digest(t, c))

	diff := func(x, y []BucketDigest) []int {
		var out []int
		for i := range x {
			if x[i] != y[i] {
				out = append(out, i)
			}
		}
		return out
	}
	// One float value differs in the second bucket.
	changed := digestReplica(t, false, func(s int, sm *sample) bool {
		if s == 1 && sm.t == 3*3600*1000 {
			sm.f++
		}
		return true
	})
	defer func() { _ = changed.Close() }()
	dc := digest(t, changed)
	require.Equal(t, []int{1}, diff(da, dc))
	require.Equal(t, da[1].Samples, dc[1].Samples)

	// One histogram missing in the third bucket.
	missing := digestReplica(t, false, func(s int, sm *sample) bool {
		return s != 3 || sm.t != 5*3600*1000
	})
	defer func() { _ = missing.Close() }()
	dm := digest(t, missing)
	require.Equal(t, []int{2}, diff(da, dm))
	require.Equal(t, da[2].Samples-1, dm[2].Samples)

	// One histogram bucket count differs in the first bucket.
	hchanged := digestReplica(t, true, func(s int, sm *sample) bool {
		if s == 4 && sm.t == 3600*1000 {
			sm.fh.PositiveBuckets[0] += 1
			sm.fh.Count++
		}
		return true
	})
	defer func() { _ = hchanged.Close() }()
	require.Equal(t, []int{0}, diff(da, digest(t, hchanged)))
}

func TestPartitionDigestRanges(t *testing.T) {
	db := open(t, Config{})
	defer func() { _ = db.Close() }()
	ls := seriesIn(testPart, "m", 1)[0]
	appendSamples(t, db, ls, sample{t: 0, f: 1}, sample{t: 99, f: 2}, sample{t: 100, f: 3}, sample{t: 250, f: 4})
	d, err := db.PartitionDigest(context.Background(), testPart, 0, 250, 100)
	require.NoError(t, err)
	require.Len(t, d, 3)
	require.Equal(t, []int{2, 1, 0}, []int{d[0].Samples, d[1].Samples, d[2].Samples}, "maxt is exclusive")
	require.Equal(t, int64(250), d[2].Maxt, "last bucket is cut at maxt")
	require.Zero(t, d[2].Hash)
	require.Zero(t, d[2].Series)

	// Other partitions are empty.
	d, err = db.PartitionDigest(context.Background(), testPart+1, 0, 250, 100)
	require.NoError(t, err)
	for _, b := range d {
		require.Zero(t, b.Samples)
	}
	// Bad arguments.
	for _, a := range [][3]int64{{0, 0, 1}, {10, 0, 1}, {0, 10, 0}, {0, 1 << 40, 1}, {-1 << 63, 1<<63 - 1, 1}} {
		_, err := db.PartitionDigest(context.Background(), testPart, a[0], a[1], a[2])
		require.Error(t, err, "%v", a)
	}
	// The whole time range in one bucket.
	d, err = db.PartitionDigest(context.Background(), testPart, -1<<63, 1<<63-1, 1<<63-1)
	require.NoError(t, err)
	require.Len(t, d, 3)
	require.Equal(t, 4, d[1].Samples)
	require.Equal(t, int64(-1), d[1].Mint)
}

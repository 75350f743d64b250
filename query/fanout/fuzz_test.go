package fanout

import (
	"bytes"
	"io"
	"math"
	"testing"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/exemplar"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/metadata"
	"github.com/prometheus/prometheus/storage"
	"github.com/prometheus/prometheus/tsdb/chunkenc"
	"github.com/prometheus/prometheus/tsdb/chunks"
	"github.com/stretchr/testify/require"

	"github.com/kilnhq/kiln/shard"
)

func TestRequestRoundTrip(t *testing.T) {
	r := &request{mint: -5, maxt: 1 << 40, timeoutMS: 1500, name: "job", limit: 7, limitPerMetric: 2,
		matchers: []*labels.Matcher{labels.MustNewMatcher(labels.MatchRegexp, "__name__", "up|down"), labels.MustNewMatcher(labels.MatchNotEqual, "a", "")},
		hints:    &storage.SelectHints{Start: 1, End: 2, Step: 3, Range: 4, Limit: 5, Func: "rate", By: true, Grouping: []string{"job"}, ShardIndex: 1, ShardCount: 2, DisableTrimming: true}}
	r.parts.Add(3)
	r.parts.Add(1023)
	got, err := unmarshalRequest(r.marshal())
	require.NoError(t, err)
	require.Nil(t, got.cells)
	r.cells = []partCells{{part: 1023, cells: []shard.CellDigest{{Samples: 1, Sum: 1<<64 - 1}, {}}}, {part: 3, cells: []shard.CellDigest{{Samples: 7, Sum: 9}}}}
	got, err = unmarshalRequest(r.marshal())
	require.NoError(t, err)
	require.Equal(t, r.cells, got.cells)
	require.Equal(t, r.parts, got.parts)
	require.Equal(t, r.hints, got.hints)
	require.Equal(t, r.name, got.name)
	require.Equal(t, r.limit, got.limit)
	require.Len(t, got.matchers, 2)
	require.Equal(t, r.matchers[0].String(), got.matchers[0].String())
	require.True(t, got.matchers[0].Matches("down"))

	_, err = unmarshalRequest(r.marshal()[:40])
	require.ErrorIs(t, err, errMalformed)
}

func FuzzUnmarshalRequest(f *testing.F) {
	r := &request{mint: 1, maxt: 2, matchers: []*labels.Matcher{labels.MustNewMatcher(labels.MatchEqual, "a", "b")}, hints: &storage.SelectHints{Func: "series"}}
	f.Add(r.marshal())
	f.Add((&request{}).marshal())
	f.Fuzz(func(t *testing.T, b []byte) {
		got, err := unmarshalRequest(b)
		if err != nil {
			require.Nil(t, got)
			return
		}
		// Whatever decodes re-encodes to a message that decodes the same.
		again, err := unmarshalRequest(got.marshal())
		require.NoError(t, err)
		require.Equal(t, got.marshal(), again.marshal())
	})
}

var seedExemplars = []exemplar.Exemplar{
	{Labels: labels.FromStrings("trace_id", "abc"), Value: 1.5, Ts: -3, HasTs: true},
	{Labels: labels.EmptyLabels(), Value: math.Inf(1), Ts: 7},
}

// responseSeed encodes a response with every frame type.
func responseSeed(t testing.TB) []byte {
	var buf bytes.Buffer
	fw := &frameWriter{w: &buf}
	c := chunkenc.NewXORChunk()
	app, err := c.Appender()
	require.NoError(t, err)
	app.Append(0, 10, 1)
	app.Append(0, 20, 2)
	require.NoError(t, fw.series(labels.FromStrings("a", "b"), storage.NewListChunkSeriesIterator(chunks.Meta{Chunk: c, MinTime: 10, MaxTime: 20})))
	require.NoError(t, fw.str(frameString, "job"))
	require.NoError(t, fw.metadata("up", metadata.Metadata{Type: model.MetricTypeGauge, Help: "h"}))
	require.NoError(t, fw.str(frameWarning, "careful"))
	var ps shard.PartitionSet
	ps.Add(5)
	require.NoError(t, fw.same(&ps))
	require.NoError(t, fw.digest(5, partDigest{series: 2, sum: 3}))
	require.NoError(t, fw.exemplars(labels.FromStrings("a", "b"), seedExemplars))
	require.NoError(t, fw.end())
	return buf.Bytes()
}

func TestFrameRoundTrip(t *testing.T) {
	fr := newFrameReader(responseSeed(t))
	f, err := fr.next()
	require.NoError(t, err)
	require.Equal(t, frameSeries, f.typ)
	require.Equal(t, labels.FromStrings("a", "b"), f.lset)
	it := (&remoteSeries{chunks: f.chunks, mint: math.MinInt64, maxt: math.MaxInt64}).Iterator(nil)
	require.Equal(t, chunkenc.ValFloat, it.Seek(15))
	ts, v := it.At()
	require.Equal(t, []any{int64(20), 2.0}, []any{ts, v})
	for _, typ := range []byte{frameString, frameMetadata, frameWarning, frameSame, frameDigest, frameExemplars} {
		f, err = fr.next()
		require.NoError(t, err)
		require.Equal(t, typ, f.typ)
	}
	require.Equal(t, labels.FromStrings("a", "b"), f.lset)
	require.Equal(t, seedExemplars, f.exemplars)
	_, err = fr.next()
	require.ErrorIs(t, err, io.EOF)

	// A stream cut short is an error, never a short answer.
	seed := responseSeed(t)
	fr = newFrameReader(seed[:len(seed)-1])
	for err == nil || err == io.EOF {
		if _, err = fr.next(); err == io.EOF {
			t.Fatal("truncated stream decoded as complete")
		}
	}
	require.ErrorIs(t, err, errMalformed)
}

func FuzzFrameReader(f *testing.F) {
	f.Add(responseSeed(f))
	f.Add([]byte{frameSeries, 1, 1, 'a', 1, 'b', 1, 1, 0, 0, 1, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		fr := newFrameReader(b)
		for range 1000 {
			f, err := fr.next()
			if err != nil {
				return
			}
			metas, err := f.metas()
			require.NoError(t, err) // the reader checked them
			for i := 1; i < len(metas); i++ {
				require.Greater(t, metas[i].MinTime, metas[i-1].MaxTime)
			}
		}
	})
}

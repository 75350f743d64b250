package replicate

import (
	"context"
	"fmt"
	"math"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/metadata"
	"github.com/prometheus/prometheus/storage"
	"github.com/stretchr/testify/require"

	"github.com/kilnhq/kiln/cluster/ring"
	"github.com/kilnhq/kiln/shard"
)

// loadgenSeries is like bench/loadgen: 8 labels, job/instance/pod/method/
// status/namespace/handler.
func loadgenSeries(i int) labels.Labels {
	jobs := []string{"api-gateway", "checkout", "payments", "inventory", "search"}
	tgt := i / 100
	job := jobs[tgt%len(jobs)]
	return labels.FromStrings(
		"__name__", []string{"http_requests_total", "http_request_duration_seconds_bucket", "process_cpu_seconds_total"}[i%3],
		"job", job,
		"namespace", []string{"prod", "staging"}[tgt%2],
		"instance", fmt.Sprintf("10.0.%d.%d:8080", tgt/250, tgt%250),
		"pod", fmt.Sprintf("%s-%08x-%05d", job, uint32(tgt*2654435761), tgt),
		"method", []string{"GET", "POST"}[i%2],
		"status", []string{"200", "404", "500"}[i%3],
		"handler", fmt.Sprintf("/api/v1/h%d", i%100), // unique within a target, as in loadgen
	)
}

// loadgenValue is a counter: base + rate*round + noise below rate.
func loadgenValue(i, round int) float64 {
	seed := uint64(i)*0x9e3779b97f4a7c15 + 1
	base := float64(seed>>44) * 10
	rate := float64(1 + i%200)
	noise := float64((seed ^ uint64(round)*0xbf58476d1ce4e5b9) >> 40 % uint64(rate))
	return base + rate*float64(round) + noise
}

// mixedValue follows bench/loadgen's mix of 100 series per target: 60
// integral counters, 20 decimal counters (cpu seconds at 0.01, histogram
// sums at 0.001), 15 narrow integral gauges and 5 wide ones (memory and
// filesystem bytes swinging by 1e8..1e9).
func mixedValue(i, round int) float64 {
	seed := uint64(i)*0x9e3779b97f4a7c15 + 1
	noise := float64((seed ^ uint64(round)*0xbf58476d1ce4e5b9) >> 40 % 1000)
	phase := float64(seed>>50) / 1000
	switch k := i % 100; {
	case k < 60:
		return loadgenValue(i, round)
	case k < 76:
		return math.Round((float64(seed>>40)+float64(round*900)+noise)*0.01*1e6) / 1e6
	case k < 80:
		return math.Round((float64(seed>>44)+float64(round*50)+noise)*0.2*1000) / 1000
	case k < 95:
		return math.Round(50 + 45*math.Sin(float64(round)/3+phase) + noise/100)
	default:
		return math.Round(5e8 + 1e8*math.Sin(float64(round)/20+phase) + noise*1e4)
	}
}

// TestWireBytesPerSampleMixed is TestWireBytesPerSample on mixedValue,
// encoding with working buffers reused across requests, as forward does.
func TestWireBytesPerSampleMixed(t *testing.T) {
	enc, dec := codecs(t)
	var pc peerCache
	var ts tables
	var bf encodeBufs
	steady, steadySamples := 0, 0
	const rounds = 240 // 1 h at 15 s: deltas from the bases grow as in the benchmark
	for r := range rounds {
		b := &batch{}
		for i := range 2000 - r%3*300 { // sizes vary, so reused buffers shrink too
			ls := loadgenSeries(i)
			s := b.seriesIndex(ls, labels.StableHash(ls), "", metadata.Metadata{})
			b.floats = append(b.floats, fsample{sidx: s, t: int64(1_700_000_000_000 + r*15_000 + i%1000), v: mixedValue(i, r)})
			b.series[s].nf++
		}
		e := encodeWith(enc, &bf, "a", b, &pc)
		// Every request is decoded (values chain from the previous one);
		// comparing every round made the test slow under -race.
		req, err := decodeRequest(dec, e.body)
		require.NoError(t, err)
		defs, err := ts.resolve(req)
		require.NoError(t, err)
		if r%20 < 3 || r == rounds-1 {
			require.Equal(t, expected(b), flatten(t, req, defs))
		}
		pc.ack(&e)
		if r > 0 {
			steady += len(e.body)
			steadySamples += len(b.floats)
		}
	}
	per := float64(steady) / float64(steadySamples)
	t.Logf("bytes per replicated sample, loadgen's value mix, steady state: %.2f", per)
	require.Less(t, per, 2.0)
}

func loadgenBatch(round int) *batch {
	b := &batch{}
	t := int64(1_700_000_000_000 + round*15_000)
	for i := range 2000 {
		ls := loadgenSeries(i)
		s := b.seriesIndex(ls, labels.StableHash(ls), "", metadata.Metadata{})
		b.floats = append(b.floats, fsample{sidx: s, t: t + int64(i%1000), v: loadgenValue(i, round)})
		b.series[s].nf++
	}
	return b
}

// TestWireBytesPerSample reports the bytes on the wire per replicated sample
// for a loadgen-like batch (2,000 samples of 2,000 series), the first time
// (series defined) and in the steady state (series cached, values as deltas
// from their base).
func TestWireBytesPerSample(t *testing.T) {
	enc, dec := codecs(t)
	var pc peerCache
	var ts tables
	var first, steady int
	const rounds = 20
	for r := range rounds {
		b := loadgenBatch(r)
		e := encode(enc, "a", b, &pc)
		req, err := decodeRequest(dec, e.body)
		require.NoError(t, err)
		defs, err := ts.resolve(req)
		require.NoError(t, err)
		got := flatten(t, req, defs)
		require.Len(t, got, 2000)
		require.Equal(t, math.Float64bits(b.floats[0].v), got[0].vbits)
		pc.ack(&e)
		if r == 0 {
			first = len(e.body)
		} else {
			steady += len(e.body)
		}
	}
	perFirst := float64(first) / 2000
	perSteady := float64(steady) / (rounds - 1) / 2000
	full := len(encode(enc, "a", loadgenBatch(1), nil).body)
	t.Logf("bytes per replicated sample: first batch %.2f, steady state %.2f, self-contained (hint) %.2f", perFirst, perSteady, float64(full)/2000)
	// The issue targets 2; the noise in counter increments is most of what
	// is left (values are deltas from a per-series base, not from the
	// previous sample, which would need ordered delivery).
	require.Less(t, perSteady, 1.6)
}

func BenchmarkEncodeLoadgenBatch(b *testing.B) {
	enc, _ := codecs(b)
	var pc peerCache
	e := encode(enc, "a", loadgenBatch(0), &pc)
	pc.ack(&e)
	bt := loadgenBatch(1)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		e = encode(enc, "a", bt, &pc)
	}
	b.ReportMetric(float64(len(e.body))/2000, "wire-bytes/sample")
}

// appendRounds runs b.N rounds of one sample for each of 2,000 loadgen
// series through app and reports wall and process CPU time per sample.
func appendRounds(b *testing.B, app func() storage.AppenderV2) {
	series := make([]labels.Labels, 2000)
	for i := range series {
		series[i] = loadgenSeries(i)
	}
	b.ReportAllocs()
	round := 0
	c0 := cpuTime(b)
	for b.Loop() {
		a := app()
		for i, ls := range series {
			if _, err := a.Append(0, ls, 0, 1_700_000_000_000+int64(round)*15000, loadgenValue(i, round), nil, nil, storage.AppendV2Options{}); err != nil {
				b.Fatal(err)
			}
		}
		if err := a.Commit(); err != nil {
			b.Fatal(err)
		}
		round++
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(series)), "ns/sample")
	b.ReportMetric(float64(cpuTime(b)-c0)/float64(b.N*len(series)), "cpu-ns/sample")
}

// BenchmarkSingleNode compares the Writer on a ring of one with the bare
// shard appender it wraps.
func BenchmarkSingleNode(b *testing.B) {
	b.Run("shard", func(b *testing.B) {
		db, err := shard.Open(shard.Config{}, nil, nil)
		require.NoError(b, err)
		defer func() { _ = db.Close() }()
		appendRounds(b, func() storage.AppenderV2 { return db.AppenderV2(context.Background()) })
	})
	b.Run("writer", func(b *testing.B) {
		db, err := shard.Open(shard.Config{}, nil, nil)
		require.NoError(b, err)
		defer func() { _ = db.Close() }()
		r, err := ring.New([]ring.Member{{Name: "a", Addr: "127.0.0.1:1"}}, 1, 1)
		require.NoError(b, err)
		c := &cluster{ring: r, dead: map[string]bool{}}
		w, err := New(Config{}, topo{c: c, self: "a"}, db, nil, nil)
		require.NoError(b, err)
		defer func() { _ = w.Close() }()
		appendRounds(b, func() storage.AppenderV2 { return w.AppenderV2(context.Background()) })
	})
}

// cpuTime is the process's user+system CPU time.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	require.NoError(b, syscall.Getrusage(syscall.RUSAGE_SELF, &ru))
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkCPUPerSample compares the CPU the whole process spends per
// sample: a bare shard (one node), and three in-process nodes at RF=3 over
// real HTTP written through one of them (the three copies' appends, the
// encoding, the RPCs and the peers' decoding). Their ratio is the issue's
// "CPU per ingested sample at RF=3 / single node" without other processes.
func BenchmarkCPUPerSample(b *testing.B) {
	b.Run("single", func(b *testing.B) {
		db, err := shard.Open(shard.Config{}, nil, nil)
		require.NoError(b, err)
		defer func() { _ = db.Close() }()
		appendRounds(b, func() storage.AppenderV2 { return db.AppenderV2(context.Background()) })
	})
	b.Run("rf3", func(b *testing.B) {
		_, nodes := threeNodes(b, 3, Config{})
		appendRounds(b, func() storage.AppenderV2 { return nodes[0].writer().AppenderV2(context.Background()) })
	})
}

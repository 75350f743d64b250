package remotewrite

import (
	"errors"
	"slices"
	"testing"

	"github.com/prometheus/prometheus/prompb"
	writev2 "github.com/prometheus/prometheus/prompb/io/prometheus/write/v2"
)

// The fuzz targets check that the decoders never panic and agree with
// Prometheus' generated (gogo) decoders: whatever prompb accepts, Kiln
// accepts with the same content, except for the documented deliberate
// refusals (ErrWrongMessage, ErrInvalidSymbols, errPackedOverrun, and
// ErrTooLarge for bodies that decode to more than maxAmplification× their
// size); whatever
// prompb rejects, Kiln rejects. Each target also decodes into a Request that
// held another message first, to catch incomplete resets.
//
//	go test -run='^$' -fuzz=FuzzDecodeV1 -fuzztime=10s ./ingest/remotewrite

func FuzzDecodeV1(f *testing.F) {
	var seeds [][]byte
	for _, name := range sortedKeys(v1Requests()) {
		seeds = append(seeds, marshalV1(f, v1Requests()[name]))
	}
	for _, s := range seeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var r Request
		_ = DecodeV1(seeds[len(data)%len(seeds)], &r)
		err := DecodeV1(data, &r)

		var pb prompb.WriteRequest
		perr := pb.Unmarshal(data)
		switch {
		case err == nil && perr != nil:
			t.Fatalf("kiln accepts what prompb rejects (%v)", perr)
		case err != nil && perr == nil:
			if !errors.Is(err, ErrWrongMessage) && !errors.Is(err, errPackedOverrun) && !errors.Is(err, ErrTooLarge) {
				t.Fatalf("kiln rejects what prompb accepts: %v", err)
			}
		case err == nil:
			if derr := diffV1(&pb, &r); derr != nil {
				t.Fatal(derr)
			}
		}
	})
}

func FuzzDecodeV2(f *testing.F) {
	var seeds [][]byte
	for _, name := range sortedKeys(v2Requests()) {
		seeds = append(seeds, marshalV2(f, v2Requests()[name]))
	}
	for _, s := range seeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var r Request
		_ = DecodeV2(seeds[len(data)%len(seeds)], &r)
		err := DecodeV2(data, &r)

		var pb writev2.Request
		perr := pb.Unmarshal(data)
		switch {
		case err == nil && perr != nil:
			t.Fatalf("kiln accepts what prompb rejects (%v)", perr)
		case err != nil && perr == nil:
			if !errors.Is(err, ErrWrongMessage) && !errors.Is(err, ErrInvalidSymbols) && !errors.Is(err, errPackedOverrun) && !errors.Is(err, ErrTooLarge) {
				t.Fatalf("kiln rejects what prompb accepts: %v", err)
			}
		case err == nil:
			if derr := diffV2(&pb, &r); derr != nil {
				t.Fatal(derr)
			}
		}
	})
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

package fanout

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/metadata"
	"github.com/prometheus/prometheus/storage"
	"github.com/prometheus/prometheus/tsdb/chunkenc"
	"github.com/prometheus/prometheus/tsdb/chunks"

	"github.com/kilnhq/kiln/shard"
)

// The internal read protocol. A request is one binary message in the POST
// body (all four endpoints share it, each reading the fields it needs):
//
//	version byte (1) · mint varint · maxt varint · timeout-ms uvarint ·
//	partition bitmap (16 × u64 little-endian) · matcher count uvarint ·
//	per matcher: type byte, name str, value str ·
//	hints byte (0 none, 1 present) · [start, end, step, range varint ·
//	limit uvarint · func str · by byte · grouping count uvarint, strs ·
//	shard index, shard count uvarint · disable-trimming byte] ·
//	name str (label name or metric) · limit uvarint · limit-per-metric uvarint
//
// where str is a uvarint length and the bytes. A response (status 200) is a
// snappy-framed stream of frames, each a type byte and its fields:
//
//	series:   label count uvarint, name/value strs, chunk count uvarint,
//	          per chunk: encoding byte, mint varint, maxt-mint uvarint, bytes str
//	string:   str (a label name or value)
//	metadata: metric, type, unit, help strs
//	warning:  str
//	end:      nothing; a stream without it was cut off
//
// Series come sorted by labels, their chunks in time order without overlap.
// Chunks hold only samples inside the requested range unless the hints ask
// for DisableTrimming: then stored chunks come whole, possibly extending
// past the range, and the reader clips. The sample Select asks for that, so
// peers send chunks without decoding them; a peer that ignores the hint
// still answers correctly. A failure is a non-200 status with the
// error text as body: 4xx for a bad request (never retried), 5xx otherwise.

const wireVersion = 1

const (
	frameEnd byte = iota
	frameSeries
	frameString
	frameMetadata
	frameWarning
)

// Limits on what a decoder accepts, so a corrupt message cannot make it
// allocate without bound.
const (
	maxStringLen  = 16 << 20
	maxMatchers   = 1 << 12
	maxLabels     = 1 << 12
	maxChunks     = 1 << 20
	maxGrouping   = 1 << 12
	maxTimeoutMS  = 1 << 40
	maxHintLimits = math.MaxInt32
)

var errMalformed = errors.New("malformed message")

// request is the decoded body of any internal read request.
type request struct {
	mint, maxt     int64
	timeoutMS      uint64
	parts          shard.PartitionSet
	matchers       []*labels.Matcher
	hints          *storage.SelectHints
	name           string // label name (label_values) or metric (metadata)
	limit          int
	limitPerMetric int
}

func appendStr(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

func appendBool(b []byte, v bool) []byte {
	if v {
		return append(b, 1)
	}
	return append(b, 0)
}

func (r *request) marshal() []byte {
	b := make([]byte, 0, 256)
	b = append(b, wireVersion)
	b = binary.AppendVarint(b, r.mint)
	b = binary.AppendVarint(b, r.maxt)
	b = binary.AppendUvarint(b, r.timeoutMS)
	for _, w := range r.parts {
		b = binary.LittleEndian.AppendUint64(b, w)
	}
	b = binary.AppendUvarint(b, uint64(len(r.matchers)))
	for _, m := range r.matchers {
		b = append(b, byte(m.Type))
		b = appendStr(b, m.Name)
		b = appendStr(b, m.Value)
	}
	if h := r.hints; h != nil {
		b = append(b, 1)
		b = binary.AppendVarint(b, h.Start)
		b = binary.AppendVarint(b, h.End)
		b = binary.AppendVarint(b, h.Step)
		b = binary.AppendVarint(b, h.Range)
		b = binary.AppendUvarint(b, uint64(max(h.Limit, 0)))
		b = appendStr(b, h.Func)
		b = appendBool(b, h.By)
		b = binary.AppendUvarint(b, uint64(len(h.Grouping)))
		for _, g := range h.Grouping {
			b = appendStr(b, g)
		}
		b = binary.AppendUvarint(b, h.ShardIndex)
		b = binary.AppendUvarint(b, h.ShardCount)
		b = appendBool(b, h.DisableTrimming)
	} else {
		b = append(b, 0)
	}
	b = appendStr(b, r.name)
	b = binary.AppendUvarint(b, uint64(max(r.limit, 0)))
	b = binary.AppendUvarint(b, uint64(max(r.limitPerMetric, 0)))
	return b
}

// sliceReader decodes from a byte slice, remembering the first error.
type sliceReader struct {
	b   []byte
	err error
}

func (d *sliceReader) fail() {
	if d.err == nil {
		d.err = errMalformed
	}
}

func (d *sliceReader) byte() byte {
	if d.err != nil || len(d.b) == 0 {
		d.fail()
		return 0
	}
	c := d.b[0]
	d.b = d.b[1:]
	return c
}

func (d *sliceReader) uvarint(limit uint64) uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 || v > limit {
		d.fail()
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *sliceReader) varint() int64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Varint(d.b)
	if n <= 0 {
		d.fail()
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *sliceReader) str() string {
	n := d.uvarint(maxStringLen)
	if d.err != nil || uint64(len(d.b)) < n {
		d.fail()
		return ""
	}
	s := string(d.b[:n])
	d.b = d.b[n:]
	return s
}

func (d *sliceReader) bool() bool {
	switch d.byte() {
	case 0:
		return false
	case 1:
		return true
	}
	d.fail()
	return false
}

// unmarshalRequest decodes a request body sent by a peer.
func unmarshalRequest(b []byte) (*request, error) {
	d := &sliceReader{b: b}
	if v := d.byte(); d.err == nil && v != wireVersion {
		return nil, fmt.Errorf("unsupported request version %d: %w", v, errMalformed)
	}
	r := &request{mint: d.varint(), maxt: d.varint(), timeoutMS: d.uvarint(maxTimeoutMS)}
	if d.err == nil && len(d.b) < 8*len(r.parts) {
		d.fail()
	}
	if d.err != nil {
		return nil, d.err
	}
	for i := range r.parts {
		r.parts[i] = binary.LittleEndian.Uint64(d.b)
		d.b = d.b[8:]
	}
	n := d.uvarint(maxMatchers)
	for range n {
		t, name, value := d.byte(), d.str(), d.str()
		if d.err != nil {
			return nil, d.err
		}
		if t > byte(labels.MatchNotRegexp) {
			return nil, fmt.Errorf("matcher type %d: %w", t, errMalformed)
		}
		m, err := labels.NewMatcher(labels.MatchType(t), name, value)
		if err != nil {
			return nil, fmt.Errorf("matcher %s: %w: %w", name, errMalformed, err)
		}
		r.matchers = append(r.matchers, m)
	}
	if d.bool() {
		h := &storage.SelectHints{Start: d.varint(), End: d.varint(), Step: d.varint(), Range: d.varint()}
		h.Limit = int(d.uvarint(maxHintLimits))
		h.Func = d.str()
		h.By = d.bool()
		for range d.uvarint(maxGrouping) {
			h.Grouping = append(h.Grouping, d.str())
		}
		h.ShardIndex = d.uvarint(math.MaxUint64)
		h.ShardCount = d.uvarint(math.MaxUint64)
		h.DisableTrimming = d.bool()
		r.hints = h
	}
	r.name = d.str()
	r.limit = int(d.uvarint(maxHintLimits))
	r.limitPerMetric = int(d.uvarint(maxHintLimits))
	if d.err == nil && len(d.b) > 0 {
		d.fail()
	}
	if d.err != nil {
		return nil, d.err
	}
	return r, nil
}

// frameWriter encodes response frames. The caller wraps w in compression.
type frameWriter struct {
	w   io.Writer
	buf []byte
}

func (fw *frameWriter) flush() error {
	_, err := fw.w.Write(fw.buf)
	fw.buf = fw.buf[:0]
	return err
}

func (fw *frameWriter) series(ls labels.Labels, it chunks.Iterator) error {
	fw.buf = append(fw.buf, frameSeries)
	fw.buf = binary.AppendUvarint(fw.buf, uint64(ls.Len()))
	ls.Range(func(l labels.Label) {
		fw.buf = appendStr(fw.buf, l.Name)
		fw.buf = appendStr(fw.buf, l.Value)
	})
	// The chunk count comes first, so collect the metas.
	var metas []chunks.Meta
	for it != nil && it.Next() {
		metas = append(metas, it.At())
	}
	if it != nil && it.Err() != nil {
		return it.Err()
	}
	fw.buf = binary.AppendUvarint(fw.buf, uint64(len(metas)))
	for _, m := range metas {
		fw.buf = append(fw.buf, byte(m.Chunk.Encoding()))
		fw.buf = binary.AppendVarint(fw.buf, m.MinTime)
		fw.buf = binary.AppendUvarint(fw.buf, uint64(m.MaxTime-m.MinTime))
		b := m.Chunk.Bytes()
		fw.buf = binary.AppendUvarint(fw.buf, uint64(len(b)))
		fw.buf = append(fw.buf, b...)
	}
	return fw.flush()
}

func (fw *frameWriter) str(typ byte, s string) error {
	fw.buf = append(fw.buf, typ)
	fw.buf = appendStr(fw.buf, s)
	return fw.flush()
}

func (fw *frameWriter) metadata(metric string, m metadata.Metadata) error {
	fw.buf = append(fw.buf, frameMetadata)
	fw.buf = appendStr(fw.buf, metric)
	fw.buf = appendStr(fw.buf, string(m.Type))
	fw.buf = appendStr(fw.buf, m.Unit)
	fw.buf = appendStr(fw.buf, m.Help)
	return fw.flush()
}

func (fw *frameWriter) end() error {
	fw.buf = append(fw.buf, frameEnd)
	return fw.flush()
}

// frame is one decoded response frame.
type frame struct {
	typ    byte
	lset   labels.Labels
	chunks []chunks.Meta
	str    string // string, warning, metric of metadata
	meta   metadata.Metadata
}

// frameReader decodes response frames from the decompressed stream. Chunks
// are copied out of the stream but not decoded: samples are read only when
// the query iterates them.
type frameReader struct {
	r  *bufio.Reader
	sb labels.ScratchBuilder
}

func newFrameReader(r io.Reader) *frameReader {
	return &frameReader{r: bufio.NewReaderSize(r, 32<<10)}
}

func (fr *frameReader) uvarint(limit uint64) (uint64, error) {
	v, err := binary.ReadUvarint(fr.r)
	if err != nil {
		return 0, unexpected(err)
	}
	if v > limit {
		return 0, errMalformed
	}
	return v, nil
}

func (fr *frameReader) bytes() ([]byte, error) {
	n, err := fr.uvarint(maxStringLen)
	if err != nil {
		return nil, err
	}
	// Grow with the data actually read, so a bogus length cannot allocate
	// more than the stream holds.
	if n <= 64<<10 {
		b := make([]byte, n)
		if _, err := io.ReadFull(fr.r, b); err != nil {
			return nil, unexpected(err)
		}
		return b, nil
	}
	var out []byte
	buf := make([]byte, 64<<10)
	for n > 0 {
		k, err := io.ReadFull(fr.r, buf[:min(n, uint64(len(buf)))])
		out = append(out, buf[:k]...)
		if err != nil {
			return nil, unexpected(err)
		}
		n -= uint64(k)
	}
	return out, nil
}

func (fr *frameReader) str() (string, error) {
	b, err := fr.bytes()
	return string(b), err
}

func unexpected(err error) error {
	if errors.Is(err, io.EOF) {
		return fmt.Errorf("truncated: %w", errMalformed)
	}
	return err
}

// next decodes the next frame. After an end frame it returns io.EOF.
func (fr *frameReader) next() (frame, error) {
	typ, err := fr.r.ReadByte()
	if err != nil {
		return frame{}, unexpected(err)
	}
	f := frame{typ: typ}
	switch typ {
	case frameEnd:
		return f, io.EOF
	case frameString, frameWarning:
		f.str, err = fr.str()
		return f, err
	case frameMetadata:
		var s [4]string
		for i := range s {
			if s[i], err = fr.str(); err != nil {
				return f, err
			}
		}
		f.str = s[0]
		f.meta = metadata.Metadata{Type: model.MetricType(s[1]), Unit: s[2], Help: s[3]}
		return f, nil
	case frameSeries:
		return f, fr.series(&f)
	}
	return f, fmt.Errorf("frame type %d: %w", typ, errMalformed)
}

func (fr *frameReader) series(f *frame) error {
	n, err := fr.uvarint(maxLabels)
	if err != nil {
		return err
	}
	fr.sb.Reset()
	for range n {
		name, err := fr.str()
		if err != nil {
			return err
		}
		value, err := fr.str()
		if err != nil {
			return err
		}
		fr.sb.Add(name, value)
	}
	fr.sb.Sort()
	f.lset = fr.sb.Labels()
	if n, err = fr.uvarint(maxChunks); err != nil {
		return err
	}
	for range n {
		enc, err := fr.r.ReadByte()
		if err != nil {
			return unexpected(err)
		}
		mint, err := binary.ReadVarint(fr.r)
		if err != nil {
			return unexpected(err)
		}
		span, err := fr.uvarint(math.MaxInt64)
		if err != nil {
			return err
		}
		b, err := fr.bytes()
		if err != nil {
			return err
		}
		if !chunkenc.IsValidEncoding(chunkenc.Encoding(enc)) || mint > math.MaxInt64-int64(span) {
			return errMalformed
		}
		if k := len(f.chunks); k > 0 && mint <= f.chunks[k-1].MaxTime {
			return fmt.Errorf("overlapping chunks: %w", errMalformed)
		}
		chk, err := chunkenc.FromData(chunkenc.Encoding(enc), b)
		if err != nil {
			return fmt.Errorf("chunk: %w: %w", errMalformed, err)
		}
		f.chunks = append(f.chunks, chunks.Meta{Chunk: chk, MinTime: mint, MaxTime: mint + int64(span)})
	}
	return nil
}

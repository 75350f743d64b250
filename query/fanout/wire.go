package fanout

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math"
	"unsafe"

	"github.com/golang/snappy"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/exemplar"
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
//	name str (label name or metric) · limit uvarint · limit-per-metric uvarint ·
//	[cells: entry count uvarint · per entry: partition uvarint, cell count
//	uvarint, per cell: samples uvarint, sum u64 little-endian]
//
// The cells section (select_digest only; see digest.go) is left out when
// empty, so other requests decode on nodes that do not know it.
// where str is a uvarint length and the bytes. A response (status 200) is a
// snappy-framed stream of frames, each a type byte and its fields:
//
//	series:   label count uvarint, name/value strs, chunk count uvarint,
//	          per chunk: encoding byte, mint varint, maxt-mint uvarint, bytes str
//	string:   str (a label name or value)
//	metadata: metric, type, unit, help strs
//	warning:  str
//	end:      nothing; a stream without it was cut off
//	digest:   partition uvarint, series uvarint, sum u64 little-endian
//	same:     partition bitmap (16 × u64 little-endian)
//	          (digest and same answer select_digest; see digest.go)
//	exemplars: series label count uvarint, name/value strs, exemplar count
//	          uvarint, per exemplar: label count uvarint, name/value strs,
//	          value u64 little-endian (float bits), ts varint, has-ts byte
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
	frameDigest
	frameSame
	frameExemplars
)

// Limits on what a decoder accepts, so a corrupt message cannot make it
// allocate without bound.
const (
	maxStringLen  = 16 << 20
	maxMatchers   = 1 << 12
	maxLabels     = 1 << 12
	maxChunks     = 1 << 20
	maxExemplars  = 1 << 20
	maxGrouping   = 1 << 12
	maxTimeoutMS  = 1 << 40
	maxHintLimits = math.MaxInt32
	// maxCellsPerPart is more than shard.PartitionCells answers.
	maxCellsPerPart = 1 << 12
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
	cells          []partCells // the asking node's cell digests (select_digest)
}

// partCells are one partition's cell digests over the request's range.
type partCells struct {
	part  uint16
	cells []shard.CellDigest
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
	if len(r.cells) > 0 {
		b = binary.AppendUvarint(b, uint64(len(r.cells)))
		for _, pc := range r.cells {
			b = binary.AppendUvarint(b, uint64(pc.part))
			b = binary.AppendUvarint(b, uint64(len(pc.cells)))
			for _, c := range pc.cells {
				b = binary.AppendUvarint(b, c.Samples)
				b = binary.LittleEndian.AppendUint64(b, c.Sum)
			}
		}
	}
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
		n := d.uvarint(shard.NumPartitions)
		for range n {
			pc := partCells{part: uint16(d.uvarint(shard.NumPartitions - 1))}
			k := d.uvarint(maxCellsPerPart)
			for range k {
				c := shard.CellDigest{Samples: d.uvarint(math.MaxUint64)}
				if d.err == nil && len(d.b) < 8 {
					d.fail()
				}
				if d.err != nil {
					return nil, d.err
				}
				c.Sum = binary.LittleEndian.Uint64(d.b)
				d.b = d.b[8:]
				pc.cells = append(pc.cells, c)
			}
			if d.err != nil {
				return nil, d.err
			}
			r.cells = append(r.cells, pc)
		}
	}
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
	w     io.Writer
	buf   []byte
	metas []chunks.Meta // scratch of series
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
	metas := fw.metas[:0]
	if it != nil {
		var err error
		if metas, err = appendMetas(metas, it); err != nil {
			return err
		}
	}
	fw.metas = metas
	fw.buf = binary.AppendUvarint(fw.buf, uint64(len(metas)))
	fw.buf = appendWireChunks(fw.buf, metas)
	clear(metas) // keep no chunk alive
	return fw.flush()
}

// appendWireChunks appends metas in the chunks part of a series frame (see
// wireChunks).
func appendWireChunks(buf []byte, metas []chunks.Meta) []byte {
	for _, m := range metas {
		buf = append(buf, byte(m.Chunk.Encoding()))
		buf = binary.AppendVarint(buf, m.MinTime)
		buf = binary.AppendUvarint(buf, uint64(m.MaxTime-m.MinTime))
		buf = binary.AppendUvarint(buf, uint64(shard.ChunkSize(m.Chunk)))
		buf = shard.AppendChunkBytes(buf, m.Chunk)
	}
	return buf
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

func (fw *frameWriter) digest(part uint16, pd partDigest) error {
	fw.buf = append(fw.buf, frameDigest)
	fw.buf = binary.AppendUvarint(fw.buf, uint64(part))
	fw.buf = binary.AppendUvarint(fw.buf, pd.series)
	fw.buf = binary.LittleEndian.AppendUint64(fw.buf, pd.sum)
	return fw.flush()
}

func (fw *frameWriter) same(ps *shard.PartitionSet) error {
	fw.buf = append(fw.buf, frameSame)
	for _, w := range ps {
		fw.buf = binary.LittleEndian.AppendUint64(fw.buf, w)
	}
	return fw.flush()
}

func (fw *frameWriter) end() error {
	fw.buf = append(fw.buf, frameEnd)
	return fw.flush()
}

// frame is one decoded response frame.
type frame struct {
	typ  byte
	lset labels.Labels
	// chunks holds the series' chunks as sent (encoding byte, mint, span,
	// bytes each), checked by the reader and still inside the response;
	// see wireChunks.
	chunks []byte
	str    string // string, warning, metric of metadata
	meta   metadata.Metadata
	part   uint16 // digest
	digest partDigest
	parts  shard.PartitionSet // same
	// exemplars of the series lset (exemplars frame)
	exemplars []exemplar.Exemplar
}

// frameReader decodes response frames from a decompressed response held in
// memory. A series keeps its chunk bytes as a sub-slice of the response:
// nothing is copied, and samples are decoded only when a query iterates
// them. The response must not be modified while its frames are in use.
type frameReader struct {
	d  sliceReader
	sb labels.ScratchBuilder
}

func newFrameReader(b []byte) *frameReader { return &frameReader{d: sliceReader{b: b}} }

// bytes returns the next length-prefixed field, not copied.
func (d *sliceReader) bytes() []byte {
	n := d.uvarint(maxStringLen)
	if d.err != nil || uint64(len(d.b)) < n {
		d.fail()
		return nil
	}
	b := d.b[:n:n]
	d.b = d.b[n:]
	return b
}

// next decodes the next frame. After an end frame it returns io.EOF.
func (fr *frameReader) next() (frame, error) {
	d := &fr.d
	if d.err != nil {
		return frame{}, d.err
	}
	if len(d.b) == 0 {
		return frame{}, fmt.Errorf("truncated: %w", errMalformed)
	}
	f := frame{typ: d.byte()}
	switch f.typ {
	case frameEnd:
		return f, io.EOF
	case frameString, frameWarning:
		f.str = d.str()
	case frameMetadata:
		var s [4]string
		for i := range s {
			s[i] = d.str()
		}
		f.str = s[0]
		f.meta = metadata.Metadata{Type: model.MetricType(s[1]), Unit: s[2], Help: s[3]}
	case frameSeries:
		fr.series(&f)
	case frameExemplars:
		fr.exemplars(&f)
	case frameSame:
		if len(d.b) < 8*len(f.parts) {
			d.fail()
			break
		}
		for i := range f.parts {
			f.parts[i] = binary.LittleEndian.Uint64(d.b)
			d.b = d.b[8:]
		}
	case frameDigest:
		f.part = uint16(d.uvarint(shard.NumPartitions - 1))
		f.digest.series = d.uvarint(math.MaxUint64)
		if d.err == nil && len(d.b) < 8 {
			d.fail()
		}
		if d.err == nil {
			f.digest.sum = binary.LittleEndian.Uint64(d.b)
			d.b = d.b[8:]
		}
	default:
		return f, fmt.Errorf("frame type %d: %w", f.typ, errMalformed)
	}
	if d.err != nil {
		return f, fmt.Errorf("truncated or corrupt frame: %w", d.err)
	}
	return f, nil
}

// labels decodes a label set: a count and name/value pairs.
func (fr *frameReader) labels() labels.Labels {
	d := &fr.d
	n := d.uvarint(maxLabels)
	fr.sb.Reset()
	for range n {
		name, value := d.bytes(), d.bytes()
		if d.err != nil {
			return labels.EmptyLabels()
		}
		// Labels copies the strings out (one allocation for the series
		// under stringlabels); with other label builds they keep pointing
		// into the response, which is never modified.
		fr.sb.Add(unsafe.String(unsafe.SliceData(name), len(name)), unsafe.String(unsafe.SliceData(value), len(value)))
	}
	fr.sb.Sort()
	return fr.sb.Labels()
}

func (fr *frameReader) series(f *frame) {
	d := &fr.d
	f.lset = fr.labels()
	if d.err != nil {
		return
	}
	// Check the chunks now, so that iterating them cannot fail on framing.
	n := d.uvarint(maxChunks)
	start := d.b
	prevMaxt := int64(math.MinInt64)
	for i := range n {
		enc := chunkenc.Encoding(d.byte())
		mint := d.varint()
		span := d.uvarint(math.MaxInt64)
		b := d.bytes()
		if d.err != nil {
			return
		}
		// Two bytes hold the sample count of every encoding; shorter makes
		// the decoders panic. Past that they trust the peer's bytes.
		if len(b) < 2 || !chunkenc.IsValidEncoding(enc) || int(enc) >= numEncodings || mint > math.MaxInt64-int64(span) {
			d.fail()
			return
		}
		if i > 0 && mint <= prevMaxt {
			d.err = fmt.Errorf("overlapping chunks: %w", errMalformed)
			return
		}
		prevMaxt = mint + int64(span)
	}
	f.chunks = start[: len(start)-len(d.b) : len(start)-len(d.b)]
}

// numEncodings bounds the chunk encodings a reader keeps a chunk for.
const numEncodings = 8

// wireChunks walks the chunks of a series frame, as checked by the reader.
type wireChunks struct{ b []byte }

// next returns the next chunk's encoding, span and bytes; ok is false at
// the end.
func (w *wireChunks) next() (enc chunkenc.Encoding, mint, maxt int64, b []byte, ok bool) {
	if len(w.b) == 0 {
		return 0, 0, 0, nil, false
	}
	d := sliceReader{b: w.b}
	enc = chunkenc.Encoding(d.byte())
	mint = d.varint()
	maxt = mint + int64(d.uvarint(math.MaxInt64))
	b = d.bytes()
	w.b = d.b
	return enc, mint, maxt, b, d.err == nil
}

// metas decodes the chunks of a series frame into chunk metas.
func (f *frame) metas() ([]chunks.Meta, error) {
	var out []chunks.Meta
	w := wireChunks{f.chunks}
	for {
		enc, mint, maxt, b, ok := w.next()
		if !ok {
			return out, nil
		}
		chk, err := chunkenc.FromData(enc, b)
		if err != nil {
			return nil, fmt.Errorf("chunk: %w: %w", errMalformed, err)
		}
		out = append(out, chunks.Meta{Chunk: chk, MinTime: mint, MaxTime: maxt})
	}
}

// unframe decodes a snappy-framed stream (github.com/google/snappy
// framing_format.txt, as snappy.Writer writes it) in one allocation of the
// decoded size, checking each block's CRC like snappy.Reader does. Reading
// it through snappy.Reader would copy everything once more and allocate per
// call two 64 KiB buffers.
func unframe(src []byte) ([]byte, error) {
	const (
		typeCompressed   = 0x00
		typeUncompressed = 0x01
		typeStreamID     = 0xff
		maxBlock         = 65536
	)
	// Pass one checks the framing and sums the decoded sizes.
	size := 0
	for b, first := src, true; len(b) > 0; first = false {
		if len(b) < 4 {
			return nil, errMalformed
		}
		typ, n := b[0], int(b[1])|int(b[2])<<8|int(b[3])<<16
		if len(b) < 4+n || first && typ != typeStreamID {
			return nil, errMalformed
		}
		body := b[4 : 4+n]
		b = b[4+n:]
		switch {
		case typ == typeCompressed || typ == typeUncompressed:
			if n < 4 {
				return nil, errMalformed
			}
			k := n - 4
			if typ == typeCompressed {
				var err error
				if k, err = snappy.DecodedLen(body[4:]); err != nil {
					return nil, fmt.Errorf("snappy: %w: %w", errMalformed, err)
				}
			}
			if k > maxBlock {
				return nil, errMalformed
			}
			size += k
		case typ == typeStreamID:
			if string(body) != "sNaPpY" {
				return nil, errMalformed
			}
		case typ < 0x80: // reserved unskippable
			return nil, errMalformed
		}
	}
	out := make([]byte, size)
	off := 0
	for b := src; len(b) > 0; {
		typ, n := b[0], int(b[1])|int(b[2])<<8|int(b[3])<<16
		body := b[4 : 4+n]
		b = b[4+n:]
		if typ != typeCompressed && typ != typeUncompressed {
			continue
		}
		sum, data := binary.LittleEndian.Uint32(body), body[4:]
		var block []byte
		if typ == typeCompressed {
			k, _ := snappy.DecodedLen(data)
			var err error
			if block, err = snappy.Decode(out[off:off+k], data); err != nil {
				return nil, fmt.Errorf("snappy: %w: %w", errMalformed, err)
			}
		} else {
			block = out[off : off+len(data)]
			copy(block, data)
		}
		if c := crc32.Update(0, castagnoli, block); (c>>15|c<<17)+0xa282ead8 != sum {
			return nil, fmt.Errorf("snappy checksum: %w", errMalformed)
		}
		off += len(block)
	}
	return out, nil
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

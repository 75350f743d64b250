package shard

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/prometheus/prometheus/model/labels"
)

// NumPartitions is the fixed number of partitions series are hashed into.
// It never changes for the life of a cluster: partitions are the unit the
// cluster assigns to nodes and moves between them.
const NumPartitions = 1024

// Key prefixes. Each key starts with one tag byte; see docs/storage.md.
const (
	tagSeries   byte = 'S' // S | part u16 | ref u64                      -> labels
	tagChunk    byte = 'C' // C | part u16 | ref u64 | maxt | mint | seq  -> chunk
	tagWAL      byte = 'W' // W | seq u64                                  -> write-ahead record
	tagMetadata byte = 'M' // M | metric family name                      -> metadata
	tagMeta     byte = 'X' // X | name                                     -> engine state
)

var errBadKey = errors.New("malformed key")

// PartitionOf returns the partition of a series. It uses the stable labels
// hash so every node and every version of Kiln agree on it.
func PartitionOf(ls labels.Labels) uint16 {
	return uint16(labels.StableHash(ls) % NumPartitions)
}

// orderedTime maps a signed millisecond timestamp to an unsigned value whose
// big-endian bytes sort in time order (negative timestamps included).
func orderedTime(t int64) uint64 { return uint64(t) ^ (1 << 63) }

func fromOrderedTime(u uint64) int64 { return int64(u ^ (1 << 63)) }

func seriesKey(part uint16, ref uint64) []byte {
	k := make([]byte, 11)
	k[0] = tagSeries
	binary.BigEndian.PutUint16(k[1:], part)
	binary.BigEndian.PutUint64(k[3:], ref)
	return k
}

func parseSeriesKey(k []byte) (part uint16, ref uint64, err error) {
	if len(k) != 11 || k[0] != tagSeries {
		return 0, 0, fmt.Errorf("series key %x: %w", k, errBadKey)
	}
	return binary.BigEndian.Uint16(k[1:]), binary.BigEndian.Uint64(k[3:]), nil
}

const chunkKeyLen = 1 + 2 + 8 + 8 + 8 + 8

// chunkKey orders a series' chunks by their last timestamp, so a query that
// starts at mint seeks straight to the first chunk that can hold data >= mint.
func chunkKey(part uint16, ref uint64, mint, maxt int64, seq uint64) []byte {
	k := make([]byte, chunkKeyLen)
	k[0] = tagChunk
	binary.BigEndian.PutUint16(k[1:], part)
	binary.BigEndian.PutUint64(k[3:], ref)
	binary.BigEndian.PutUint64(k[11:], orderedTime(maxt))
	binary.BigEndian.PutUint64(k[19:], orderedTime(mint))
	binary.BigEndian.PutUint64(k[27:], seq)
	return k
}

// chunkKeyInfo is a decoded chunk key.
type chunkKeyInfo struct {
	part       uint16
	ref        uint64
	mint, maxt int64
	seq        uint64
}

func parseChunkKey(k []byte) (chunkKeyInfo, error) {
	if len(k) != chunkKeyLen || k[0] != tagChunk {
		return chunkKeyInfo{}, fmt.Errorf("chunk key %x: %w", k, errBadKey)
	}
	return chunkKeyInfo{
		part: binary.BigEndian.Uint16(k[1:]),
		ref:  binary.BigEndian.Uint64(k[3:]),
		maxt: fromOrderedTime(binary.BigEndian.Uint64(k[11:])),
		mint: fromOrderedTime(binary.BigEndian.Uint64(k[19:])),
		seq:  binary.BigEndian.Uint64(k[27:]),
	}, nil
}

// seriesChunkPrefix is the prefix of all chunks of one series.
func seriesChunkPrefix(part uint16, ref uint64) []byte {
	k := make([]byte, 11)
	k[0] = tagChunk
	binary.BigEndian.PutUint16(k[1:], part)
	binary.BigEndian.PutUint64(k[3:], ref)
	return k
}

// seriesChunkSeek is the first possible key of a series' chunk ending at or
// after t.
func seriesChunkSeek(part uint16, ref uint64, t int64) []byte {
	k := make([]byte, 19)
	copy(k, seriesChunkPrefix(part, ref))
	binary.BigEndian.PutUint64(k[11:], orderedTime(t))
	return k
}

// partitionPrefix is the prefix of all keys of one kind in one partition.
func partitionPrefix(tag byte, part uint16) []byte {
	return []byte{tag, byte(part >> 8), byte(part)}
}

func walKey(seq uint64) []byte {
	k := make([]byte, 9)
	k[0] = tagWAL
	binary.BigEndian.PutUint64(k[1:], seq)
	return k
}

func metadataKey(name string) []byte { return append([]byte{tagMetadata}, name...) }

// encodeLabels writes labels as uvarint count, then uvarint-length-prefixed
// name and value strings.
func encodeLabels(b []byte, ls labels.Labels) []byte {
	b = binary.AppendUvarint(b, uint64(ls.Len()))
	ls.Range(func(l labels.Label) {
		b = binary.AppendUvarint(b, uint64(len(l.Name)))
		b = append(b, l.Name...)
		b = binary.AppendUvarint(b, uint64(len(l.Value)))
		b = append(b, l.Value...)
	})
	return b
}

var errBadLabels = errors.New("malformed labels record")

// decodeLabels is the inverse of encodeLabels. It rejects unsorted or
// duplicate names so a corrupt record cannot build an invalid series.
func decodeLabels(b []byte, sb *labels.ScratchBuilder) (labels.Labels, error) {
	n, k := binary.Uvarint(b)
	if k <= 0 || n > uint64(len(b)) {
		return labels.EmptyLabels(), errBadLabels
	}
	b = b[k:]
	sb.Reset()
	prev := ""
	for i := uint64(0); i < n; i++ {
		var name, value string
		var ok bool
		if name, b, ok = readString(b); !ok {
			return labels.EmptyLabels(), errBadLabels
		}
		if value, b, ok = readString(b); !ok {
			return labels.EmptyLabels(), errBadLabels
		}
		if i > 0 && name <= prev {
			return labels.EmptyLabels(), errBadLabels
		}
		prev = name
		sb.Add(name, value)
	}
	if len(b) != 0 {
		return labels.EmptyLabels(), errBadLabels
	}
	return sb.Labels(), nil
}

func readString(b []byte) (string, []byte, bool) {
	n, k := binary.Uvarint(b)
	if k <= 0 || n > uint64(len(b)-k) {
		return "", nil, false
	}
	return string(b[k : k+int(n)]), b[k+int(n):], true
}

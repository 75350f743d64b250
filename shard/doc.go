// Package shard is Kiln's local storage engine: series, an inverted index and
// compressed sample chunks kept in badger v4.
//
// The design follows the Prometheus head block: recent samples are appended to
// open in-memory chunks (Gorilla/XOR2 for floats, chunkenc histogram chunks
// for native histograms), every committed batch is first made durable as a
// record in Kiln's own append-only write-ahead segment files (wal/ in the
// data directory; new series records go to badger first), and a background
// flush rotates the segment, persists chunks and then deletes the segments
// they cover as whole files. The inverted index lives in memory and is
// rebuilt from the persisted series records at start-up.
//
// Every series belongs to one of NumPartitions partitions derived from a
// stable hash of its labels. Series records and chunks are keyed by partition
// first, so one partition can be streamed out, copied in and dropped as a
// unit; the in-memory index is derived state. docs/storage.md describes the
// key layout byte by byte.
//
// DB implements storage.Storage, so the Prometheus PromQL engine runs on it
// directly.
package shard

// Package query groups Kiln's read path: the PromQL engine wiring and the
// Prometheus-compatible HTTP API that serves it (subpackage api). The
// storage it reads from is a storage.SampleAndChunkQueryable supplied by the
// caller, so the same code runs over a single shard or a cluster fan-out.
package query

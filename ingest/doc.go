// Package ingest groups Kiln's write-path protocols, one subpackage per wire
// format, after the layout of VictoriaMetrics' app/vminsert:
//
//   - ingest/remotewrite accepts Prometheus Remote-Write 1.0 and 2.0 pushes
//     (POST /api/v1/write).
//   - ingest/scrape pulls Prometheus exposition formats from targets.
//
// Every subpackage decodes its format itself and appends through
// storage.AppendableV2, so the shard layer sees one append API whatever the
// source. Subpackages never import each other; shared helpers belong in the
// storage layer, not here. Each protocol bounds its own in-flight work and
// answers "retry later" (HTTP 503) rather than queueing without limit, so
// backpressure reaches the sender instead of Kiln's heap.
package ingest

// Package replicate is Kiln's replicated write path: a storage.AppendableV2
// that routes every sample to the owners of its partition (shard.PartitionOf
// -> ring owners), appends at once to the local storage when this node is an
// owner, forwards the rest to peers over POST /internal/v1/write on Commit,
// and acknowledges only when every partition touched has a write quorum of
// durable copies. Owners that failed or were down get hints: the batch
// meant for them, fsynced under Config.HintsDir before Commit returns and
// replayed by Run once gossip reports them alive again.
//
// # Wire format
//
// A forwarded batch is columnar and zstd-compressed (see WIRE.md for the
// byte layout): a symbol table of label strings, series definitions as
// symbol indexes, then columns of series ids, timestamps (delta-encoded) and
// values. Each sender keeps a per-peer series cache: a series is defined
// (labels plus a base value) once per cache generation and later referenced
// by a small integer id, and integral values are sent as their difference
// from the base. The receiver keeps the matching table per sender; when it
// does not know an id (it restarted, or the sender reset) it answers 409 and
// the sender resets its cache and resends the batch self-contained. Hints
// are always self-contained, so they replay after restarts of either side.
//
// # Consistency
//
// Acks needed per partition: one = 1, quorum = floor(RF/2)+1, all = RF; the
// local commit counts as one ack when this node owns the partition. A
// Commit that misses quorum returns an error wrapping ErrUnavailable (HTTP
// 503, the sender retries; retries are idempotent because the storage
// accepts exact duplicates). Samples a peer refused (e.g. a conflicting
// duplicate) come back in a *RejectedError so that the remote-write handler
// can answer 400 for exactly those samples.
package replicate

// Package cluster is one Kiln node's view of the cluster: who the members
// are (gossip), the small metadata every node must agree on (Raft), and the
// partition ring computed from it. Nothing here is on the sample path:
// Ring and Alive read local, atomically published state and never wait on
// Raft, so a lost quorum stops membership changes but not writes or reads.
//
// Membership. Every node runs hashicorp/memberlist on one gossip port (TCP
// and UDP) with memberlist's LAN timings (failures detected in a few
// seconds). A node gossips its API address, Raft address, zone and whether
// its Raft holds state. Config.ClusterName is memberlist's label, so gossip
// from another cluster is refused. Alive reports gossip liveness (suspect
// counts as alive).
//
// Bootstrap. A node restarted with Raft state just starts Raft. A new node
// with Peers first joins gossip (retrying until one peer answers). It never
// bootstraps while a visible member reports Raft state: that cluster's
// leader adds it. Once BootstrapExpect members (itself included) are visible
// and none has state, the BootstrapExpect lowest-named of them bootstrap
// with the identical voter configuration, which Raft accepts from each, so
// nodes started together with each other as peers form one cluster. A node
// without Peers and BootstrapExpect 1 is a cluster of one at once: the same
// code path, not a separate mode.
//
// What Raft holds (State): the cluster ID (random, set by the first leader),
// the replication factor (from that leader's config), the assignment epoch
// and the member list as the ring sees it. Log entries are a Command
// envelope (type + JSON payload) dispatched to registered Handlers, so later
// features add a State field, a CommandType and a Handler. Snapshots are the
// State as JSON. The log lives in DataDir/raft-log (badger, see raftstore),
// snapshots in DataDir/snapshots.
//
// Epochs. Every applied change to the member list increments the epoch; the
// FSM then computes the ring (cluster/ring, a pure function of members,
// replication factor and epoch), so every node that applied the same entry
// serves the same owners at the same epoch.
//
// Reconciliation. The leader, on gossip events and every ReconcileInterval,
// adds alive gossip members to the ring, updates changed addresses, and keeps
// every ring member in the Raft configuration: up to 3 voters (5 from 7
// members), the rest non-voters, preferring current voters; a voter that
// gossip reports dead is replaced by an alive non-voter, then demoted, so
// quorum survives further failures. A member gossip reports dead or
// unreachable for DeadNodeTimeout is removed (as is a drained leaver once
// it left gossip), then taken out of the Raft configuration.
//
// Assignment. Per partition the State keeps the settled owners (complete
// copies; reads use them: Ring.OwnerIndexes), the target (the placement of
// the current members minus leavers) and the target owners that reported
// ready. Writes go to settled ∪ target (Ring.WriteOwnerIndexes). A new
// target owner fetches the partition from an alive settled owner through
// Config.Mover and reports PartitionReady (forwarded to the leader over
// ApplyPath when it does not lead); once every target owner is settled or
// ready, settled := target in one step, so a read set never mixes old and
// new owners and R + W > RF keeps holding; then the old owners drop it after
// DropDelay. A removed node stays settled (not alive, so reads skip it)
// until the new owners are ready; one rejoining under its name is a new
// member whose old copies count for nothing. A partition none of whose
// settled owners is a member any more (and a new cluster) settles at once.
// Reports are idempotent: one for a partition whose target changed after the
// reported epoch (TargetEpoch) is ignored and the copy fetched again.
//
// Catch-up race. A write coordinated on a node still on the previous epoch
// skips the new owner; a copy taken before that write reached an old owner
// would miss it. So a node fetches only once every alive member gossips
// (node metadata) that it applied the ring's epoch, plus one
// ReconcileInterval for writes in flight (after 30 ReconcileIntervals a
// member that never catches up is logged and ignored).
package cluster

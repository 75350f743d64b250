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
// quorum survives further failures. Dead members stay in the ring (a later
// dead-node timeout removes them).
package cluster

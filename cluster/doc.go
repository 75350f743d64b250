// Package cluster will hold gossip membership (memberlist), the Raft metadata
// state machine and the partition ring. It is empty until the cluster core
// lands; a single node is a cluster of one.
package cluster

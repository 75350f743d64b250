package cluster

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync/atomic"

	"github.com/hashicorp/raft"

	"github.com/kilnhq/kiln/cluster/ring"
)

// ErrUnknownCommand is returned by Apply for a command type without handler.
var ErrUnknownCommand = errors.New("cluster: unknown command type")

// ErrBadCommand wraps a command whose payload a handler rejects.
var ErrBadCommand = errors.New("cluster: bad command")

// State is everything Raft holds. It is immutable once published: handlers
// change a clone, and the FSM swaps the pointer, so readers never lock and a
// snapshot only keeps the pointer. A later feature adds a field here (and to
// clone), a CommandType and a Handler.
type State struct {
	ClusterID         string        `json:"cluster_id"`
	ReplicationFactor int           `json:"replication_factor"`
	Epoch             uint64        `json:"epoch"`
	Members           []ring.Member `json:"members"` // sorted by name
	// Leaving are members that asked to leave (sorted): out of every
	// target, still settled owners (and fetch sources) until others hold
	// their partitions.
	Leaving []string `json:"leaving,omitempty"`
	// Former are removed members still named as settled owners (sorted by
	// name): not sources, kept until the new owners are ready.
	Former []ring.Member `json:"former,omitempty"`
	// Partitions is the assignment, NumPartitions entries once the first
	// member is known. Handlers replace it (copy on write), never change
	// it in place: published states share it.
	Partitions Assignment `json:"assignment,omitzero"`
}

func (s *State) clone() *State {
	c := *s
	c.Members = slices.Clone(s.Members)
	c.Leaving = slices.Clone(s.Leaving)
	c.Former = slices.Clone(s.Former)
	return &c
}

// CommandType names a handler.
type CommandType string

// The commands of the cluster core.
const (
	// CmdInit sets the cluster ID and replication factor once, on the first
	// leader after bootstrap; later inits are ignored.
	CmdInit CommandType = "init"
	// CmdUpsertMembers adds members or updates their address and zone.
	CmdUpsertMembers CommandType = "upsert_members"
	// CmdRemoveMembers removes members (dead past the timeout, or drained
	// after leaving) from the members and every target.
	CmdRemoveMembers CommandType = "remove_members"
	// CmdLeave takes a member out of every target; it stays a settled
	// owner until the new owners are ready.
	CmdLeave CommandType = "leave"
	// CmdPartitionReady reports that a node holds complete copies of
	// partitions it is a target owner of.
	CmdPartitionReady CommandType = "partition_ready"
)

// Command is the envelope of every Raft log entry the FSM applies.
type Command struct {
	Type    CommandType     `json:"type"`
	Payload json.RawMessage `json:"payload,omitempty"`
}

// Handler applies a payload to s, a private clone it may change. It must be
// deterministic: every node applies the same entries to the same state.
// Returning an error leaves the state unchanged.
type Handler func(s *State, payload json.RawMessage) error

type initPayload struct {
	ClusterID         string `json:"cluster_id"`
	ReplicationFactor int    `json:"replication_factor"`
}

type upsertPayload struct {
	Members []ring.Member `json:"members"`
}

func applyInit(s *State, payload json.RawMessage) error {
	var p initPayload
	if err := json.Unmarshal(payload, &p); err != nil {
		return err
	}
	if p.ClusterID == "" || p.ReplicationFactor < 1 {
		return errors.New("init needs a cluster id and a replication factor >= 1")
	}
	if s.ClusterID == "" {
		s.ClusterID, s.ReplicationFactor = p.ClusterID, p.ReplicationFactor
		retarget(s)
	}
	return nil
}

func applyUpsertMembers(s *State, payload json.RawMessage) error {
	var p upsertPayload
	if err := json.Unmarshal(payload, &p); err != nil {
		return err
	}
	for _, m := range p.Members {
		if m.Name == "" {
			return errors.New("member without name")
		}
	}
	ensureAssigned(s)
	changed := false
	for _, m := range p.Members {
		i, found := slices.BinarySearchFunc(s.Members, m.Name, func(a ring.Member, n string) int { return strings.Compare(a.Name, n) })
		switch {
		case !found:
			s.Members = slices.Insert(s.Members, i, m)
			forget(s, m.Name) // a removed node rejoining: its old copies are stale
			changed = true
		case s.Members[i] != m:
			s.Members[i] = m
			changed = true
		}
	}
	if changed {
		s.Epoch++
		retarget(s)
	}
	return nil
}

// fsm is the raft.FSM. Apply, Snapshot and Restore run on Raft's FSM
// goroutine; State() and the ring are read from anywhere.
type fsm struct {
	handlers map[CommandType]Handler
	state    atomic.Pointer[State]
	// onChange runs after each state change on the FSM goroutine: the
	// Cluster rebuilds the ring there, so it is current before Apply returns.
	onChange func(old, cur *State)
}

func newFSM(onChange func(old, cur *State)) *fsm {
	f := &fsm{
		handlers: map[CommandType]Handler{
			CmdInit:           applyInit,
			CmdUpsertMembers:  applyUpsertMembers,
			CmdRemoveMembers:  applyRemoveMembers,
			CmdLeave:          applyLeave,
			CmdPartitionReady: applyPartitionReady,
		},
		onChange: onChange,
	}
	f.state.Store(&State{})
	return f
}

// register adds a handler; it must be called before Raft starts.
func (f *fsm) register(t CommandType, h Handler) { f.handlers[t] = h }

// State returns the current state; it must not be changed.
func (f *fsm) State() *State { return f.state.Load() }

// Apply returns nil or an error, which Raft hands to the ApplyFuture.
func (f *fsm) Apply(l *raft.Log) any {
	if l.Type != raft.LogCommand {
		return nil
	}
	var c Command
	if err := json.Unmarshal(l.Data, &c); err != nil {
		return fmt.Errorf("%w: %w", ErrBadCommand, err)
	}
	h, ok := f.handlers[c.Type]
	if !ok {
		return fmt.Errorf("%w %q", ErrUnknownCommand, c.Type)
	}
	old := f.state.Load()
	next := old.clone()
	if err := h(next, c.Payload); err != nil {
		return fmt.Errorf("%w %s: %w", ErrBadCommand, c.Type, err)
	}
	f.set(old, next)
	return nil
}

func (f *fsm) set(old, next *State) {
	f.state.Store(next)
	if f.onChange != nil {
		f.onChange(old, next)
	}
}

// Snapshot keeps the immutable state pointer; Persist encodes it.
func (f *fsm) Snapshot() (raft.FSMSnapshot, error) { return fsmSnapshot{f.state.Load()}, nil }

// Restore replaces the state with a snapshot's.
func (f *fsm) Restore(rc io.ReadCloser) error {
	defer func() { _ = rc.Close() }()
	var s State
	if err := json.NewDecoder(rc).Decode(&s); err != nil {
		return fmt.Errorf("cluster: restore snapshot: %w", err)
	}
	slices.SortFunc(s.Members, func(a, b ring.Member) int { return strings.Compare(a.Name, b.Name) })
	slices.SortFunc(s.Former, func(a, b ring.Member) int { return strings.Compare(a.Name, b.Name) })
	slices.Sort(s.Leaving)
	ensureAssigned(&s) // a snapshot from before assignments: what it owns is settled
	f.set(f.state.Load(), &s)
	return nil
}

type fsmSnapshot struct{ s *State }

func (s fsmSnapshot) Persist(sink raft.SnapshotSink) error {
	if err := json.NewEncoder(sink).Encode(s.s); err != nil {
		_ = sink.Cancel()
		return fmt.Errorf("cluster: persist snapshot: %w", err)
	}
	return sink.Close()
}

func (fsmSnapshot) Release() {}

// encodeCommand builds a log entry for t with payload p.
func encodeCommand(t CommandType, p any) ([]byte, error) {
	raw, err := json.Marshal(p)
	if err != nil {
		return nil, err
	}
	return json.Marshal(Command{Type: t, Payload: raw})
}

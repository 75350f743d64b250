package cluster

import (
	"bytes"
	"encoding/json"
	"io"
	"testing"

	"github.com/hashicorp/raft"
	"github.com/stretchr/testify/require"

	"github.com/kilnhq/kiln/cluster/ring"
)

func applyCmd(t *testing.T, f *fsm, typ CommandType, payload any) any {
	t.Helper()
	data, err := encodeCommand(typ, payload)
	require.NoError(t, err)
	return f.Apply(&raft.Log{Type: raft.LogCommand, Data: data})
}

func TestFSMMembersBumpTheEpochOnlyWhenTheyChange(t *testing.T) {
	f := newFSM(nil)
	require.Nil(t, applyCmd(t, f, CmdInit, initPayload{ClusterID: "c1", ReplicationFactor: 3}))
	require.Nil(t, applyCmd(t, f, CmdInit, initPayload{ClusterID: "c2", ReplicationFactor: 1}))
	require.Equal(t, "c1", f.State().ClusterID, "a second init is ignored")
	require.Equal(t, 3, f.State().ReplicationFactor)

	require.Nil(t, applyCmd(t, f, CmdUpsertMembers, upsertPayload{Members: []ring.Member{{Name: "b", Addr: "b:1"}, {Name: "a", Addr: "a:1"}}}))
	require.Equal(t, uint64(1), f.State().Epoch)
	require.Equal(t, []ring.Member{{Name: "a", Addr: "a:1"}, {Name: "b", Addr: "b:1"}}, f.State().Members)

	require.Nil(t, applyCmd(t, f, CmdUpsertMembers, upsertPayload{Members: []ring.Member{{Name: "a", Addr: "a:1"}}}))
	require.Equal(t, uint64(1), f.State().Epoch, "no change, no new epoch")

	before := f.State()
	require.Nil(t, applyCmd(t, f, CmdUpsertMembers, upsertPayload{Members: []ring.Member{{Name: "a", Addr: "a:2", Zone: "z"}}}))
	require.Equal(t, uint64(2), f.State().Epoch)
	require.Equal(t, ring.Member{Name: "a", Addr: "a:2", Zone: "z"}, f.State().Members[0])
	require.Equal(t, "a:1", before.Members[0].Addr, "published states are never changed")
}

func TestFSMRejectsBadCommandsWithoutChangingState(t *testing.T) {
	f := newFSM(nil)
	require.Nil(t, applyCmd(t, f, CmdInit, initPayload{ClusterID: "c1", ReplicationFactor: 3}))
	before := f.State()

	err, _ := applyCmd(t, f, "no_such_command", nil).(error)
	require.ErrorIs(t, err, ErrUnknownCommand)
	err, _ = applyCmd(t, f, CmdUpsertMembers, upsertPayload{Members: []ring.Member{{Name: "a"}, {Name: ""}}}).(error)
	require.ErrorIs(t, err, ErrBadCommand)
	err, _ = f.Apply(&raft.Log{Type: raft.LogCommand, Data: []byte("{")}).(error)
	require.ErrorIs(t, err, ErrBadCommand)
	require.Same(t, before, f.State())
}

func TestFSMRegisteredHandlerExtendsTheState(t *testing.T) {
	f := newFSM(nil)
	f.register("set_rf", func(s *State, p json.RawMessage) error { return json.Unmarshal(p, &s.ReplicationFactor) })
	require.Nil(t, applyCmd(t, f, "set_rf", 2))
	require.Equal(t, 2, f.State().ReplicationFactor)
}

func TestFSMSnapshotRestoreRoundTrip(t *testing.T) {
	var rings []*ring.Ring
	f := newFSM(nil)
	require.Nil(t, applyCmd(t, f, CmdInit, initPayload{ClusterID: "c1", ReplicationFactor: 2}))
	require.Nil(t, applyCmd(t, f, CmdUpsertMembers, upsertPayload{Members: []ring.Member{
		{Name: "n1", Addr: "10.0.0.1:9364", Zone: "a"}, {Name: "n2", Addr: "10.0.0.2:9364", Zone: "b"}, {Name: "n3", Addr: "10.0.0.3:9364"},
	}}))
	require.Nil(t, applyCmd(t, f, CmdUpsertMembers, upsertPayload{Members: []ring.Member{{Name: "n4", Addr: "10.0.0.4:9364"}}}))
	// Moves in flight: n4 is ready for some partitions, n3 is leaving.
	fetch := moveRing(t, f).PartitionsToFetch("n4")
	require.NotEmpty(t, fetch)
	require.Nil(t, applyCmd(t, f, CmdPartitionReady, readyPayload{Node: "n4", Epoch: 2, Partitions: fetch[:len(fetch)/2]}))
	require.Nil(t, applyCmd(t, f, CmdLeave, leavePayload{Node: "n3"}))
	require.Positive(t, moveRing(t, f).MovingCount())

	store := raft.NewInmemSnapshotStore()
	snap, err := f.Snapshot()
	require.NoError(t, err)
	want, wantMoving := f.State(), moveRing(t, f).MovingCount()
	// Changes after Snapshot must not leak into it.
	require.Nil(t, applyCmd(t, f, CmdUpsertMembers, upsertPayload{Members: []ring.Member{{Name: "n5"}}}))
	sink, err := store.Create(raft.SnapshotVersionMax, 10, 1, raft.Configuration{}, 1, nil)
	require.NoError(t, err)
	require.NoError(t, snap.Persist(sink))
	snap.Release()
	_, rc, err := store.Open(sink.ID())
	require.NoError(t, err)
	raw, err := io.ReadAll(rc)
	require.NoError(t, err)
	t.Logf("snapshot of 4 members, RF 2, moves in flight: %d bytes", len(raw))
	require.Less(t, len(raw), 24<<10, "the assignment is encoded compactly")

	g := newFSM(func(_, cur *State) {
		r, err := ring.NewAssigned(cur.nodes(), cur.ReplicationFactor, cur.Epoch, cur.Partitions)
		require.NoError(t, err)
		rings = append(rings, r)
	})
	require.NoError(t, g.Restore(io.NopCloser(bytes.NewReader(raw))))
	require.Equal(t, want, g.State())
	require.Len(t, rings, 1, "restore publishes a ring")
	require.Equal(t, want.Epoch, rings[0].Epoch())
	require.Equal(t, wantMoving, rings[0].MovingCount())

	require.Error(t, g.Restore(io.NopCloser(jsonReader("not json"))))
	require.Equal(t, want, g.State(), "a failed restore keeps the state")

	// A snapshot from before assignments settles its placement at once.
	h := newFSM(nil)
	require.NoError(t, h.Restore(io.NopCloser(jsonReader(`{"cluster_id":"c1","replication_factor":2,"epoch":3,"members":[{"name":"b"},{"name":"a"}]}`))))
	require.Len(t, h.State().Partitions, ring.NumPartitions)
	require.Zero(t, moveRing(t, h).MovingCount())
}

type jsonReader string

func (j jsonReader) Read(p []byte) (int, error) { return copy(p, j), io.EOF }

func FuzzFSMApply(f *testing.F) {
	for _, c := range []struct {
		t CommandType
		p any
	}{
		{CmdInit, initPayload{ClusterID: "x", ReplicationFactor: 3}},
		{CmdUpsertMembers, upsertPayload{Members: []ring.Member{{Name: "a", Addr: "a:1", Zone: "z"}}}},
	} {
		b, err := encodeCommand(c.t, c.p)
		require.NoError(f, err)
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		fsm := newFSM(nil)
		before := fsm.State()
		res := fsm.Apply(&raft.Log{Type: raft.LogCommand, Data: data})
		if res != nil {
			require.Same(t, before, fsm.State())
			return
		}
		s := fsm.State()
		_, err := ring.New(s.Members, max(s.ReplicationFactor, 1), s.Epoch)
		require.NoError(t, err, "an accepted command yields a valid ring")
	})
}

func FuzzDecodeMeta(f *testing.F) {
	f.Add(nodeMeta{APIAddr: "10.0.0.1:9364", RaftAddr: "10.0.0.1:8946", Zone: "a", HasState: true}.encode())
	f.Add([]byte(`{"api":1}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := decodeMeta(b)
		if err != nil {
			require.ErrorIs(t, err, ErrBadMeta)
			return
		}
		again, err := decodeMeta(m.encode())
		require.NoError(t, err)
		require.Equal(t, m, again)
	})
}

package raftstore

import (
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"github.com/stretchr/testify/require"
)

func TestLogStoreRoundTripAndReopen(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir)
	require.NoError(t, err)

	first, err := s.FirstIndex()
	require.NoError(t, err)
	require.Zero(t, first)

	at := time.Unix(1700000000, 123)
	var logs []*raft.Log
	for i := uint64(1); i <= 10; i++ {
		logs = append(logs, &raft.Log{Index: i, Term: 2, Type: raft.LogCommand, Data: []byte{byte(i)}, AppendedAt: at})
	}
	require.NoError(t, s.StoreLogs(logs))
	require.NoError(t, s.StoreLog(&raft.Log{Index: 11, Term: 3, Type: raft.LogConfiguration, Extensions: []byte("x")}))
	require.NoError(t, s.DeleteRange(1, 4))
	require.NoError(t, s.SetUint64([]byte("CurrentTerm"), 3))
	require.NoError(t, s.Close())

	s, err = Open(dir)
	require.NoError(t, err)
	defer func() { _ = s.Close() }()
	first, err = s.FirstIndex()
	require.NoError(t, err)
	require.Equal(t, uint64(5), first)
	last, err := s.LastIndex()
	require.NoError(t, err)
	require.Equal(t, uint64(11), last)

	var l raft.Log
	require.ErrorIs(t, s.GetLog(3, &l), raft.ErrLogNotFound)
	require.NoError(t, s.GetLog(7, &l))
	require.Equal(t, raft.Log{Index: 7, Term: 2, Type: raft.LogCommand, Data: []byte{7}, AppendedAt: at}, l)
	require.NoError(t, s.GetLog(11, &l))
	require.Equal(t, raft.LogConfiguration, l.Type)
	require.Equal(t, []byte("x"), l.Extensions)
	require.Nil(t, l.Data)

	term, err := s.GetUint64([]byte("CurrentTerm"))
	require.NoError(t, err)
	require.Equal(t, uint64(3), term)
	_, err = s.Get([]byte("missing"))
	require.EqualError(t, err, "not found") // raft matches this text

	has, err := raft.HasExistingState(s, s, raft.NewInmemSnapshotStore())
	require.NoError(t, err)
	require.True(t, has)
}

func TestFreshStoreHasNoState(t *testing.T) {
	s, err := Open(t.TempDir())
	require.NoError(t, err)
	defer func() { _ = s.Close() }()
	has, err := raft.HasExistingState(s, s, raft.NewInmemSnapshotStore())
	require.NoError(t, err)
	require.False(t, has)
}

func FuzzDecodeLog(f *testing.F) {
	f.Add(encodeLog(&raft.Log{Index: 1, Term: 1, Data: []byte("abc")}))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		var l raft.Log
		if decodeLog(b, &l) != nil {
			return
		}
		require.Equal(t, b, encodeLog(&l))
	})
}

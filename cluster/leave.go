package cluster

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/hashicorp/raft"
)

// ErrLeaveIncomplete is returned by Leave when ctx ended before the other
// members held this node's partitions.
var ErrLeaveIncomplete = errors.New("cluster: left before the partitions were handed over")

// Leave hands this node's partitions over and leaves the cluster: it has
// the leader take the node out of every target (it stays a settled owner,
// serving reads and fetches), waits until no partition names it as a
// settled owner any more (others fetched its partitions), hands Raft
// leadership over if it has it, and leaves gossip, after which the leader
// removes it from the members. If ctx ends first it leaves gossip anyway
// and returns ErrLeaveIncomplete. Run must be running; cancel it after.
func (c *Cluster) Leave(ctx context.Context) error {
	if !c.running.Load() || c.raft.Load() == nil {
		return errors.New("cluster: Leave needs Run to be running")
	}
	r := c.raft.Load()
	self := c.cfg.NodeName
	wait := func() bool {
		select {
		case <-ctx.Done():
			return false
		case <-time.After(c.cfg.ReconcileInterval):
			return true
		}
	}
	var err error
	for {
		err = c.Propose(ctx, CmdLeave, leavePayload{Node: self})
		if err == nil || errors.Is(err, ErrLastMember) || errors.Is(err, ErrBadCommand) || !wait() {
			break
		}
		c.logger.Debug("leave: proposing failed; retrying", "err", err)
	}
	if err == nil {
		c.logger.Info("leaving the cluster: handing partitions over")
		for {
			_, leaving := c.leavingState()
			if leaving && len(c.Ring().PartitionsOf(self)) == 0 {
				break
			}
			if !wait() {
				err = fmt.Errorf("%w: %d partitions still settled here: %w", ErrLeaveIncomplete, len(c.Ring().PartitionsOf(self)), ctx.Err())
				break
			}
		}
	}
	if err == nil {
		// The entry that settled the last partition elsewhere is applied
		// here. Wait until every other alive member gossips that it
		// applied it too (its epoch, with no more partitions moving), so
		// none of them still counts this node as a settled owner when
		// gossip reports it gone: a lagging member would see the
		// partition one copy short. At least two intervals, at most 30.
		c.awaitSettledEverywhere(ctx, c.Ring().Epoch(), c.Ring().MovingCount())
	}
	if r.State() == raft.Leader {
		if lerr := r.LeadershipTransfer().Error(); lerr != nil {
			c.logger.Debug("leave: leadership transfer failed", "err", lerr)
		}
	}
	if lerr := c.ml.Leave(time.Second); lerr != nil {
		c.logger.Debug("leave gossip", "err", lerr)
	}
	if err == nil {
		c.logger.Info("left the cluster; no partition depends on this node")
	}
	return err
}

// awaitSettledEverywhere waits until every other alive member with Raft
// state gossips epoch e with at most moving partitions moving (or a later
// epoch), for at least two ReconcileIntervals and at most 30.
func (c *Cluster) awaitSettledEverywhere(ctx context.Context, e uint64, moving int) {
	start := time.Now()
	for {
		behind := 0
		for _, p := range c.gossip.peerMap() {
			if p.Name != c.cfg.NodeName && p.alive() && p.MetaErr == nil && p.Meta.HasState &&
				(p.Meta.Epoch < e || (p.Meta.Epoch == e && p.Meta.Moving > moving)) {
				behind++
			}
		}
		waited := time.Since(start)
		if (behind == 0 && waited >= 2*c.cfg.ReconcileInterval) || waited >= 30*c.cfg.ReconcileInterval {
			if behind > 0 {
				c.logger.Warn("leave: members did not gossip the settled ring; leaving anyway", "behind", behind)
			}
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(c.cfg.ReconcileInterval / 4):
		}
	}
}

// leavingState reports whether this node is a member and whether it is leaving.
func (c *Cluster) leavingState() (member, leaving bool) {
	st := c.fsm.State()
	_, member = memberIndex(st.Members, c.cfg.NodeName)
	for _, n := range st.Leaving {
		leaving = leaving || n == c.cfg.NodeName
	}
	return member, leaving
}

package cluster

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/valyala/fasthttp"
)

// ApplyPath is the internal RPC through which a node that is not the Raft
// leader has the leader apply a command (a ready report, a leave). The
// node's HTTP server routes /internal/v1/cluster/ to Handle.
const ApplyPath = "/internal/v1/cluster/apply"

// Handle serves the cluster's internal RPC: POST ApplyPath with a Command
// envelope as body applies it on this node, which must be the leader.
// Answers: 204 applied; 503 not the leader (the caller asks the new one);
// 409 ErrLastMember; 400 a bad or unknown command; 500 otherwise.
func (c *Cluster) Handle(ctx *fasthttp.RequestCtx) {
	if string(ctx.Path()) != ApplyPath {
		ctx.Error("404 page not found", fasthttp.StatusNotFound)
		return
	}
	if !ctx.IsPost() {
		ctx.Error("method not allowed", fasthttp.StatusMethodNotAllowed)
		return
	}
	// Raft keeps the entry's bytes; fasthttp reuses the body's.
	body := bytes.Clone(ctx.PostBody())
	var cmd Command
	if err := json.Unmarshal(body, &cmd); err != nil || cmd.Type == "" {
		ctx.Error("bad command envelope", fasthttp.StatusBadRequest)
		return
	}
	actx, cancel := context.WithTimeout(context.Background(), raftTimeout)
	defer cancel()
	err := c.applyData(actx, cmd.Type, body)
	switch {
	case err == nil:
		ctx.SetStatusCode(fasthttp.StatusNoContent)
	case errors.Is(err, ErrNotLeader):
		ctx.Error(err.Error(), fasthttp.StatusServiceUnavailable)
	case errors.Is(err, ErrLastMember):
		ctx.Error(err.Error(), fasthttp.StatusConflict)
	case errors.Is(err, ErrBadCommand), errors.Is(err, ErrUnknownCommand):
		ctx.Error(err.Error(), fasthttp.StatusBadRequest)
	default:
		ctx.Error(err.Error(), fasthttp.StatusInternalServerError)
	}
}

// Propose applies a command through Raft from any node: on the leader
// directly, elsewhere by forwarding it to the leader's ApplyPath. Commands
// must be idempotent: a forwarded command whose answer is lost is retried.
func (c *Cluster) Propose(ctx context.Context, t CommandType, payload any) error {
	data, err := encodeCommand(t, payload)
	if err != nil {
		return fmt.Errorf("cluster: encode %s: %w", t, err)
	}
	r := c.raft.Load()
	if r == nil {
		return ErrNotLeader
	}
	_, leader := r.LeaderWithID()
	switch {
	case leader == "":
		return fmt.Errorf("%w: no leader known", ErrNotLeader)
	case string(leader) == c.cfg.NodeName:
		return c.applyData(ctx, t, data)
	}
	addr := c.apiAddr(string(leader))
	if addr == "" {
		return fmt.Errorf("%w: no API address for leader %s", ErrNotLeader, leader)
	}
	req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	req.SetRequestURI("http://" + addr + ApplyPath)
	req.Header.SetMethod(fasthttp.MethodPost)
	req.Header.SetContentType("application/json")
	req.SetBodyRaw(data)
	deadline := time.Now().Add(raftTimeout + time.Second)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	if err := c.httpc.DoDeadline(req, resp, deadline); err != nil {
		return fmt.Errorf("cluster: forward %s to leader %s: %w", t, leader, err)
	}
	switch resp.StatusCode() {
	case fasthttp.StatusNoContent, fasthttp.StatusOK:
		return nil
	case fasthttp.StatusServiceUnavailable:
		return fmt.Errorf("%w: %s answered %s", ErrNotLeader, leader, resp.Body())
	case fasthttp.StatusConflict:
		return ErrLastMember
	case fasthttp.StatusBadRequest:
		return fmt.Errorf("%w: %s", ErrBadCommand, resp.Body())
	}
	return fmt.Errorf("cluster: forward %s to leader %s: status %d: %s", t, leader, resp.StatusCode(), resp.Body())
}

// apiAddr is a member's API address: from gossip, else from the ring.
func (c *Cluster) apiAddr(name string) string {
	if p, ok := c.gossip.peerMap()[name]; ok && p.MetaErr == nil && p.Meta.APIAddr != "" {
		return p.Meta.APIAddr
	}
	m, _ := c.Ring().Member(name)
	return m.Addr
}

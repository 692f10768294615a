package tests

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/klockd/klock/clientlib"
	"github.com/klockd/klock/protocol"
	"github.com/klockd/klock/tests/harness"
)

// Each configured limit is reached, answered with its documented error,
// and recovers when the load goes away.

// rssKB reads a process's resident set size from /proc, in KiB.
func rssKB(t *testing.T, pid int) int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	require.NoError(t, err)
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
			n, err := strconv.Atoi(f[1])
			require.NoError(t, err)
			return n
		}
	}
	t.Fatalf("no VmRSS in /proc/%d/status", pid)
	return 0
}

func TestMaxInflightPerConnection(t *testing.T) {
	d := harness.Start(t, harness.Options{StateDir: "none", Args: []string{"--max-inflight", "4"}})
	holder := d.Raw(t)
	mustOK(t, "register junior", holder.Call(1, protocol.OpRegisterAgent, args(protocol.ArgAgentID, "junior", protocol.ArgPriority, 200)), nil)
	var leases []string
	for i := 0; i < 4; i++ {
		var g protocol.Grant
		mustOK(t, "junior acquire", holder.Call(uint64(10+i), protocol.OpAcquire, acquireArgs("junior", "s", fmt.Sprintf("/f%d", i), "MUTATES", 60000)), &g)
		require.True(t, g.Success)
		leases = append(leases, g.LeaseID)
	}

	// Four parked acquires fill the senior's connection...
	senior := d.Raw(t)
	mustOK(t, "register senior", senior.Call(1, protocol.OpRegisterAgent, args(protocol.ArgAgentID, "senior", protocol.ArgPriority, 100)), nil)
	for i := 0; i < 4; i++ {
		a := parkArgs("senior", "s", fmt.Sprintf("/f%d", i), "MUTATES", 60000, 60000)
		senior.Send(uint64(100+i), protocol.OpAcquire, a)
	}
	waitFor(t, "four parked acquires", func() bool { return waiters(t, holder, 50) == 4 })
	// ...so a fifth acquire that would park on it is refused; requests the
	// daemon answers at once are still served, there and elsewhere.
	a := parkArgs("senior", "s", "/f0", "MUTATES", 60000, 60000)
	expectCode(t, "fifth in-flight request", senior.Call(200, protocol.OpAcquire, a), protocol.CodeResourceExhausted)
	mustOK(t, "hello on the full connection", senior.Call(201, protocol.OpHello, nil), nil)
	mustOK(t, "hello elsewhere", holder.Call(51, protocol.OpHello, nil), nil)

	// Releasing grants the parked acquires, and the connection is usable again.
	for i, id := range leases {
		mustOK(t, "release", holder.Call(uint64(60+i), protocol.OpRelease, args(protocol.ArgLeaseID, id)), nil)
	}
	for i := 0; i < 4; i++ {
		var g protocol.AcquireResult
		resp := senior.Recv()
		mustOK(t, "woken acquire", resp, &g)
		assert.True(t, g.Success, "parked acquire %d granted", resp.ID)
	}
	a.ResourcePath = "/f9"
	mustOK(t, "acquire after the load", senior.Call(202, protocol.OpAcquire, a), nil)
}

func TestMaxLeasesAndWaiters(t *testing.T) {
	d := harness.Start(t, harness.Options{StateDir: "none", Args: []string{"--max-leases", "10", "--max-waiters", "2"}})
	r := d.Raw(t)
	mustOK(t, "register", r.Call(1, protocol.OpRegisterAgent, args(protocol.ArgAgentID, "a", protocol.ArgPriority, 50)), nil)
	var ids []string
	for i := 0; i < 10; i++ {
		var g protocol.Grant
		mustOK(t, "acquire", r.Call(uint64(10+i), protocol.OpAcquire, acquireArgs("a", "s", fmt.Sprintf("/l%d", i), "MUTATES", 60000)), &g)
		ids = append(ids, g.LeaseID)
	}
	expectCode(t, "eleventh lease", r.Call(30, protocol.OpAcquire, acquireArgs("a", "s", "/l10", "MUTATES", 60000)), protocol.CodeResourceExhausted)
	many := args(protocol.ArgAgentID, "a", protocol.ArgSessionID, "s", protocol.ArgTTL, 60000,
		protocol.ArgIntents, []protocol.Intent{{ResourceType: "FILE", ResourcePath: "/m1", Predicate: "MUTATES"}})
	expectCode(t, "acquire_many over the limit", r.Call(31, protocol.OpAcquireMany, many), protocol.CodeResourceExhausted)
	mustOK(t, "release one", r.Call(32, protocol.OpRelease, args(protocol.ArgLeaseID, ids[9])), nil)
	mustOK(t, "acquire after a release", r.Call(33, protocol.OpAcquire, acquireArgs("a", "s", "/l10", "MUTATES", 60000)), nil)

	// Waiters: a younger agent holds two files, an older one parks on both;
	// a third parked acquire is refused.
	mustOK(t, "register young", r.Call(40, protocol.OpRegisterAgent, args(protocol.ArgAgentID, "young", protocol.ArgPriority, 300)), nil)
	mustOK(t, "register old", r.Call(41, protocol.OpRegisterAgent, args(protocol.ArgAgentID, "old", protocol.ArgPriority, 1)), nil)
	for i := 0; i < 3; i++ {
		mustOK(t, "release to make room", r.Call(uint64(42+i), protocol.OpRelease, args(protocol.ArgLeaseID, ids[i])), nil)
	}
	for i := 0; i < 3; i++ {
		mustOK(t, "young acquire", r.Call(uint64(50+i), protocol.OpAcquire, acquireArgs("young", "s", fmt.Sprintf("/w%d", i), "MUTATES", 60000)), nil)
	}
	w := d.Raw(t)
	for i := 0; i < 2; i++ {
		a := parkArgs("old", "s", fmt.Sprintf("/w%d", i), "MUTATES", 60000, 60000)
		w.Send(uint64(60+i), protocol.OpAcquire, a)
	}
	waitFor(t, "two parked acquires", func() bool { return waiters(t, r, 70) == 2 })
	a := parkArgs("old", "s", "/w2", "MUTATES", 60000, 60000)
	expectCode(t, "third parked acquire", w.Call(62, protocol.OpAcquire, a), protocol.CodeResourceExhausted)
	// Without wait_timeout the same request is just answered WAIT.
	var den protocol.Denial
	mustOK(t, "unparked acquire", r.Call(71, protocol.OpAcquire, acquireArgs("old", "s", "/w2", "MUTATES", 60000)), &den)
	assert.Equal(t, protocol.ReasonWait, den.Reason)
	t.Logf("klockd RSS with the limits reached: %d KiB", rssKB(t, d.Cmd.Process.Pid))
}

func TestMaxFrame(t *testing.T) {
	d := harness.Start(t, harness.Options{StateDir: "none", Args: []string{"--max-frame", "1024"}})
	b := startBystander(t, d)
	r := d.Raw(t)
	var hello protocol.HelloResult
	mustOK(t, "hello", r.Call(1, protocol.OpHello, nil), &hello)
	assert.Equal(t, 1024, hello.MaxFrame, "hello announces max_frame")

	big := args(protocol.ArgAgentID, strings.Repeat("x", 2000))
	frame, err := protocol.AppendRequest(nil, 2, protocol.OpRegisterAgent, big)
	require.NoError(t, err)
	r.Write(frame)
	resp, err := r.TryRecv()
	require.NoError(t, err)
	expectCode(t, "oversize frame", resp, protocol.CodeBadFrame)
	_, err = r.TryRecv()
	assert.True(t, errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET), "connection closed after BAD_FRAME, got %v", err)

	// A new connection is served; the bystander never noticed.
	mustOK(t, "hello on a new connection", d.Raw(t).Call(1, protocol.OpHello, nil), nil)
	b.check(t)
}

// TestMaxAgents: with --max-agents 3 a fourth agent is refused
// RESOURCE_EXHAUSTED naming the limit and the flag, on the raw protocol and
// through clientlib; registered agents register again and keep working,
// and unregistering one makes room.
func TestMaxAgents(t *testing.T) {
	d := harness.Start(t, harness.Options{StateDir: "none", Args: []string{"--max-agents", "3"}})
	b := startBystander(t, d) // the first agent
	r := d.Raw(t)
	mustOK(t, "register a", r.Call(1, protocol.OpRegisterAgent, args(protocol.ArgAgentID, "a", protocol.ArgPriority, 10)), nil)
	mustOK(t, "register b", r.Call(2, protocol.OpRegisterAgent, args(protocol.ArgAgentID, "b", protocol.ArgPriority, 20)), nil)
	resp := r.Call(3, protocol.OpRegisterAgent, args(protocol.ArgAgentID, "c", protocol.ArgPriority, 30))
	expectCode(t, "fourth agent with --max-agents 3", resp, protocol.CodeResourceExhausted)
	assert.Contains(t, resp.Error.Message, "agent limit (3)")
	assert.Contains(t, resp.Error.Message, "--max-agents")

	c := d.Client(t)
	ctx := testCtx(t)
	err := c.RegisterAgent(ctx, "c", 30)
	var ce *clientlib.Error
	require.ErrorAs(t, err, &ce, "RegisterAgent(c) through clientlib")
	assert.Equal(t, protocol.CodeResourceExhausted, ce.Code, "RegisterAgent(c): %v", err)
	assert.ErrorIs(t, err, clientlib.ErrResourceExhausted)

	// At the limit, a registered agent registers again (a new priority
	// included) and takes leases.
	require.NoError(t, c.RegisterAgent(ctx, "a", 5), "re-register a with a new priority")
	res, err := c.AcquireLease(ctx, "a", "s", "FILE", "/a", "MUTATES", time.Minute)
	require.NoError(t, err)
	require.True(t, res.Success, "acquire by a at the agent limit: %+v", res)

	mustOK(t, "unregister b", r.Call(4, protocol.OpUnregisterAgent, args(protocol.ArgAgentID, "b")), nil)
	require.NoError(t, c.RegisterAgent(ctx, "c", 30), "register c after b left")
	b.check(t)
}

// TestMaxAgentsBelowRecordedState: agents registered under a higher limit
// all come back when klockd restarts with a lower one (KLOCK_MAX_AGENTS);
// only new agents are refused.
func TestMaxAgentsBelowRecordedState(t *testing.T) {
	harness.SkipInClusterMode(t, "limits are the cluster's: a node started with other limits refuses to join (daemon/cluster TestSettingsMustMatch)")
	d := harness.Start(t, harness.Options{})
	c := d.Client(t)
	ctx := testCtx(t)
	registerAgents(t, ctx, c, map[string]int64{"a": 1, "b": 2, "c": 3, "d": 4})
	c.Close()
	d.Stop(t)

	d2 := harness.Start(t, harness.Options{StateDir: d.StateDir, Env: []string{"KLOCK_MAX_AGENTS=2"}})
	c2 := d2.Client(t)
	agents, _, err := c2.ListAgents(ctx, 0)
	require.NoError(t, err)
	assert.Len(t, agents, 4, "agents recovered under --max-agents 2")
	err = c2.RegisterAgent(ctx, "e", 5)
	assert.ErrorIs(t, err, clientlib.ErrResourceExhausted, "RegisterAgent(e) with 4 agents and a limit of 2")
	require.NoError(t, c2.RegisterAgent(ctx, "d", 4), "re-register d")
	res, err := c2.AcquireLease(ctx, "d", "s", "FILE", "/d", "MUTATES", time.Minute)
	require.NoError(t, err)
	assert.True(t, res.Success, "acquire by a recovered agent over the limit: %+v", res)
}

package tests

// Helpers shared by the end-to-end tests: waiting on conditions, bounded
// contexts, running processes, building raw protocol requests, and starting
// a daemon for the clientlib tests.

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/klockd/klock/clientlib"
	"github.com/klockd/klock/protocol"
	"github.com/klockd/klock/tests/harness"
)

// waitTimeout bounds waitFor and testCtx: long enough for a loaded 2-core
// machine, short enough to report a hang before the test binary's timeout.
const waitTimeout = 20 * time.Second

// waitFor polls cond every 5 ms until it holds, failing the test after
// waitTimeout. It waits on a condition, not on time: the poll interval
// only bounds latency.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// testCtx returns a context bounded by waitTimeout, cancelled when the test
// ends.
func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	t.Cleanup(cancel)
	return ctx
}

// mp encodes v as msgpack or fails the test.
func mp(t *testing.T, v any) []byte {
	t.Helper()
	b, err := msgpack.Marshal(v)
	if err != nil {
		t.Fatalf("msgpack: %v", err)
	}
	return b
}

// testEnv is the test's environment without the variables that would
// change how klockd or klockctl start (KLOCK_*, socket activation and
// sd_notify), followed by extra.
func testEnv(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "KLOCK_") || strings.HasPrefix(kv, "LISTEN_") ||
			strings.HasPrefix(kv, "NOTIFY_SOCKET=") || strings.HasPrefix(kv, "WATCHDOG_") {
			continue
		}
		env = append(env, kv)
	}
	return append(env, extra...)
}

// cmdResult is what one finished process did.
type cmdResult struct {
	code           int
	stdout, stderr string
}

// cmdTimeout bounds runCmd and waitCmd.
const cmdTimeout = 30 * time.Second

// runCmd runs cmd to completion, killing it after cmdTimeout, and returns
// its exit code and output.
func runCmd(t *testing.T, cmd *exec.Cmd) cmdResult {
	t.Helper()
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %q: %v", cmd.Args, err)
	}
	return waitCmd(t, cmd, &out, &errb)
}

// waitCmd waits for a started cmd whose output goes to out and errb,
// killing it after cmdTimeout.
func waitCmd(t *testing.T, cmd *exec.Cmd, out, errb *bytes.Buffer) cmdResult {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var err error
	select {
	case err = <-done:
	case <-time.After(cmdTimeout):
		_ = cmd.Process.Kill()
		<-done
		t.Fatalf("%q did not finish within %s; stderr %q", cmd.Args, cmdTimeout, errb)
	}
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatalf("%q: %v", cmd.Args, err)
	}
	return cmdResult{code: cmd.ProcessState.ExitCode(), stdout: out.String(), stderr: errb.String()}
}

// args builds protocol.Args from key/value pairs, marking each present:
// string arguments take a string, integer ones an int, ArgIntents a
// []protocol.Intent.
func args(kv ...any) *protocol.Args {
	a := new(protocol.Args)
	strs := map[protocol.Arg]*string{
		protocol.ArgAgentID: &a.AgentID, protocol.ArgSessionID: &a.SessionID,
		protocol.ArgResourceType: &a.ResourceType, protocol.ArgResourcePath: &a.ResourcePath,
		protocol.ArgPredicate: &a.Predicate, protocol.ArgIdem: &a.Idem,
		protocol.ArgLeaseID: &a.LeaseID, protocol.ArgResourcePrefix: &a.ResourcePrefix,
		protocol.ArgClientPath: &a.ClientPath,
	}
	ints := map[protocol.Arg]*int64{
		protocol.ArgTTL: &a.TTL, protocol.ArgWaitTimeout: &a.WaitTimeout,
		protocol.ArgPriority: &a.Priority, protocol.ArgLimit: &a.Limit,
	}
	for i := 0; i < len(kv); i += 2 {
		key := kv[i].(protocol.Arg)
		if p := strs[key]; p != nil {
			*p = kv[i+1].(string)
		} else if p := ints[key]; p != nil {
			*p = int64(kv[i+1].(int))
		} else if key == protocol.ArgIntents {
			a.Intents = kv[i+1].([]protocol.Intent)
		}
		a.Set(key)
	}
	return a
}

// acquireArgs is a valid acquire for agent on FILE:path.
func acquireArgs(agent, session, path, pred string, ttl int) *protocol.Args {
	return args(protocol.ArgAgentID, agent, protocol.ArgSessionID, session,
		protocol.ArgResourceType, "FILE", protocol.ArgResourcePath, path,
		protocol.ArgPredicate, pred, protocol.ArgTTL, ttl)
}

// parkArgs is acquireArgs with a wait_timeout (ms), so that a WAIT verdict
// parks the request in the daemon.
func parkArgs(agent, session, path, pred string, ttl, waitTimeout int) *protocol.Args {
	a := acquireArgs(agent, session, path, pred, ttl)
	a.WaitTimeout = int64(waitTimeout)
	a.Set(protocol.ArgWaitTimeout)
	return a
}

// registerRaw registers agents through r, each with the priority at the
// same index, as requests 1, 2, ...
func registerRaw(t *testing.T, r *harness.Raw, agents []string, priorities []int) {
	t.Helper()
	for i, ag := range agents {
		mustOK(t, "register "+ag, r.Call(uint64(i+1), protocol.OpRegisterAgent,
			args(protocol.ArgAgentID, ag, protocol.ArgPriority, priorities[i])), nil)
	}
}

// mustOK fails unless resp is a success, and decodes its result into v.
func mustOK(t *testing.T, what string, resp *protocol.Response, v any) {
	t.Helper()
	if !resp.OK {
		t.Fatalf("%s: error %s: %s", what, resp.Error.Code, resp.Error.Message)
	}
	if v != nil {
		if err := protocol.DecodeResult(resp.Result, v); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
}

// expectCode fails unless resp is an error with code.
func expectCode(t *testing.T, what string, resp *protocol.Response, code protocol.Code) {
	t.Helper()
	require.False(t, resp.OK, "%s: want %s, got success", what, code)
	assert.Equal(t, code, resp.Error.Code, "%s: %s", what, resp.Error.Message)
	assert.True(t, strings.HasPrefix(resp.Error.Message, "klock: "), "%s: message %q", what, resp.Error.Message)
}

// waiters returns the daemon's count of parked acquires.
func waiters(t *testing.T, r *harness.Raw, id uint64) int {
	t.Helper()
	var st protocol.StatsResult
	mustOK(t, "stats", r.Call(id, protocol.OpStats, nil), &st)
	return st.Waiters
}

// startClient starts klockd in memory, registers agents (id → priority)
// and returns the daemon, a client to it and a context bounded for the test.
func startClient(t *testing.T, agents map[string]int64) (*harness.Daemon, *clientlib.Client, context.Context) {
	t.Helper()
	d := harness.Start(t, harness.Options{StateDir: "none"})
	c := d.Client(t)
	ctx := testCtx(t)
	registerAgents(t, ctx, c, agents)
	return d, c, ctx
}

// registerAgents registers every agent (id → priority) through c.
func registerAgents(t *testing.T, ctx context.Context, c *clientlib.Client, agents map[string]int64) {
	t.Helper()
	for id, pri := range agents {
		if err := c.RegisterAgent(ctx, id, pri); err != nil {
			t.Fatalf("RegisterAgent(%s, %d) = %v", id, pri, err)
		}
	}
}

// waitForStats waits, as waitFor does, until the daemon's stats asked
// through c satisfy cond.
func waitForStats(t *testing.T, ctx context.Context, c *clientlib.Client, what string, cond func(*protocol.StatsResult) bool) {
	t.Helper()
	waitFor(t, what, func() bool {
		st, err := c.Stats(ctx)
		return err == nil && cond(st)
	})
}

// fileIntent is one intent on FILE:path.
func fileIntent(path, predicate string) []clientlib.Intent {
	return []clientlib.Intent{{ResourceType: "FILE", ResourcePath: path, Predicate: predicate}}
}

// leaseFences lists the daemon's leases over r (request id) and returns
// each lease's fence by lease id.
func leaseFences(t *testing.T, r *harness.Raw, id uint64) map[string]uint64 {
	t.Helper()
	var list protocol.ListLeasesResult
	mustOK(t, "list_leases", r.Call(id, protocol.OpListLeases, nil), &list)
	got := map[string]uint64{}
	for _, l := range list.Leases {
		got[l.LeaseID] = l.Fence
	}
	return got
}

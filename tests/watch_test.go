package tests

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/klockd/klock/clientlib"
	"github.com/klockd/klock/protocol"
	"github.com/klockd/klock/tests/harness"
)

// watchOn starts a watch on r with request id and filters, and returns its
// watch_id.
func watchOn(t *testing.T, r *harness.Raw, id uint64, agent, prefix string) int64 {
	t.Helper()
	a := new(protocol.Args)
	if agent != "" {
		a.AgentID = agent
		a.Set(protocol.ArgAgentID)
	}
	if prefix != "" {
		a.ResourcePrefix = prefix
		a.Set(protocol.ArgResourcePrefix)
	}
	var w protocol.WatchResult
	mustOK(t, "watch", r.Call(id, protocol.OpWatch, a), &w)
	require.True(t, w.Watching)
	require.NotZero(t, w.WatchID)
	return w.WatchID
}

// nextEvent reads the next frame of r, which must be an event of the
// watch with request id.
func nextEvent(t *testing.T, r *harness.Raw, id uint64) protocol.WatchEvent {
	t.Helper()
	resp := r.Recv()
	require.Equal(t, id, resp.ID, "want an event of watch request %d", id)
	var ev protocol.WatchEvent
	mustOK(t, "event", resp, &ev)
	return ev
}

// summary is an event in short: "kind resource agent [held_by]".
func summary(ev protocol.WatchEvent) string {
	s := ev.Event + " " + ev.Resource + " " + ev.AgentID
	if ev.HeldBy != "" {
		s += " by " + ev.HeldBy
	}
	return strings.TrimSpace(s)
}

// TestWatchEveryEventKind: a watch on everything sees each kind of event,
// in order, with its fields; filtered watches see only their part.
func TestWatchEveryEventKind(t *testing.T) {
	d := harness.Start(t, harness.Options{})
	all, onlyA, onlyOld := d.Raw(t), d.Raw(t), d.Raw(t)
	watchOn(t, all, 1, "", "")
	watchOn(t, onlyA, 1, "", "FILE:/w/a")
	watchOn(t, onlyOld, 1, "old", "")

	c := d.Raw(t)
	registerRaw(t, c, []string{"old", "young", "junior"}, []int{1, 9, 20})
	var g protocol.Grant
	mustOK(t, "young acquires", c.Call(10, protocol.OpAcquire, acquireArgs("young", "s", "/w/x", "MUTATES", 60_000)), &g)
	var res protocol.AcquireResult
	mustOK(t, "junior dies", c.Call(11, protocol.OpAcquire, acquireArgs("junior", "s", "/w/x", "CONSUMES", 60_000)), &res)
	require.Equal(t, protocol.ReasonDie, res.Reason)
	c.Send(12, protocol.OpAcquire, parkArgs("old", "s", "/w/x", "MUTATES", 60_000, 60_000))
	waitFor(t, "old parked", func() bool { return waiters(t, d.Raw(t), 1) == 1 })
	c.Send(13, protocol.OpRelease, args(protocol.ArgLeaseID, g.LeaseID))
	var og protocol.Grant
	for _, resp := range []*protocol.Response{c.Recv(), c.Recv()} { // the release, and old's parked acquire granted
		if resp.ID == 12 {
			mustOK(t, "old granted", resp, &og)
		} else {
			require.Equal(t, uint64(13), resp.ID)
			mustOK(t, "young releases", resp, nil)
		}
	}
	require.NotEmpty(t, og.LeaseID)
	mustOK(t, "revoke", c.Call(14, protocol.OpRevoke, args(protocol.ArgLeaseID, og.LeaseID)), nil)
	mustOK(t, "freeze", c.Call(15, protocol.OpFreeze, args(protocol.ArgResourceType, "FILE", protocol.ArgResourcePath, "/w/x")), nil)
	mustOK(t, "thaw", c.Call(16, protocol.OpThaw, args(protocol.ArgResourceType, "FILE", protocol.ArgResourcePath, "/w/x")), nil)
	mustOK(t, "short lease", c.Call(17, protocol.OpAcquire, acquireArgs("young", "s", "/w/a/short", "MUTATES", 50)), nil)
	mustOK(t, "session lease", c.Call(18, protocol.OpAcquire, acquireArgs("old", "s2", "/w/a/sess", "CONSUMES", 60_000)), nil)

	want := []string{
		"grant FILE:/w/x young",
		"die FILE:/w/x junior by young",
		"wait FILE:/w/x old by young",
		"release FILE:/w/x young",
		"grant FILE:/w/x old",
		"revoke FILE:/w/x old",
		"freeze FILE:/w/x",
		"thaw FILE:/w/x",
		"grant FILE:/w/a/short young",
		"grant FILE:/w/a/sess old",
		"expire FILE:/w/a/short young", // the daemon's timer, 50 ms later
	}
	var got []protocol.WatchEvent
	for range want {
		got = append(got, nextEvent(t, all, 1))
	}
	mustOK(t, "end_session", c.Call(19, protocol.OpEndSession, args(protocol.ArgAgentID, "old", protocol.ArgSessionID, "s2")), nil)
	want = append(want, "release FILE:/w/a/sess old")
	got = append(got, nextEvent(t, all, 1))
	var sums []string
	for _, ev := range got {
		sums = append(sums, summary(ev))
	}
	require.Equal(t, want, sums)

	// Fields: a grant carries the lease; a die the request and its decider.
	require.Equal(t, protocol.WatchEvent{Event: "grant", At: g.AcquiredAt, Resource: "FILE:/w/x", AgentID: "young", SessionID: "s",
		LeaseID: g.LeaseID, Predicate: "MUTATES", Fence: g.Fence, ExpiresAt: g.ExpiresAt}, got[0])
	require.Equal(t, "CONSUMES", got[1].Predicate)
	require.Equal(t, protocol.ReasonDie, got[1].Reason)
	require.Empty(t, got[1].LeaseID)
	require.Equal(t, protocol.ReasonWait, got[2].Reason)
	require.Equal(t, og.LeaseID, got[5].LeaseID)
	for i := 1; i < len(got); i++ {
		require.GreaterOrEqual(t, got[i].At, got[i-1].At, "events out of time order")
	}

	// The filtered watches saw only their part, in the same order.
	for _, w := range []string{"grant FILE:/w/a/short young", "grant FILE:/w/a/sess old", "expire FILE:/w/a/short young", "release FILE:/w/a/sess old"} {
		require.Equal(t, w, summary(nextEvent(t, onlyA, 1)))
	}
	for _, w := range []string{"wait FILE:/w/x old by young", "grant FILE:/w/x old", "revoke FILE:/w/x old", "grant FILE:/w/a/sess old", "release FILE:/w/a/sess old"} {
		require.Equal(t, w, summary(nextEvent(t, onlyOld, 1)))
	}
	// Nothing more is pending for them: the next frame answers a hello.
	for _, r := range []*harness.Raw{onlyA, onlyOld} {
		r.Send(2, protocol.OpHello, nil)
		require.Equal(t, uint64(2), r.Recv().ID)
	}
}

// TestWatchOverflowOfAStalledReader: a watcher that stops reading is cut
// off with one final overflow event, while another client is served
// normally all along; the watcher's connection stays usable.
func TestWatchOverflowOfAStalledReader(t *testing.T) {
	d := harness.Start(t, harness.Options{StateDir: "none", Args: []string{"--watch-buffer", "8"}})
	stalled := d.Raw(t)
	watchOn(t, stalled, 1, "", "")
	// stalled reads nothing from here on.

	c := d.Raw(t)
	mustOK(t, "register", c.Call(1, protocol.OpRegisterAgent, args(protocol.ArgAgentID, "busy")), nil)
	// The pairs go in pipelined batches, so that they are served well
	// within klockd's write timeout (10 s) even on a loaded machine (in
	// cluster mode one at a time took 15 s there): the watcher is to be cut
	// off by overflow, not dropped for a write blocked that long.
	const pairs, batch = 2500, 100
	start := time.Now()
	id := uint64(10)
	for b := 0; b < pairs/batch; b++ {
		// Distinct resources, so that every acquire of a batch is granted.
		calls := make([]*protocol.Args, batch)
		for i := range calls {
			calls[i] = acquireArgs("busy", "s", fmt.Sprintf("/o/x%d", i), "MUTATES", 60_000)
		}
		grants := pipeline(t, c, &id, protocol.OpAcquire, calls)
		for i, resp := range grants {
			var g protocol.Grant
			mustOK(t, "acquire", resp, &g)
			calls[i] = args(protocol.ArgLeaseID, g.LeaseID)
		}
		for _, resp := range pipeline(t, c, &id, protocol.OpRelease, calls) {
			mustOK(t, "release", resp, nil)
		}
	}
	t.Logf("%d acquire+release pairs served in %s with a stalled watcher", pairs, time.Since(start))

	// Now read: some events, then overflow, then the stream is over.
	n := 0
	for {
		ev := nextEvent(t, stalled, 1)
		if ev.Event == protocol.EventOverflow {
			break
		}
		require.Contains(t, []string{"grant", "release"}, ev.Event)
		n++
		require.Less(t, n, 2*pairs, "no overflow event after every event was delivered: the watcher was never cut off")
	}
	t.Logf("the stalled watcher got %d of %d events, then overflow", n, 2*pairs)
	stalled.Send(2, protocol.OpHello, nil)
	require.Equal(t, uint64(2), stalled.Recv().ID, "after overflow the next frame must answer the hello: no event may follow")
	// It may watch again.
	watchOn(t, stalled, 3, "", "")
}

// pipeline sends one request of op for each of calls through r, ids from
// *id on, before reading any answer, and returns the answers in the order
// of calls.
func pipeline(t *testing.T, r *harness.Raw, id *uint64, op string, calls []*protocol.Args) []*protocol.Response {
	t.Helper()
	first := *id
	for _, a := range calls {
		r.Send(*id, op, a)
		*id++
	}
	out := make([]*protocol.Response, len(calls))
	for range calls {
		resp := r.Recv()
		i := resp.ID - first
		require.Less(t, i, uint64(len(calls)), "an answer to request %d, not one of this batch", resp.ID)
		require.Nil(t, out[i], "request %d answered twice", resp.ID)
		out[i] = resp
	}
	return out
}

// TestUnwatchEndsTheStream: after unwatch's answer no event of that watch
// arrives; closing a connection ends its watches.
func TestUnwatchEndsTheStream(t *testing.T) {
	d := harness.Start(t, harness.Options{StateDir: "none"})
	w := d.Raw(t)
	id := watchOn(t, w, 1, "", "")
	c := d.Raw(t)
	mustOK(t, "register", c.Call(1, protocol.OpRegisterAgent, args(protocol.ArgAgentID, "a")), nil)
	mustOK(t, "acquire", c.Call(2, protocol.OpAcquire, acquireArgs("a", "s", "/u/1", "MUTATES", 60_000)), nil)
	require.Equal(t, "grant FILE:/u/1 a", summary(nextEvent(t, w, 1)))

	uw := new(protocol.Args)
	uw.WatchID = id
	uw.Set(protocol.ArgWatchID)
	var u protocol.UnwatchResult
	mustOK(t, "unwatch", w.Call(2, protocol.OpUnwatch, uw), &u)
	require.True(t, u.Unwatched)
	mustOK(t, "acquire", c.Call(3, protocol.OpAcquire, acquireArgs("a", "s", "/u/2", "MUTATES", 60_000)), nil)
	w.Send(3, protocol.OpHello, nil)
	require.Equal(t, uint64(3), w.Recv().ID, "an event arrived after unwatch")
	mustOK(t, "unwatch again", w.Call(4, protocol.OpUnwatch, uw), &u)
	require.False(t, u.Unwatched)
	expectCode(t, "unwatch without id", w.Call(5, protocol.OpUnwatch, nil), protocol.CodeInvalidArgument)

	// A connection closed with a watch open frees its slot: with
	// --max-watches 1 a new watch is possible only if it was.
	d2 := harness.Start(t, harness.Options{StateDir: "none", Args: []string{"--max-watches", "1"}})
	first := d2.Raw(t)
	watchOn(t, first, 1, "", "")
	expectCode(t, "second watch", d2.Raw(t).Call(1, protocol.OpWatch, nil), protocol.CodeResourceExhausted)
	first.Conn.Close()
	waitFor(t, "the closed watch's slot", func() bool {
		return d2.Raw(t).Call(1, protocol.OpWatch, nil).OK
	})
}

// TestClientlibWatch reads a stream through clientlib.Watch.
func TestClientlibWatch(t *testing.T) {
	d, c, ctx := startClient(t, map[string]int64{"a": 1})
	w, err := clientlib.Watch(ctx, clientlib.Options{Socket: d.Socket}, clientlib.WatchFilter{Prefix: "FILE:/cw/"})
	require.NoError(t, err)
	defer w.Close()
	l, err := c.AcquireLease(ctx, "a", "s", "FILE", "/cw/1", "MUTATES", time.Minute)
	require.NoError(t, err)
	ev, err := w.Next()
	require.NoError(t, err)
	require.Equal(t, "grant", ev.Event)
	require.Equal(t, l.LeaseID, ev.LeaseID)
	_, err = clientlib.Watch(ctx, clientlib.Options{Socket: d.Socket}, clientlib.WatchFilter{Prefix: strings.Repeat("x", 5000)})
	require.ErrorIs(t, err, clientlib.ErrInvalidArgument)
	go w.Close()
	_, err = w.Next()
	require.ErrorIs(t, err, clientlib.ErrClosed)
}

// TestKlockctlWatch: klockctl watch prints a line per event (JSON lines
// with --json) until interrupted.
func TestKlockctlWatch(t *testing.T) {
	d := harness.Start(t, harness.Options{StateDir: "none"})
	kcOK(t, d, nil, "agents", "register", "--priority", "1", "senior")
	kcOK(t, d, nil, "agents", "register", "--priority", "2", "junior")
	for _, asJSON := range []bool{false, true} {
		argv := []string{"watch", "--prefix", "/kw/"}
		if asJSON {
			argv = append(argv, "--json")
		}
		cmd := kcCommand(t, d, nil, argv...)
		out, errb := &harness.Buffer{}, &harness.Buffer{}
		cmd.Stdout, cmd.Stderr = out, errb
		require.NoError(t, cmd.Start())
		// Probe until the watch is in place: its events start to show.
		probe := 0
		waitFor(t, "klockctl watch to print a probe", func() bool {
			probe++
			// Long enough that no probe expires, and prints an expire line, before
			// the die event the test reads last.
			kcOK(t, d, nil, "acquire", "--agent", "senior", "--ttl", "10m", fmt.Sprintf("FILE:/kw/probe%d", probe))
			return strings.Contains(out.String(), "FILE:/kw/probe")
		})
		kcOK(t, d, nil, "acquire", "--agent", "senior", "--ttl", "1m", "FILE:/kw/held")
		kcExpect(t, d, 1, []string{"DIE"}, "acquire", "--agent", "junior", "FILE:/kw/held")
		kcOK(t, d, nil, "acquire", "--agent", "senior", "FILE:/other") // filtered out
		waitFor(t, "the die event", func() bool { return strings.Contains(out.String(), "die") })
		require.NoError(t, cmd.Process.Signal(syscall.SIGINT))
		require.NoError(t, cmd.Wait(), "klockctl watch exits 0 when interrupted; stderr %q", errb.String())
		lines := strings.Split(strings.TrimSpace(out.String()), "\n")
		require.NotContains(t, out.String(), "/other")
		if asJSON {
			var evs []protocol.WatchEvent
			for _, l := range lines {
				var ev protocol.WatchEvent
				require.NoError(t, json.Unmarshal([]byte(l), &ev), l)
				evs = append(evs, ev)
			}
			last := evs[len(evs)-1]
			require.Equal(t, "die", last.Event)
			require.Equal(t, "senior", last.HeldBy)
			require.Equal(t, "FILE:/kw/held", last.Resource)
			continue
		}
		require.Regexp(t, `^\d\d:\d\d:\d\d\.\d{3}  grant    FILE:/kw/held  senior  MUTATES  fence \d+$`, lines[len(lines)-2])
		require.Regexp(t, `^\d\d:\d\d:\d\d\.\d{3}  die      FILE:/kw/held  junior  MUTATES  \(decided by senior\)$`, lines[len(lines)-1])
	}
}

// TestWatchEndWhenTheBoundProcessExits: a lease bound to a process (the
// test binary re-run as a helper, cluster_bind_test.go) is granted with an
// event naming that process (bound_pid), and ends with an end event, not a
// release or an expiry, when the process is killed; the event names the
// lease the helper was granted.
func TestWatchEndWhenTheBoundProcessExits(t *testing.T) {
	d := harness.Start(t, harness.Options{StateDir: "none"})
	w := d.Raw(t)
	watchOn(t, w, 1, "bound", "")
	mustOK(t, "register", d.Raw(t).Call(1, protocol.OpRegisterAgent, args(protocol.ArgAgentID, "bound")), nil)

	helper := exec.Command(os.Args[0], "-test.run=^$")
	helper.Env = append(os.Environ(), boundHelperEnv+"="+d.Socket)
	out, err := helper.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, helper.Start())
	t.Cleanup(func() { helper.Process.Kill(); helper.Wait() })
	line, err := bufio.NewReader(out).ReadString('\n')
	require.NoError(t, err)
	require.True(t, strings.HasPrefix(line, "lease "), "the helper said %q", line)
	id := strings.TrimSpace(strings.TrimPrefix(line, "lease "))

	grant := nextEvent(t, w, 1)
	require.Equal(t, "grant FILE:/bound bound", summary(grant))
	require.Equal(t, id, grant.LeaseID)
	require.Zero(t, grant.ExpiresAt, "a bound lease without a ttl does not expire")
	require.Equal(t, int32(helper.Process.Pid), grant.BoundPID, "the grant names the process the lease is bound to")
	why := kcOK(t, d, nil, "why", "FILE:/bound").stdout
	require.Contains(t, why, "no ttl", "klockctl why shows a lease without a ttl as such")
	require.NotContains(t, why, "expired")
	require.NoError(t, helper.Process.Kill())
	helper.Wait()
	end := nextEvent(t, w, 1)
	require.Equal(t, "end FILE:/bound bound", summary(end), "the lease ends with its process")
	require.Equal(t, id, end.LeaseID)
	require.Equal(t, grant.Fence, end.Fence)
	require.Equal(t, "MUTATES", end.Predicate)
	w.Send(2, protocol.OpHello, nil)
	require.Equal(t, uint64(2), w.Recv().ID, "one event per lease ended")
}

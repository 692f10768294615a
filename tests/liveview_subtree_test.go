package tests

import (
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/stretchr/testify/require"

	"github.com/klockd/klock/clientlib"
	"github.com/klockd/klock/protocol"
	"github.com/klockd/klock/tests/harness"
)

// The live view with subtree keys (protocol/README.md "Subtree keys"):
// watch's resource_prefix, explain's holders and queue, klockctl why and
// the dashboard, when leases are taken on folders above and below.

// TestWatchAndExplainOnSubtrees: a watch with resource_prefix FILE:/src/
// sees the events of the subtree key itself and of every key below it,
// not those of FILE:/ above it nor of FILE:/srcfoo.ts beside it; explain
// lists the holders and queued requests above and below the key
// explained, marking which conflict; klockctl why names their keys.
func TestWatchAndExplainOnSubtrees(t *testing.T) {
	d := harness.Start(t, harness.Options{StateDir: "none"})
	src, all := d.Raw(t), d.Raw(t)
	watchOn(t, src, 1, "", "FILE:/src/")
	watchOn(t, all, 1, "", "")

	c := d.Raw(t)
	registerRaw(t, c, []string{"lead", "builder", "tester", "reader"}, []int{10, 100, 200, 300})
	var root, deep, beside, sub protocol.Grant
	mustOK(t, "reader on /", c.Call(10, protocol.OpAcquire, acquireArgs("reader", "s", "/", "CONSUMES", 60_000)), &root)
	mustOK(t, "builder below", c.Call(11, protocol.OpAcquire, acquireArgs("builder", "s", "/src/a/b.ts", "CONSUMES", 60_000)), &deep)
	mustOK(t, "builder beside", c.Call(12, protocol.OpAcquire, acquireArgs("builder", "s", "/srcfoo.ts", "CONSUMES", 60_000)), &beside)
	mustOK(t, "builder on /src/", c.Call(13, protocol.OpAcquire, acquireArgs("builder", "s", "/src/", "DEPENDS_ON", 60_000)), &sub)

	// A writer on /src/ conflicts with all three overlapping leases, not
	// with /srcfoo.ts.
	var x protocol.ExplainResult
	mustOK(t, "explain", c.Call(14, protocol.OpExplain, explainArgs("tester", "", "/src/", "MUTATES")), &x)
	require.Equal(t, "FILE:/src/", x.Resource)
	require.Equal(t, []string{"FILE:/ reader true", "FILE:/src/a/b.ts builder true", "FILE:/src/ builder true"}, holderText(x))
	require.Equal(t, "DIE", x.Verdict)
	require.Equal(t, "builder", x.HeldBy)
	require.Equal(t, "4:senior-holder", x.Step)
	var res protocol.AcquireResult
	mustOK(t, "tester dies", c.Call(15, protocol.OpAcquire, acquireArgs("tester", "s", "/src/", "MUTATES", 60_000)), &res)
	require.Equal(t, protocol.ReasonDie, res.Reason)

	// lead, the oldest, parks on a file under /src/: it waits for the
	// folder leases above it.
	c.Send(16, protocol.OpAcquire, parkArgs("lead", "s", "/src/x.ts", "MUTATES", 60_000, 60_000))
	var got []string
	for range 6 { // the wait event is the sign that lead is parked
		got = append(got, summary(nextEvent(t, all, 1)))
	}
	require.Equal(t, []string{"grant FILE:/ reader", "grant FILE:/src/a/b.ts builder", "grant FILE:/srcfoo.ts builder",
		"grant FILE:/src/ builder", "die FILE:/src/ tester by builder", "wait FILE:/src/x.ts lead by builder"}, got, "the watch on everything")
	// A reader of /src/ coexists with every holder, but lead, older and
	// queued below, conflicts: DIE by the queued senior.
	mustOK(t, "explain", c.Call(17, protocol.OpExplain, explainArgs("", "", "/src/", "CONSUMES")), &x)
	require.Equal(t, []string{"FILE:/ reader false", "FILE:/src/a/b.ts builder false", "FILE:/src/ builder false"}, holderText(x))
	require.Len(t, x.Queue, 1)
	require.Equal(t, protocol.WaiterInfo{AgentID: "lead", SessionID: "s", Priority: 10, Resource: "FILE:/src/x.ts", Predicate: "MUTATES",
		Since: x.Queue[0].Since, Deadline: x.Queue[0].Deadline, WaitsFor: "builder", Conflicts: true}, x.Queue[0])
	require.Equal(t, "DIE", x.Verdict)
	require.Equal(t, "4:senior-queued", x.Step)
	require.Equal(t, "lead", x.HeldBy)
	// On the root everything overlaps, /srcfoo.ts too.
	mustOK(t, "explain", c.Call(18, protocol.OpExplain, explainArgs("tester", "", "/", "MUTATES")), &x)
	require.Equal(t, []string{"FILE:/ reader true", "FILE:/src/a/b.ts builder true", "FILE:/srcfoo.ts builder true", "FILE:/src/ builder true"}, holderText(x))
	require.Len(t, x.Queue, 1)
	// On a plain file the folder leases above it are its holders.
	mustOK(t, "explain", c.Call(19, protocol.OpExplain, explainArgs("tester", "", "/src/x.ts", "CONSUMES")), &x)
	require.Equal(t, []string{"FILE:/ reader false", "FILE:/src/ builder false"}, holderText(x))
	require.Equal(t, "lead", x.HeldBy, "the queued senior on the file itself")

	// klockctl why shows each one's key when it is not the one explained.
	out := kcOK(t, d, nil, "why", "--agent", "tester", "FILE:/src/").stdout
	require.Regexp(t, `(?m)^HOLDER\s.*\sFENCE\s+ON$`, out)
	require.Regexp(t, `(?m)^reader\s+300\s+CONSUMES\s.*\syes\s+s\s+\d+\s+FILE:/$`, out)
	require.Regexp(t, `(?m)^builder\s+100\s+CONSUMES\s.*\syes\s+s\s+\d+\s+FILE:/src/a/b\.ts$`, out)
	require.Regexp(t, `(?m)^lead\s+10\s+MUTATES\s.*\sbuilder\s+yes\s+FILE:/src/x\.ts$`, out)
	// FILE:/ covers /srcfoo.ts: the root's reader is shown on its key, the
	// file's own holder on the file.
	out = kcOK(t, d, nil, "why", "--agent", "tester", "FILE:/srcfoo.ts").stdout
	require.Regexp(t, `(?m)^reader\s+300\s+CONSUMES\s.*\syes\s+s\s+\d+\s+FILE:/$`, out)
	require.Regexp(t, `(?m)^builder\s+100\s+CONSUMES\s.*\syes\s+s\s+\d+\s+FILE:/srcfoo\.ts$`, out)

	// Releasing the folders lets lead through.
	for i, id := range []string{root.LeaseID, sub.LeaseID} {
		c.Send(uint64(20+i), protocol.OpRelease, args(protocol.ArgLeaseID, id))
	}
	var granted protocol.Grant
	for range 3 {
		if resp := c.Recv(); resp.ID == 16 {
			mustOK(t, "lead granted", resp, &granted)
		} else {
			mustOK(t, "release", resp, nil)
		}
	}
	require.Equal(t, "FILE:/src/x.ts", granted.Resource)
	// With the root's lease gone, /srcfoo.ts has only its own holder: no
	// ON column. (The header ends at FENCE, whatever the fences' width.)
	out = kcOK(t, d, nil, "why", "--agent", "tester", "FILE:/srcfoo.ts").stdout
	require.Regexp(t, `(?m)^HOLDER\s.*\sFENCE$`, out, "only the key's own lease, no ON column")
	require.Regexp(t, `(?m)^builder\s+100\s+CONSUMES\s.*\syes\s+s\s+\d+$`, out)
	mustOK(t, "freeze", c.Call(22, protocol.OpFreeze, args(protocol.ArgResourceType, "FILE", protocol.ArgResourcePath, "/src/")), nil)
	mustOK(t, "thaw", c.Call(23, protocol.OpThaw, args(protocol.ArgResourceType, "FILE", protocol.ArgResourcePath, "/src/")), nil)

	want := []string{
		"grant FILE:/src/a/b.ts builder",
		"grant FILE:/src/ builder",
		"die FILE:/src/ tester by builder",
		"wait FILE:/src/x.ts lead by builder",
		"release FILE:/src/ builder",
		"grant FILE:/src/x.ts lead",
		"freeze FILE:/src/",
		"thaw FILE:/src/",
	}
	got = got[:0]
	for range want {
		got = append(got, summary(nextEvent(t, src, 1)))
	}
	require.Equal(t, want, got, "the watch on FILE:/src/")
	src.Send(2, protocol.OpHello, nil)
	require.Equal(t, uint64(2), src.Recv().ID, "no event of FILE:/ or FILE:/srcfoo.ts may reach the watch on FILE:/src/")
	// The watch on everything saw those too.
	got = got[:0]
	for range 5 {
		got = append(got, summary(nextEvent(t, all, 1)))
	}
	require.Equal(t, []string{"release FILE:/ reader", "release FILE:/src/ builder", "grant FILE:/src/x.ts lead",
		"freeze FILE:/src/", "thaw FILE:/src/"}, got, "the watch on everything")
}

// TestKlockctlWhyWithKeyAndClientPath: klockctl why with both of its
// optional columns at once: ON (a holder or queued request on another key
// than the one explained: a folder above it) and AS (the path a holder
// named, when it was keyed as another, protocol/README.md "FILE paths").
// Each value stays under its own header, with "-" where a holder named
// no other path, and the queue's rows keep their ON column.
func TestKlockctlWhyWithKeyAndClientPath(t *testing.T) {
	d := harness.Start(t, harness.Options{StateDir: "none"})
	c := d.Raw(t)
	registerRaw(t, c, []string{"lead", "wt-a", "tester", "reader"}, []int{10, 100, 200, 300})
	held := acquireArgs("wt-a", "s", "/repo/src/x.go", "CONSUMES", 60_000)
	held.ClientPath = "/repo-wt-a/src/x.go"
	held.Set(protocol.ArgClientPath)
	// Two readers: wt-a on the file, named in its worktree, and reader on
	// the folder above it.
	for i, a := range []*protocol.Args{held, acquireArgs("reader", "s", "/repo/", "CONSUMES", 60_000)} {
		var g protocol.Grant
		mustOK(t, "acquire", c.Call(uint64(10+i), protocol.OpAcquire, a), &g)
		require.True(t, g.Success, "%s granted", a.AgentID)
	}
	w := d.Raw(t)
	watchOn(t, w, 1, "lead", "")
	c.Send(12, protocol.OpAcquire, parkArgs("lead", "s", "/repo/src/x.go", "MUTATES", 60_000, 60_000))
	require.Equal(t, "wait", nextEvent(t, w, 1).Event, "lead parks")

	out := kcOK(t, d, nil, "why", "--agent", "tester", "FILE:/repo/src/x.go").stdout
	require.Regexp(t, `(?m)^HOLDER\s.*\sFENCE\s+ON\s+AS$`, out, "both optional columns, ON then AS")
	require.Regexp(t, `(?m)^wt-a\s+100\s+CONSUMES\s.*\syes\s+s\s+\d+\s+FILE:/repo/src/x\.go\s+/repo-wt-a/src/x\.go$`, out)
	require.Regexp(t, `(?m)^reader\s+300\s+CONSUMES\s.*\syes\s+s\s+\d+\s+FILE:/repo/\s+-$`, out)
	require.Regexp(t, `(?m)^QUEUED\s.*\sCONFLICTS\s+ON$`, out)
	require.Regexp(t, `(?m)^lead\s+10\s+MUTATES\s.*\s(wt-a|reader)\s+yes\s+FILE:/repo/src/x\.go$`, out)
	// The columns line up: each row's ON and AS start under their headers.
	lines := strings.Split(out, "\n")
	var head string
	for _, l := range lines {
		if strings.HasPrefix(l, "HOLDER") {
			head = l
		}
	}
	for _, l := range lines {
		if strings.HasPrefix(l, "wt-a ") {
			require.Equal(t, strings.Index(head, " ON ")+1, strings.Index(l, "FILE:"), "ON column of %q under %q", l, head)
			require.Equal(t, strings.Index(head, " AS")+1, strings.Index(l, "/repo-wt-a"), "AS column of %q under %q", l, head)
		}
	}
}

// holderText is explain's holders in short: "resource agent conflicts".
func holderText(x protocol.ExplainResult) []string {
	var out []string
	for _, h := range x.Holders {
		out = append(out, h.Resource+" "+h.AgentID+" "+map[bool]string{true: "true", false: "false"}[h.Conflicts])
	}
	return out
}

// TestDashboardSubtrees: the dashboard lists a lease on a folder key first
// in its folder, marked as covering the whole folder (in the folder's
// header too, so a folded folder still says it); a filter on a path
// inside it shows it; a senior waiting for it shows in who waits for whom.
func TestDashboardSubtrees(t *testing.T) {
	bctx := browser(t)
	d, url := startHTTP(t)
	c := d.Client(t)
	ctx := testCtx(t)
	registerAgents(t, ctx, c, map[string]int64{"lead": 10, "builder": 100, "reviewer": 300})
	take := func(agent, path, pred string) *clientlib.AcquireResult {
		t.Helper()
		r, err := c.AcquireLease(ctx, agent, "s", "FILE", path, pred, 10*time.Minute)
		require.NoError(t, err)
		require.True(t, r.Success, "%s on %s: %s", agent, path, r.Message)
		return r
	}
	take("reviewer", "/repo/docs/a.md", "CONSUMES")
	take("reviewer", "/repo/docs/b.md", "CONSUMES")
	srcLease := take("builder", "/repo/src/", "MUTATES")
	take("builder", "/repo/src/z.ts", "MUTATES") // builder's own session: re-entrant under its folder lease

	require.NoError(t, chromedp.Do(bctx,
		chromedp.Navigate(url+"/"),
		chromedp.WaitVisible(chromedp.CSS(`body[data-state="live"]`)),
	))
	require.Equal(t, 4, count(t, bctx, `tr[data-lease]`))
	firstIn := func(folder string) string {
		t.Helper()
		s, err := chromedp.Run(bctx, chromedp.Evaluate[string](`(() => {
			const g = [...document.querySelectorAll("tr.group")].find(r => r.dataset.folder === `+jsString(folder)+`);
			const n = g && g.nextElementSibling;
			return n && n.dataset.resource ? n.dataset.resource + " " + n.className : "";
		})()`))
		require.NoError(t, err)
		return s
	}
	require.Equal(t, "FILE:/repo/src/ subtree", firstIn("FILE:/repo/src/"), "the folder lease heads its folder")
	header := textOf(t, bctx, `tr.group[data-folder="FILE:/repo/src/"]`)
	require.Contains(t, header, "whole folder")
	require.Contains(t, header, "builder")
	header = textOf(t, bctx, `tr.group[data-folder="FILE:/repo/docs/"]`)
	require.NotContains(t, header, "whole folder")

	// After the page loaded: lead parks on a file under builder's folder,
	// and reviewer takes its own folder.
	go c.AcquireOnce(ctx, clientlib.AcquireRequest{AgentID: "lead", SessionID: "s", TTL: time.Minute, WaitTimeout: time.Minute,
		Intents: fileIntent("/repo/src/db.ts", "MUTATES")})
	wf := textOf(t, bctx, `#waits .wf`) // lead waits, from /events
	require.Contains(t, wf, "lead")
	require.Contains(t, wf, "waits for")
	require.Contains(t, wf, "builder")
	require.Contains(t, wf, "FILE:/repo/src/db.ts")
	take("reviewer", "/repo/docs/", "CONSUMES")
	require.NoError(t, chromedp.Do(bctx, chromedp.WaitVisible(chromedp.CSS(`tr.subtree[data-resource="FILE:/repo/docs/"]`))))
	require.Equal(t, "FILE:/repo/docs/ subtree", firstIn("FILE:/repo/docs/"))
	screenshot(t, bctx, "dashboard-subtrees.png")

	// A filter on a path inside a folder shows that folder's leases on it
	// and the folder lease covering it.
	require.NoError(t, chromedp.Do(bctx, chromedp.SendKeys(chromedp.CSS(`#filter`), "/repo/src/z.ts")))
	waitFor(t, "the filter to narrow the list", func() bool { return count(t, bctx, `tr[data-lease]`) == 2 })
	require.Equal(t, 1, count(t, bctx, `tr.subtree[data-resource="FILE:/repo/src/"]`))
	require.Equal(t, 1, count(t, bctx, `tr[data-resource="FILE:/repo/src/z.ts"]`))

	// Releasing the folder lets lead through: its lease appears, the
	// folder lease goes.
	_, err := chromedp.Run(bctx, chromedp.Evaluate[bool](`(() => { const f = document.getElementById("filter"); f.value = ""; return f.dispatchEvent(new Event("input")); })()`))
	require.NoError(t, err)
	waitFor(t, "the filter to be cleared", func() bool { return count(t, bctx, `tr[data-lease]`) == 5 })
	for _, l := range []string{srcLease.LeaseID} {
		_, err := c.ReleaseLease(ctx, l)
		require.NoError(t, err)
	}
	ls, _, err := c.ListLeases(ctx, clientlib.LeaseFilter{Prefix: "FILE:/repo/src/z.ts"})
	require.NoError(t, err)
	_, err = c.ReleaseLease(ctx, ls[0].LeaseID)
	require.NoError(t, err)
	require.NoError(t, chromedp.Do(bctx, chromedp.WaitNotPresent(chromedp.CSS(`tr[data-resource="FILE:/repo/src/"]`))))
	text := leaseRow(t, bctx, "FILE:/repo/src/db.ts")
	require.True(t, strings.Contains(text, "lead"), text)
}

// jsString quotes s as a JavaScript string literal.
func jsString(s string) string {
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(s) + `"`
}

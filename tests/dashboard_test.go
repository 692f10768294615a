package tests

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/stretchr/testify/require"

	"github.com/klockd/klock/clientlib"
	"github.com/klockd/klock/protocol"
)

// chromium returns the path of Debian's chromium, or skips the test
// outside CI when it is missing (CI installs it: .ci/run).
func chromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("CI") != "" {
		t.Fatal("chromium is not installed; CI must have it (apt-get install -y chromium)")
	}
	t.Skip("chromium is not installed (apt-get install -y chromium); the dashboard test needs a real browser; skipped outside CI")
	return ""
}

// artifactDir is where tests keep what a person should look at: the
// dashboard's screenshots. $KLOCK_ARTIFACTS, else tests/artifacts/.
func artifactDir(t *testing.T) string {
	dir := os.Getenv("KLOCK_ARTIFACTS")
	if dir == "" {
		_, file, _, _ := runtime.Caller(0)
		dir = filepath.Join(filepath.Dir(file), "artifacts")
	}
	require.NoError(t, os.MkdirAll(dir, 0o755))
	return dir
}

// browser starts headless Chromium with a fresh profile, and no network
// but this machine: no background networking, component updates, sync or
// first-run pages. As root it needs --no-sandbox.
func browser(t *testing.T) context.Context {
	t.Helper()
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(chromium(t)),
		chromedp.Headless,
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.UserDataDir(t.TempDir()),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-default-apps", true),
		chromedp.Flag("disable-extensions", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.Flag("disable-gpu", true),
		chromedp.Flag("hide-scrollbars", true),
		chromedp.WindowSize(1500, 900),
	}
	if os.Geteuid() == 0 {
		opts = append(opts, chromedp.NoSandbox)
	}
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(actx)
	t.Cleanup(func() { cancel(); cancelAlloc() })
	tctx, tcancel := context.WithTimeout(ctx, 90*time.Second)
	t.Cleanup(tcancel)
	require.NoError(t, chromedp.Do(tctx), "starting chromium")
	return tctx
}

// screenshot saves the page as name in the artifact directory.
func screenshot(t *testing.T, ctx context.Context, name string) {
	t.Helper()
	png, err := chromedp.Run(ctx, chromedp.CaptureScreenshot())
	require.NoError(t, err)
	path := filepath.Join(artifactDir(t), name)
	require.NoError(t, os.WriteFile(path, png, 0o644))
	t.Logf("screenshot: %s", path)
}

// count returns how many elements match a CSS selector.
func count(t *testing.T, ctx context.Context, selector string) int {
	t.Helper()
	n, err := chromedp.Run(ctx, chromedp.Evaluate[int](fmt.Sprintf("document.querySelectorAll(%q).length", selector)))
	require.NoError(t, err)
	return n
}

// team sets up the scene of the dashboard's screenshot: five agents,
// leases over a few folders, a denied junior and a senior waiting.
func team(t *testing.T, ctx context.Context, c *clientlib.Client) {
	t.Helper()
	registerAgents(t, ctx, c, map[string]int64{"lead": 10, "builder": 100, "tester": 200, "reviewer": 300, "docs-bot": 400})
	take := func(agent, pred string, ttl time.Duration, keys ...string) {
		for _, k := range keys {
			typ, path := "FILE", k
			if k[0] != '/' {
				typ, path = k[:indexByte(k, ':')], k[indexByte(k, ':')+1:]
			}
			_, err := c.AcquireOnce(ctx, clientlib.AcquireRequest{AgentID: agent, SessionID: "s", TTL: ttl,
				Intents: []clientlib.Intent{{ResourceType: typ, ResourcePath: path, Predicate: pred}}})
			require.NoError(t, err)
		}
	}
	take("builder", "MUTATES", 10*time.Minute, "/repo/src/auth.ts", "/repo/src/db.ts", "/repo/src/api/routes.ts",
		"/repo/src/api/users.ts", "/repo/src/ui/App.tsx", "SYMBOL:auth.login", "DATABASE_TABLE:users")
	take("tester", "MUTATES", 3*time.Minute, "/repo/test/auth.test.ts", "/repo/test/db.test.ts", "/repo/test/e2e/login.spec.ts")
	take("reviewer", "CONSUMES", 90*time.Second, "/repo/docs/setup.md", "/repo/src/api/orders.ts")
	take("docs-bot", "PROVIDES", 40*time.Second, "/repo/README.md", "/repo/docs/api.md")
	// lead (the oldest) parks on builder's db.ts: "lead waits for builder".
	go c.AcquireOnce(ctx, clientlib.AcquireRequest{AgentID: "lead", SessionID: "s", TTL: time.Minute, WaitTimeout: time.Minute,
		Intents: []clientlib.Intent{{ResourceType: "FILE", ResourcePath: "/repo/src/db.ts", Predicate: "MUTATES"}}})
	waitForStats(t, ctx, c, "lead to wait", func(st *protocol.StatsResult) bool { return st.Waiters == 1 })
}

func indexByte(s string, b byte) int {
	for i := 0; i < len(s); i++ {
		if s[i] == b {
			return i
		}
	}
	return -1
}

// TestDashboardInChromium loads the dashboard in headless Chromium, takes
// a lease after the page has loaded and checks it appears in the DOM (it
// can only come from /events), then that a release removes it; the
// screenshots are kept as artifacts.
func TestDashboardInChromium(t *testing.T) {
	bctx := browser(t)
	d, url := startHTTP(t)
	c := d.Client(t)
	ctx := testCtx(t)
	team(t, ctx, c)

	require.NoError(t, chromedp.Do(bctx,
		chromedp.Navigate(url+"/"),
		chromedp.WaitVisible(chromedp.CSS(`body[data-state="live"]`)),
	))
	require.Equal(t, 0, count(t, bctx, `tr[data-resource="FILE:/late/after-load.ts"]`))
	require.Equal(t, 14, count(t, bctx, `tr[data-lease]`), "every lease of the scene is listed")
	require.Equal(t, 1, count(t, bctx, `#waits .wf`), "lead waits for builder")
	external, err := chromedp.Run(bctx, chromedp.Evaluate[[]string](
		`performance.getEntriesByType("resource").map(e => e.name).filter(u => !u.startsWith(location.origin))`))
	require.NoError(t, err)
	require.Empty(t, external, "the page loads nothing from anywhere but klockd")

	// A few events for the log: tester dies on builder's file, docs-bot
	// releases one and takes another.
	res, err := c.AcquireLease(ctx, "tester", "s", "FILE", "/repo/src/auth.ts", "MUTATES", time.Minute)
	require.NoError(t, err)
	require.Equal(t, string(protocol.ReasonDie), string(res.Reason))
	ls, _, err := c.ListLeases(ctx, clientlib.LeaseFilter{Prefix: "FILE:/repo/README.md"})
	require.NoError(t, err)
	_, err = c.ReleaseLease(ctx, ls[0].LeaseID)
	require.NoError(t, err)
	_, err = c.AcquireLease(ctx, "docs-bot", "s", "FILE", "/repo/docs/changelog.md", "MUTATES", 5*time.Minute)
	require.NoError(t, err)

	l, err := c.AcquireLease(ctx, "reviewer", "s", "FILE", "/late/after-load.ts", "MUTATES", time.Minute)
	require.NoError(t, err)
	require.True(t, l.Success)
	text := leaseRow(t, bctx, "FILE:/late/after-load.ts") // a lease taken after the page loaded appears, from /events
	require.Contains(t, text, "reviewer")
	require.Contains(t, text, "MUTATES")
	require.NoError(t, chromedp.Do(bctx, chromedp.WaitVisible(chromedp.CSS(`#events .k.die`))), "the die event is in the log")
	screenshot(t, bctx, "dashboard.png")

	ok, err := c.ReleaseLease(ctx, l.LeaseID)
	require.NoError(t, err)
	require.True(t, ok)
	require.NoError(t, chromedp.Do(bctx, chromedp.WaitNotPresent(chromedp.CSS(`tr[data-resource="FILE:/late/after-load.ts"]`))),
		"a released lease must disappear")
}

// TestDashboardWith500Leases: the page lists 500 leases grouped by folder,
// and its filter narrows them.
func TestDashboardWith500Leases(t *testing.T) {
	bctx := browser(t)
	d, url := startHTTP(t)
	c := d.Client(t)
	ctx := testCtx(t)
	agents := map[string]int64{}
	for i := 0; i < 10; i++ {
		agents[fmt.Sprintf("agent-%02d", i)] = int64(100 + i)
	}
	registerAgents(t, ctx, c, agents)
	for i := 0; i < 500; i++ {
		_, err := c.AcquireOnce(ctx, clientlib.AcquireRequest{AgentID: fmt.Sprintf("agent-%02d", i%10), SessionID: "s",
			TTL:     time.Duration(1+i%20) * time.Minute,
			Intents: []clientlib.Intent{{ResourceType: "FILE", ResourcePath: fmt.Sprintf("/repo/pkg%02d/file%03d.go", i%25, i), Predicate: "MUTATES"}}})
		require.NoError(t, err)
	}
	require.NoError(t, chromedp.Do(bctx,
		chromedp.Navigate(url+"/"),
		chromedp.WaitVisible(chromedp.CSS(`body[data-state="live"]`)),
	))
	require.Equal(t, 500, count(t, bctx, `tr[data-lease]`))
	require.Equal(t, 25, count(t, bctx, `tr.group`), "grouped by folder")
	screenshot(t, bctx, "dashboard-500.png")
	require.NoError(t, chromedp.Do(bctx, chromedp.Click(chromedp.CSS(`#fold`))))
	require.Equal(t, 0, count(t, bctx, `tr[data-lease]`), "fold all leaves the 25 folders")
	require.Equal(t, 25, count(t, bctx, `tr.group`))
	require.NoError(t, chromedp.Do(bctx, chromedp.Click(chromedp.CSS(`#fold`)), chromedp.SendKeys(chromedp.CSS(`#filter`), "pkg07/")))
	waitFor(t, "the filter to narrow the list", func() bool { return count(t, bctx, `tr[data-lease]`) == 20 })
}

// apiLease fetches /api/state and returns its lease on resource, or nil.
func apiLease(t *testing.T, url, resource string) *protocol.LeaseInfo {
	t.Helper()
	resp, err := http.Get(url + "/api/state")
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	var st struct {
		Leases []protocol.LeaseInfo `json:"leases"`
	}
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&st))
	for i := range st.Leases {
		if st.Leases[i].Resource == resource {
			return &st.Leases[i]
		}
	}
	return nil
}

// leaseRow waits for the dashboard's row of the lease on resource and
// returns its text.
func leaseRow(t *testing.T, bctx context.Context, resource string) string {
	t.Helper()
	return textOf(t, bctx, fmt.Sprintf(`tr[data-resource=%q]`, resource))
}

// textOf waits for an element to be visible and returns its text. It reads
// the text in one script, not by node id as chromedp.Text does: the page
// renders its lists anew every 100 ms, so a node found a moment earlier
// may be gone ("No node with given id found").
func textOf(t *testing.T, bctx context.Context, selector string) string {
	t.Helper()
	require.NoError(t, chromedp.Do(bctx, chromedp.WaitVisible(chromedp.CSS(selector))), "waiting for %s", selector)
	text, err := chromedp.Run(bctx, chromedp.Evaluate[string](fmt.Sprintf("document.querySelector(%q)?.innerText ?? ''", selector)))
	require.NoError(t, err)
	require.NotEmpty(t, text, "the text of %s", selector)
	return text
}

// TestDashboardShowsProcessBoundLeases: a lease bound to its process
// (bind "process", as clientlib takes it, here without a ttl) is in
// /api/state with its bound_pid and no expiry, and on the page as lasting
// until that process exits, named by its pid, whether it was granted
// before the page loaded (from /api/state) or after (from /events, whose
// grant has expires_at 0 and bound_pid); when its process is killed,
// klockd's end event removes its row.
func TestDashboardShowsProcessBoundLeases(t *testing.T) {
	bctx := browser(t)
	d, url := startHTTP(t)
	ctx := testCtx(t)
	registerAgents(t, ctx, d.Client(t), map[string]int64{"early-bird": 100, "latecomer": 200})
	early := startHolder(t, d, "early-bird", "/bound/early.ts", "0", "wait")
	l := apiLease(t, url, "FILE:/bound/early.ts")
	require.NotNil(t, l, "/api/state lists the bound lease")
	require.Equal(t, int32(early.grant.PID), l.BoundPID, "/api/state names the process the lease is bound to")
	require.Zero(t, l.ExpiresAt, "a bound lease without a ttl has no expiry")

	require.NoError(t, chromedp.Do(bctx,
		chromedp.Navigate(url+"/"),
		chromedp.WaitVisible(chromedp.CSS(`body[data-state="live"]`)),
	))
	text := leaseRow(t, bctx, "FILE:/bound/early.ts")
	require.Contains(t, text, "early-bird")
	require.Contains(t, text, fmt.Sprintf("until process %d exits", early.grant.PID))

	late := startHolder(t, d, "latecomer", "/bound/late.ts", "0", "wait")
	text = leaseRow(t, bctx, "FILE:/bound/late.ts")
	require.Contains(t, text, "latecomer")
	require.Contains(t, text, fmt.Sprintf("until process %d exits", late.grant.PID))
	screenshot(t, bctx, "dashboard-bound.png")

	late.kill(t)
	require.NoError(t, chromedp.Do(bctx, chromedp.WaitNotPresent(chromedp.CSS(`tr[data-resource="FILE:/bound/late.ts"]`))),
		"the lease of a killed process must disappear (the end event)")
	require.Equal(t, 1, count(t, bctx, `tr[data-resource="FILE:/bound/early.ts"]`), "the other bound lease stays")
}

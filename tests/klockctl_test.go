package tests

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/klockd/klock/tests/harness"
)

// kcCommand returns an unstarted klockctl with args, talking to d (when
// not nil) through KLOCK_SOCKET, in testEnv so that the test's own KLOCK_*
// variables cannot leak in.
func kcCommand(t *testing.T, d *harness.Daemon, env []string, args ...string) *exec.Cmd {
	t.Helper()
	_, bin := harness.Binaries(t)
	cmd := exec.Command(bin, args...)
	cmd.Env = testEnv()
	if d != nil {
		cmd.Env = append(cmd.Env, "KLOCK_SOCKET="+d.Socket)
	}
	cmd.Env = append(cmd.Env, env...)
	return cmd
}

// kc runs klockctl to completion (at most cmdTimeout) and returns what it did.
func kc(t *testing.T, d *harness.Daemon, args ...string) cmdResult {
	t.Helper()
	return runCmd(t, kcCommand(t, d, nil, args...))
}

// kcProc is a klockctl started in the background.
type kcProc struct {
	cmd       *exec.Cmd
	out, errb bytes.Buffer
}

// kcStart starts klockctl with args against d without waiting for it.
func kcStart(t *testing.T, d *harness.Daemon, args ...string) *kcProc {
	t.Helper()
	p := &kcProc{cmd: kcCommand(t, d, nil, args...)}
	p.cmd.Stdout, p.cmd.Stderr = &p.out, &p.errb
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %q: %v", p.cmd.Args, err)
	}
	return p
}

// wait waits for p to exit (at most cmdTimeout) and returns what it did.
func (p *kcProc) wait(t *testing.T) cmdResult {
	t.Helper()
	return waitCmd(t, p.cmd, &p.out, &p.errb)
}

// kcOK runs klockctl, requires exit 0, and decodes its --json output into v
// when v is not nil.
func kcOK(t *testing.T, d *harness.Daemon, v any, args ...string) cmdResult {
	t.Helper()
	r := kc(t, d, args...)
	if r.code != 0 {
		t.Fatalf("klockctl %q exited %d; want 0 (stderr %q)", args, r.code, r.stderr)
	}
	if v != nil {
		if err := json.Unmarshal([]byte(r.stdout), v); err != nil {
			t.Fatalf("klockctl %q printed %q: not JSON: %v", args, r.stdout, err)
		}
	}
	return r
}

// kcExpect runs klockctl and requires exit code want and one line on
// stderr containing every part.
func kcExpect(t *testing.T, d *harness.Daemon, want int, parts []string, args ...string) cmdResult {
	t.Helper()
	r := kc(t, d, args...)
	if r.code != want {
		t.Fatalf("klockctl %q exited %d; want %d (stdout %q, stderr %q)", args, r.code, want, r.stdout, r.stderr)
	}
	if strings.Count(r.stderr, "\n") != 1 {
		t.Errorf("klockctl %q stderr = %q; want exactly one line", args, r.stderr)
	}
	for _, p := range parts {
		if !strings.Contains(r.stderr, p) {
			t.Errorf("klockctl %q stderr = %q; want it to contain %q", args, r.stderr, p)
		}
	}
	return r
}

// kcLease is a lease as klockctl --json prints it (the protocol's keys).
type kcLease struct {
	Success    bool   `json:"success"`
	LeaseID    string `json:"lease_id"`
	AgentID    string `json:"agent_id"`
	SessionID  string `json:"session_id"`
	Resource   string `json:"resource"`
	Predicate  string `json:"predicate"`
	AcquiredAt int64  `json:"acquired_at"`
	ExpiresAt  int64  `json:"expires_at"`
	Fence      uint64 `json:"fence"`
	OwnerUID   uint32 `json:"owner_uid"`
	OwnerPID   int32  `json:"owner_pid"`
	BoundPID   int32  `json:"bound_pid"`
}

type kcLeases struct {
	Leases    []kcLease `json:"leases"`
	Truncated bool      `json:"truncated"`
}

type kcDenial struct {
	Success bool   `json:"success"`
	Reason  string `json:"reason"`
	HeldBy  string `json:"held_by"`
	Message string `json:"message"`
}

type kcAgents struct {
	Agents []struct {
		AgentID  string `json:"agent_id"`
		Priority int64  `json:"priority"`
		Leases   int    `json:"leases"`
		Waiting  int    `json:"waiting"`
	} `json:"agents"`
	Truncated bool `json:"truncated"`
}

// kcWaitUntilQueued waits until agent, the oldest of the daemon's agents,
// has a request queued in the daemon.
func kcWaitUntilQueued(t *testing.T, d *harness.Daemon, agent string) {
	t.Helper()
	waitFor(t, agent+" to wait in the daemon", func() bool {
		var as kcAgents
		kcOK(t, d, &as, "agents", "--json")
		return len(as.Agents) > 0 && as.Agents[0].AgentID == agent && as.Agents[0].Waiting == 1
	})
}

// kcCount returns the daemon's active lease count through klockctl.
func kcCount(t *testing.T, d *harness.Daemon) int {
	t.Helper()
	var c struct{ Count int }
	kcOK(t, d, &c, "count", "--json")
	return c.Count
}

// kcYoungHolds registers old (priority 1) and young (priority 2), and
// returns the lease young takes on path.
func kcYoungHolds(t *testing.T, d *harness.Daemon, old, young, path string) kcLease {
	t.Helper()
	kcOK(t, d, nil, "agents", "register", old, "--priority", "1")
	kcOK(t, d, nil, "agents", "register", young, "--priority", "2")
	var held kcLease
	kcOK(t, d, &held, "acquire", "--json", "--agent", young, path)
	return held
}

func TestKlockctlStatusVersionCountEvict(t *testing.T) {
	d := harness.Start(t, harness.Options{StateDir: "none"})
	var st struct {
		Socket string
		Hello  struct {
			Server   string
			Protocol int
			PID      int
		}
		Stats struct{ Connections, Leases int }
	}
	kcOK(t, d, &st, "status", "--json")
	if st.Socket != d.Socket || st.Hello.Protocol != 1 || st.Hello.PID != d.Cmd.Process.Pid || st.Stats.Connections < 1 {
		t.Errorf("status --json = %+v; want socket %s, protocol 1, pid %d, a connection", st, d.Socket, d.Cmd.Process.Pid)
	}
	r := kcOK(t, d, nil, "status")
	for _, want := range []string{"daemon", d.Socket, "fence", "leases"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("status = %q; want it to show %q", r.stdout, want)
		}
	}
	// --socket wins over KLOCK_SOCKET.
	r = runCmd(t, kcCommand(t, nil, []string{"KLOCK_SOCKET=/nonexistent/k.sock"}, "status", "--socket", d.Socket))
	if r.code != 0 {
		t.Errorf("status --socket with a wrong KLOCK_SOCKET exited %d (stderr %q); want --socket to win", r.code, r.stderr)
	}

	var v struct {
		Version  string
		Protocol int
	}
	kcOK(t, nil, &v, "version", "--json")
	if v.Version == "" || v.Protocol != 1 {
		t.Errorf("version --json = %+v", v)
	}
	if n := kcCount(t, d); n != 0 {
		t.Errorf("count = %d on a fresh daemon; want 0", n)
	}
	if r := kcOK(t, d, nil, "count"); r.stdout != "0\n" {
		t.Errorf("count = %q; want %q", r.stdout, "0\n")
	}
	var ev struct{ Evicted *int }
	kcOK(t, d, &ev, "evict", "--json")
	if ev.Evicted == nil || *ev.Evicted != 0 {
		t.Errorf("evict --json = %+v; want evicted 0", ev)
	}
}

func TestKlockctlExitCodes(t *testing.T) {
	d := harness.Start(t, harness.Options{StateDir: "none"})
	kcExpect(t, d, 2, []string{"unknown command"}, "frobnicate")
	kcExpect(t, d, 2, []string{"--help"}, "leases", "--limit", "many")
	kcExpect(t, d, 2, []string{"unknown resource type"}, "acquire", "SYMBL:x")
	kcExpect(t, d, 2, []string{"COMMAND"}, "run", "/a")

	sock := filepath.Join(t.TempDir(), "nobody.sock")
	for _, args := range [][]string{{"status"}, {"leases", "--json"}, {"run", "/a", "--", "true"}} {
		r := kcExpect(t, nil, 3, []string{sock, "klockd"}, append([]string{args[0], "--socket", sock}, args[1:]...)...)
		if r.stdout != "" {
			t.Errorf("klockctl %q stdout = %q; want nothing", args, r.stdout)
		}
	}

	r := kcOK(t, d, nil, "acquire", "--help")
	for _, flag := range []string{"--agent", "--session", "--predicate", "--ttl", "--wait", "--idem", "--socket", "--json"} {
		if !strings.Contains(r.stdout, flag) {
			t.Errorf("acquire --help does not document %s", flag)
		}
	}
}

func TestKlockctlAcquireListHeartbeatRelease(t *testing.T) {
	d := harness.Start(t, harness.Options{StateDir: "none"})
	var many struct {
		Success bool
		Leases  []kcLease
	}
	kcOK(t, d, &many, "acquire", "--json", "--agent", "alice", "--session", "s1", "--ttl", "1m",
		"/src/a.go", "SYMBOL:auth.Login")
	if !many.Success || len(many.Leases) != 2 {
		t.Fatalf("acquire of 2 resources --json = %+v; want 2 leases", many)
	}
	a, s := many.Leases[0], many.Leases[1]
	if a.Resource != "FILE:/src/a.go" || s.Resource != "SYMBOL:auth.Login" || a.AgentID != "alice" ||
		a.SessionID != "s1" || a.Predicate != "MUTATES" || s.Fence <= a.Fence || a.LeaseID == "" {
		t.Errorf("acquire leases = %+v; want FILE:/src/a.go then SYMBOL:auth.Login, alice/s1, MUTATES, growing fences", many.Leases)
	}

	var one kcLease
	kcOK(t, d, &one, "acquire", "--json", "--agent", "bob", "--predicate", "consumes", "--ttl", "30s", "DATABASE_TABLE:users")
	if !one.Success || one.Resource != "DATABASE_TABLE:users" || one.Predicate != "CONSUMES" {
		t.Errorf("acquire of 1 resource --json = %+v", one)
	}
	// The human form starts with the lease id.
	r := kcOK(t, d, nil, "acquire", "--agent", "bob", "CONFIG_KEY:db.url")
	id := strings.Fields(r.stdout)[0]
	if len(id) != 36 || !strings.Contains(r.stdout, "CONFIG_KEY:db.url") {
		t.Errorf("acquire = %q; want the lease id first, then the resource", r.stdout)
	}
	if r := kcOK(t, d, nil, "acquire", "-q", "--agent", "bob", "CONFIG_KEY:x"); len(strings.TrimSpace(r.stdout)) != 36 {
		t.Errorf("acquire -q = %q; want only the lease id", r.stdout)
	}

	var all kcLeases
	kcOK(t, d, &all, "leases", "--json")
	if len(all.Leases) != 5 || all.Truncated {
		t.Fatalf("leases --json = %+v; want 5, not truncated", all)
	}
	if all.Leases[0].OwnerUID != uint32(os.Getuid()) || all.Leases[0].OwnerPID == 0 {
		t.Errorf("lease owner = uid %d pid %d; want uid %d and the klockctl pid", all.Leases[0].OwnerUID, all.Leases[0].OwnerPID, os.Getuid())
	}
	var filtered kcLeases
	kcOK(t, d, &filtered, "leases", "--json", "--agent", "alice")
	if len(filtered.Leases) != 2 {
		t.Errorf("leases --agent alice = %d leases; want 2", len(filtered.Leases))
	}
	kcOK(t, d, &filtered, "leases", "--json", "--prefix", "/src/")
	if len(filtered.Leases) != 1 || filtered.Leases[0].LeaseID != a.LeaseID {
		t.Errorf("leases --prefix /src/ = %+v; want only %s", filtered.Leases, a.LeaseID)
	}
	kcOK(t, d, &filtered, "leases", "--json", "--limit", "2")
	if len(filtered.Leases) != 2 || !filtered.Truncated {
		t.Errorf("leases --limit 2 = %d leases, truncated %v; want 2, truncated", len(filtered.Leases), filtered.Truncated)
	}
	table := kcOK(t, d, nil, "leases").stdout
	lines := strings.Split(strings.TrimSpace(table), "\n")
	if len(lines) != 6 || !strings.HasPrefix(lines[0], "RESOURCE") || !strings.Contains(table, a.LeaseID) {
		t.Errorf("leases table =\n%s\nwant a header and 5 rows", table)
	}
	if col := strings.Index(lines[0], "AGENT"); col < 0 || !strings.HasPrefix(lines[1][col:], "alice") && !strings.HasPrefix(lines[1][col:], "bob") {
		t.Errorf("leases table columns are not aligned:\n%s", table)
	}

	var hb struct {
		LeaseID   string `json:"lease_id"`
		ExpiresAt int64  `json:"expires_at"`
	}
	kcOK(t, d, &hb, "heartbeat", a.LeaseID, "--ttl", "10m", "--json")
	if hb.LeaseID != a.LeaseID || hb.ExpiresAt < a.ExpiresAt+8*60*1000 {
		t.Errorf("heartbeat --ttl 10m = %+v; want expires_at about 9 minutes later than %d", hb, a.ExpiresAt)
	}

	var rel struct{ Released bool }
	kcOK(t, d, &rel, "release", a.LeaseID, "--json")
	if !rel.Released {
		t.Errorf("release --json = %+v; want released", rel)
	}
	// Releasing it again changes nothing but exits 1, so that a script
	// notices a mistyped id (issue 19).
	r = kcExpect(t, d, 1, []string{a.LeaseID, "was not active (unknown, released or expired)"}, "release", a.LeaseID)
	if r.stdout != "" {
		t.Errorf("second release printed %q on stdout; want only the stderr line", r.stdout)
	}
	r = kc(t, d, "release", "--json", "no-such-lease")
	if r.code != 1 || strings.TrimSpace(r.stdout) != `{"released":false}` && !strings.Contains(r.stdout, `"released": false`) {
		t.Errorf("release --json of an unknown id: exit %d, stdout %q; want exit 1 and released false", r.code, r.stdout)
	}
	kcExpect(t, d, 1, []string{"not active"}, "heartbeat", a.LeaseID)
	if n := kcCount(t, d); n != 4 {
		t.Errorf("count after one release = %d; want 4", n)
	}
}

func TestKlockctlDenied(t *testing.T) {
	d := harness.Start(t, harness.Options{StateDir: "none"})
	kcOK(t, d, nil, "agents", "register", "senior", "--priority", "100")
	kcOK(t, d, nil, "agents", "register", "junior", "--priority", "200")
	kcOK(t, d, nil, "acquire", "--agent", "senior", "/src/auth.ts")

	kcExpect(t, d, 1, []string{"DIE", "senior"}, "acquire", "--agent", "junior", "/src/auth.ts")
	var den kcDenial
	r := kc(t, d, "acquire", "--json", "--agent", "junior", "/src/auth.ts", "/src/other.ts")
	if r.code != 1 {
		t.Fatalf("denied acquire_many --json exited %d; want 1", r.code)
	}
	if err := json.Unmarshal([]byte(r.stdout), &den); err != nil || den.Success || den.Reason != "DIE" || den.HeldBy != "senior" {
		t.Errorf("denied acquire --json = %q (%v); want success false, DIE, held_by senior", r.stdout, err)
	}
	// All or nothing: the free resource was not taken.
	if n := kcCount(t, d); n != 1 {
		t.Errorf("count after a denied acquire_many = %d; want 1", n)
	}
}

func TestKlockctlAcquireWaitsForRelease(t *testing.T) {
	d := harness.Start(t, harness.Options{StateDir: "none"})
	held := kcYoungHolds(t, d, "senior", "junior", "/r")

	p := kcStart(t, d, "acquire", "--json", "--agent", "senior", "--wait", "25s", "/r")
	kcWaitUntilQueued(t, d, "senior")
	kcOK(t, d, nil, "release", held.LeaseID)
	r := p.wait(t)
	var got kcLease
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &got) != nil || got.AgentID != "senior" || got.Fence <= held.Fence {
		t.Errorf("waiting acquire = %d, %q, %q; want the senior granted after the release", r.code, r.stdout, r.stderr)
	}
}

func TestKlockctlAgents(t *testing.T) {
	d := harness.Start(t, harness.Options{StateDir: "none"})
	var reg struct {
		AgentID  string `json:"agent_id"`
		Priority int64
	}
	kcOK(t, d, &reg, "agents", "register", "--json", "--priority", "7", "a1")
	if reg.AgentID != "a1" || reg.Priority != 7 {
		t.Errorf("agents register --json = %+v; want a1 priority 7", reg)
	}
	kcOK(t, d, &reg, "agents", "register", "--json", "a2")
	if reg.Priority <= 7 {
		t.Errorf("agents register without --priority = %+v; want the registration time in ms", reg)
	}
	kcOK(t, d, nil, "acquire", "--agent", "a1", "/x")
	kcExpect(t, d, 1, []string{"PRIORITY_CONFLICT"}, "agents", "register", "a1", "--priority", "9")
	kcExpect(t, d, 1, []string{"PRIORITY_CONFLICT"}, "agents", "unregister", "a1")

	var as kcAgents
	kcOK(t, d, &as, "agents", "--json")
	if len(as.Agents) != 2 || as.Agents[0].AgentID != "a1" || as.Agents[0].Leases != 1 || as.Agents[1].AgentID != "a2" {
		t.Errorf("agents --json = %+v; want a1 (1 lease) then a2", as)
	}
	kcOK(t, d, &as, "agents", "--json", "--limit", "1")
	if len(as.Agents) != 1 || !as.Truncated {
		t.Errorf("agents --limit 1 = %+v; want 1, truncated", as)
	}
	if table := kcOK(t, d, nil, "agents").stdout; !strings.HasPrefix(table, "AGENT") || !strings.Contains(table, "a2") {
		t.Errorf("agents table = %q", table)
	}
	var un struct{ Unregistered bool }
	kcOK(t, d, &un, "agents", "unregister", "a2", "--json")
	if !un.Unregistered {
		t.Errorf("agents unregister a2 = %+v; want true", un)
	}
	kcOK(t, d, &un, "agents", "unregister", "a2", "--json")
	if un.Unregistered {
		t.Errorf("second agents unregister a2 = %+v; want false", un)
	}
}

func TestKlockctlEndSession(t *testing.T) {
	d := harness.Start(t, harness.Options{StateDir: "none"})
	kcOK(t, d, nil, "acquire", "--agent", "a", "--session", "s", "/x", "/y")
	var es struct{ Released int }
	kcOK(t, d, &es, "end-session", "a", "s", "--json")
	if es.Released != 2 {
		t.Errorf("end-session --json = %+v; want released 2", es)
	}
	kcExpect(t, d, 1, []string{"SESSION_EXPIRED"}, "acquire", "--agent", "a", "--session", "s", "/x")
}

func TestKlockctlAdmin(t *testing.T) {
	d := harness.Start(t, harness.Options{StateDir: "none"})
	// The tests run as the daemon's uid, which may use the admin ops.
	var l kcLease
	kcOK(t, d, &l, "acquire", "--json", "--agent", "a", "/held")
	var rv struct{ Revoked bool }
	kcOK(t, d, &rv, "revoke", "--json", l.LeaseID)
	if !rv.Revoked || kcCount(t, d) != 0 {
		t.Errorf("revoke --json = %+v; want revoked and no lease left", rv)
	}
	kcOK(t, d, &rv, "revoke", "--json", l.LeaseID)
	if rv.Revoked {
		t.Errorf("second revoke = %+v; want false", rv)
	}

	var fr struct {
		Resource string
		Frozen   bool
	}
	kcOK(t, d, &fr, "freeze", "--json", "SYMBOL:pay")
	if !fr.Frozen || fr.Resource != "SYMBOL:pay" {
		t.Errorf("freeze --json = %+v; want SYMBOL:pay frozen", fr)
	}
	kcExpect(t, d, 1, []string{"RESOURCE_LOCKED"}, "acquire", "--agent", "a", "symbol:pay")
	kcOK(t, d, &fr, "thaw", "--json", "SYMBOL:pay")
	if fr.Frozen {
		t.Errorf("thaw --json = %+v; want frozen false", fr)
	}
	kcOK(t, d, nil, "acquire", "--agent", "a", "SYMBOL:pay")
}

// TestKlockctlAcquireWaitRetriesDie checks that a junior's acquire --wait
// keeps retrying DIE until the senior releases.
func TestKlockctlAcquireWaitRetriesDie(t *testing.T) {
	d := harness.Start(t, harness.Options{StateDir: "none"})
	kcOK(t, d, nil, "agents", "register", "senior", "--priority", "1")
	kcOK(t, d, nil, "agents", "register", "junior", "--priority", "2")
	var held kcLease
	kcOK(t, d, &held, "acquire", "--json", "--agent", "senior", "/r")

	p := kcStart(t, d, "acquire", "--json", "--agent", "junior", "--wait", "25s", "/r")
	// The junior is told DIE at least once before the release.
	waitFor(t, "a DIE for the junior", func() bool {
		var st struct{ Stats struct{ Dies int } }
		kcOK(t, d, &st, "status", "--json")
		return st.Stats.Dies > 0
	})
	kcOK(t, d, nil, "release", held.LeaseID)
	r := p.wait(t)
	var got kcLease
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &got) != nil || got.AgentID != "junior" {
		t.Errorf("junior acquire --wait = %d, %q, %q; want granted after the senior released", r.code, r.stdout, r.stderr)
	}
}

// TestKlockctlSubtree: "klockctl acquire src/" takes the folder as a
// subtree, which covers the files under it; "src" without the slash is one
// plain key; "klockctl run src/x/ -- cmd" holds a subtree while cmd runs.
func TestKlockctlSubtree(t *testing.T) {
	d := harness.Start(t, harness.Options{StateDir: "none"})
	dir := t.TempDir()
	in := func(args ...string) cmdResult {
		t.Helper()
		cmd := kcCommand(t, d, nil, args...)
		cmd.Dir = dir
		return runCmd(t, cmd)
	}
	kcOK(t, d, nil, "agents", "register", "senior", "--priority", "100")
	kcOK(t, d, nil, "agents", "register", "junior", "--priority", "200")
	r := in("acquire", "--json", "--agent", "senior", "src/")
	var held kcLease
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &held) != nil || !strings.HasPrefix(held.Resource, "FILE:/") || !strings.HasSuffix(held.Resource, "/src/") {
		t.Fatalf("klockctl acquire src/ = exit %d, %q (stderr %q); want a lease on FILE:<cwd>/src/", r.code, r.stdout, r.stderr)
	}
	folder := strings.TrimPrefix(held.Resource, "FILE:")
	r = in("acquire", "--agent", "junior", "src/a/b.go")
	if r.code != 1 || !strings.Contains(r.stderr, "DIE") || !strings.Contains(r.stderr, "senior") ||
		!strings.Contains(r.stderr, "(which covers FILE:"+folder+"a/b.go)") {
		t.Errorf("klockctl acquire src/a/b.go under senior's src/ = exit %d, stderr %q; want DIE by senior naming the folder", r.code, r.stderr)
	}
	if r = in("acquire", "--agent", "junior", "src"); r.code != 0 {
		t.Errorf("klockctl acquire src (no slash) = exit %d, stderr %q; want a grant: a plain key", r.code, r.stderr)
	}
	if r = in("run", "--agent", "junior", "--wait", "300ms", "src/x/", "--", "true"); r.code != 1 {
		t.Errorf("klockctl run src/x/ under senior's src/ = exit %d, stderr %q; want 1 (not granted)", r.code, r.stderr)
	}
	kcOK(t, d, nil, "release", held.LeaseID)
	if r = in("run", "--agent", "junior", "--wait", "10s", "src/x/", "--", "sh", "-c", "exit 7"); r.code != 7 {
		t.Errorf("klockctl run src/x/ after the release = exit %d, stderr %q; want the command's 7", r.code, r.stderr)
	}
}

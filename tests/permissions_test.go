package tests

import (
	"context"
	"io"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/klockd/klock/clientlib"
	"github.com/klockd/klock/tests/harness"
)

// requireRoot skips a test that needs root to create users, except in CI,
// where running as root is part of the setup and a skip would hide a gap.
func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") != "" {
		t.Fatal("this test needs root (to create test users); CI runs as root")
	}
	t.Skip("needs root to create test users; run the tests as root to include it")
}

// osUser is a local account created for a test.
type osUser struct {
	name     string
	uid, gid uint32
	groups   []uint32
}

// ensureGroup creates a system group if it does not exist and returns its gid.
func ensureGroup(t *testing.T, name string) uint32 {
	t.Helper()
	if g, err := user.LookupGroup(name); err == nil {
		gid, _ := strconv.Atoi(g.Gid)
		return uint32(gid)
	}
	out, err := exec.Command("groupadd", "--system", name).CombinedOutput()
	require.NoError(t, err, "groupadd %s: %s", name, out)
	t.Cleanup(func() { exec.Command("groupdel", name).Run() })
	g, err := user.LookupGroup(name)
	require.NoError(t, err)
	gid, _ := strconv.Atoi(g.Gid)
	return uint32(gid)
}

// ensureUser creates a system user without a home if it does not exist,
// with the given supplementary groups (by gid) for the processes the test
// starts as that user.
func ensureUser(t *testing.T, name string, groups ...uint32) osUser {
	t.Helper()
	if _, err := user.Lookup(name); err != nil {
		out, err := exec.Command("useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name).CombinedOutput()
		require.NoError(t, err, "useradd %s: %s", name, out)
		t.Cleanup(func() { exec.Command("userdel", name).Run() })
	}
	u, err := user.Lookup(name)
	require.NoError(t, err)
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return osUser{name: name, uid: uint32(uid), gid: uint32(gid), groups: groups}
}

// ctlAs runs klockctl as u (a real process under u's uid and groups).
func ctlAs(t *testing.T, bin string, u osUser, socket string, args ...string) cmdResult {
	t.Helper()
	cmd := exec.Command(bin, append([]string{"--socket", socket}, args...)...)
	cmd.Env = []string{"PATH=/usr/bin:/bin", "HOME=/", "USER=" + u.name}
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: u.uid, Gid: u.gid, Groups: u.groups}}
	return runCmd(t, cmd)
}

// publicDir makes a directory every user can traverse, for the socket and
// the binaries other users run (test temp dirs are private to root).
func publicDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "klkperm")
	require.NoError(t, err)
	require.NoError(t, os.Chmod(dir, 0o755))
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// copyExecutable copies the binary at src into dir, mode 0755.
func copyExecutable(t *testing.T, src, dir string) string {
	t.Helper()
	in, err := os.Open(src)
	require.NoError(t, err)
	defer in.Close()
	dst := filepath.Join(dir, filepath.Base(src))
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
	require.NoError(t, err)
	_, err = io.Copy(out, in)
	require.NoError(t, err)
	require.NoError(t, out.Close())
	return dst
}

// TestPermissionsAcrossUIDs checks protocol/README.md "Permissions" with real
// processes under other uids: the daemon runs as root, the socket is 0660
// with a group, one user is in that group and one is not.
func TestPermissionsAcrossUIDs(t *testing.T) {
	requireRoot(t)
	gid := ensureGroup(t, "klocktestgrp")
	member := ensureUser(t, "klocktest1", gid)
	other := ensureUser(t, "klocktest3", gid)
	outsider := ensureUser(t, "klocktest2")

	dir := publicDir(t)
	socket := filepath.Join(dir, "klockd.sock")
	d := harness.Start(t, harness.Options{Socket: socket, StateDir: "none", Args: []string{"--socket-group", "klocktestgrp"}})
	_, ctlBin := harness.Binaries(t)
	ctl := copyExecutable(t, ctlBin, dir)

	// The socket is created 0660 and owned by the configured group.
	fi, err := os.Stat(socket)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o660), fi.Mode().Perm(), "socket mode")
	assert.Equal(t, gid, fi.Sys().(*syscall.Stat_t).Gid, "socket group")

	// Root's agent and lease.
	ctx := context.Background()
	c := d.Client(t)
	require.NoError(t, c.RegisterAgent(ctx, "root-agent", 10))
	res, err := c.AcquireLease(ctx, "root-agent", "s1", "FILE", "/src/root.go", "MUTATES", time.Minute)
	require.NoError(t, err)
	require.True(t, res.Success)
	rootLease := res.LeaseID

	denied := func(r cmdResult, what string) {
		t.Helper()
		assert.Equal(t, 1, r.code, "%s: exit code; stderr %q", what, r.stderr)
		assert.Contains(t, r.stderr, "PERMISSION_DENIED", what)
	}
	// The member can connect but may not act on root's agent or lease.
	denied(ctlAs(t, ctl, member, socket, "release", rootLease), "release someone else's lease")
	denied(ctlAs(t, ctl, member, socket, "heartbeat", rootLease), "heartbeat someone else's lease")
	denied(ctlAs(t, ctl, member, socket, "acquire", "--agent", "root-agent", "FILE:/src/other.go"), "acquire for someone else's agent")
	denied(ctlAs(t, ctl, member, socket, "end-session", "root-agent", "s1"), "end someone else's session")
	denied(ctlAs(t, ctl, member, socket, "agents", "unregister", "root-agent"), "unregister someone else's agent")
	denied(ctlAs(t, ctl, member, socket, "revoke", rootLease), "revoke (admin)")
	denied(ctlAs(t, ctl, member, socket, "freeze", "FILE:/src/root.go"), "freeze (admin)")
	denied(ctlAs(t, ctl, member, socket, "thaw", "FILE:/src/root.go"), "thaw (admin)")

	// Root's lease is untouched.
	leases, _, err := c.ListLeases(ctx, clientlib.LeaseFilter{AgentID: "root-agent"})
	require.NoError(t, err)
	require.Len(t, leases, 1)
	assert.Equal(t, rootLease, leases[0].LeaseID)

	// The member may register its own agent and hold its own leases; the
	// lease records its uid; another user in the group may not release it,
	// and root may.
	r := ctlAs(t, ctl, member, socket, "acquire", "-q", "--agent", "member-agent", "FILE:/src/member.go")
	require.Equal(t, 0, r.code, "member acquire: %s", r.stderr)
	memberLease := strings.TrimSpace(r.stdout)
	leases, _, err = c.ListLeases(ctx, clientlib.LeaseFilter{AgentID: "member-agent"})
	require.NoError(t, err)
	require.Len(t, leases, 1)
	assert.Equal(t, member.uid, leases[0].OwnerUID)
	denied(ctlAs(t, ctl, other, socket, "release", memberLease), "release another user's lease")
	r = ctlAs(t, ctl, member, socket, "heartbeat", memberLease)
	assert.Equal(t, 0, r.code, "owner heartbeat: %s", r.stderr)
	released, err := c.ReleaseLease(ctx, memberLease)
	require.NoError(t, err)
	assert.True(t, released, "root may release any lease")

	// Read-only ops are open to everyone who can connect.
	r = ctlAs(t, ctl, member, socket, "--json", "count")
	assert.Equal(t, 0, r.code, "count: %s", r.stderr)

	// A user outside the socket's group cannot connect, and is told so.
	r = ctlAs(t, ctl, outsider, socket, "count")
	assert.Equal(t, 3, r.code, "outsider exit code; stderr %q", r.stderr)
	assert.Contains(t, strings.ToLower(r.stderr), "permission denied")
	assert.Contains(t, r.stderr, socket)
}

// TestAdminIsDaemonUID checks that admin ops are open to the daemon's own
// uid when it is not root, and closed to other users.
func TestAdminIsDaemonUID(t *testing.T) {
	requireRoot(t)
	gid := ensureGroup(t, "klocktestgrp")
	owner := ensureUser(t, "klocktest1", gid)
	other := ensureUser(t, "klocktest3", gid)

	dir := publicDir(t)
	require.NoError(t, os.Chown(dir, int(owner.uid), int(gid)))
	socket := filepath.Join(dir, "klockd.sock")
	kdBin, ctlBin := harness.Binaries(t)
	kd := copyExecutable(t, kdBin, dir)
	ctl := copyExecutable(t, ctlBin, dir)

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, kd, "run", "--socket", socket, "--state-dir", "", "--socket-group", "klocktestgrp")
	cmd.Env = []string{"PATH=/usr/bin:/bin", "HOME=/"}
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: owner.uid, Gid: owner.gid, Groups: owner.groups}}
	var logs strings.Builder
	cmd.Stderr = &logs
	require.NoError(t, cmd.Start())
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
	})
	require.Eventually(t, func() bool {
		return ctlAs(t, ctl, owner, socket, "count").code == 0
	}, 15*time.Second, 20*time.Millisecond, "daemon did not come up: %s", &logs)

	r := ctlAs(t, ctl, other, socket, "freeze", "FILE:/x")
	assert.Equal(t, 1, r.code, "non-admin freeze: %s", r.stderr)
	assert.Contains(t, r.stderr, "PERMISSION_DENIED")
	r = ctlAs(t, ctl, owner, socket, "freeze", "FILE:/x")
	assert.Equal(t, 0, r.code, "daemon uid freeze: %s", r.stderr)
	r = ctlAs(t, ctl, owner, socket, "thaw", "FILE:/x")
	assert.Equal(t, 0, r.code, "daemon uid thaw: %s", r.stderr)
}

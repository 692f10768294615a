package tests

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/klockd/klock/tests/harness"
)

// TestLiveViewAnyUID: issue 16 says any uid that can connect may watch and
// ask why, and sees what list_leases already shows it. A user in the
// socket's group, not the daemon's uid and not the lease's owner, runs
// klockctl watch and klockctl why as itself and sees root's agent's lease.
func TestLiveViewAnyUID(t *testing.T) {
	requireRoot(t)
	gid := ensureGroup(t, "klocktestgrp")
	member := ensureUser(t, "klocktest1", gid)
	dir := publicDir(t)
	socket := filepath.Join(dir, "klockd.sock")
	d := harness.Start(t, harness.Options{Socket: socket, StateDir: "none", Args: []string{"--socket-group", "klocktestgrp"}})
	_, ctlBin := harness.Binaries(t)
	ctl := copyExecutable(t, ctlBin, dir)
	ctx := context.Background()
	c := d.Client(t)
	require.NoError(t, c.RegisterAgent(ctx, "root-agent", 10))

	watch := exec.Command(ctl, "--socket", socket, "watch", "--agent", "root-agent")
	watch.Env = []string{"PATH=/usr/bin:/bin", "HOME=/", "USER=" + member.name}
	watch.Dir = "/"
	watch.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: member.uid, Gid: member.gid, Groups: member.groups}}
	out, errb := &harness.Buffer{}, &harness.Buffer{}
	watch.Stdout, watch.Stderr = out, errb
	require.NoError(t, watch.Start())
	t.Cleanup(func() { watch.Process.Kill(); watch.Wait() })
	// Root takes leases until the member's watch shows one: the watch is
	// then in place, and it shows root's events.
	probe := 0
	waitFor(t, "the member's klockctl watch to show root's grant", func() bool {
		probe++
		res, err := c.AcquireLease(ctx, "root-agent", "s1", "FILE", fmt.Sprintf("/uid/probe%d", probe), "MUTATES", time.Minute)
		require.NoError(t, err)
		require.True(t, res.Success)
		return strings.Contains(out.String(), "FILE:/uid/probe")
	})
	require.Contains(t, out.String(), "grant")
	require.Contains(t, out.String(), "root-agent")
	require.NoError(t, watch.Process.Signal(syscall.SIGINT))
	require.NoError(t, watch.Wait(), "klockctl watch as %s: stderr %q", member.name, errb.String())

	r := ctlAs(t, ctl, member, socket, "why", "FILE:/uid/probe1")
	require.Equal(t, 0, r.code, "why as %s: %s", member.name, r.stderr)
	require.Contains(t, r.stdout, "root-agent", "why shows root's lease to another uid")
}

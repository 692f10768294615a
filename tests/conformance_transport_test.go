package tests

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/klockd/klock/tests/harness"
)

// TestConformanceSocketEnv checks that klockd listens on KLOCK_SOCKET when
// no --socket flag is given, with socket mode 0660.
func TestConformanceSocketEnv(t *testing.T) {
	bin := harness.Klockd(t)
	dir, err := os.MkdirTemp("", "klk")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "env.sock")
	cmd := exec.Command(bin, "run", "--state-dir", "")
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "KLOCK_") && !strings.HasPrefix(kv, "LISTEN_") && !strings.HasPrefix(kv, "NOTIFY_SOCKET=") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, "KLOCK_SOCKET="+sock)
	logs := new(harness.Buffer)
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(confTimeout):
			cmd.Process.Kill()
			<-done
		}
	})
	var conn net.Conn
	waitFor(t, "klockd to listen on KLOCK_SOCKET", func() bool {
		conn, err = net.Dial("unix", sock)
		return err == nil
	})
	c := &confConn{t: t, c: conn}
	t.Cleanup(func() { conn.Close() })
	c.ok("hello", nil)
	fi, err := os.Stat(sock)
	if err != nil {
		t.Fatal(err)
	}
	if m := fi.Mode().Perm(); m != 0o660 {
		t.Errorf("socket mode %o; want 660 (logs: %s)", m, logs.String())
	}
}

// TestConformanceFenceAcrossRestart checks that the fence keeps growing
// across a daemon restart (with a state directory).
func TestConformanceFenceAcrossRestart(t *testing.T) {
	d := harness.Start(t, harness.Options{})
	c := confDial(t, d)
	c.register("a", 1)
	g := c.grant(cfAcq("a", "s", "/x", "MUTATES", 60000))
	d.Restart(t)
	c = confDial(t, d)
	c.register("a", 1)
	n := c.grant(cfAcq("a", "s", "/y", "MUTATES", 60000))
	if cfNum(t, n, "fence") <= cfNum(t, g, "fence") {
		t.Errorf("fence after restart %v; want above %v", n["fence"], g["fence"])
	}
}

package systemd

import (
	"bufio"
	"bytes"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestListenersNotActivated(t *testing.T) {
	t.Setenv("LISTEN_FDS", "")
	t.Setenv("LISTEN_PID", "")
	lns, err := Listeners()
	if lns != nil || err != nil {
		t.Fatalf("Listeners() without LISTEN_FDS = %v, %v; want nil, nil", lns, err)
	}
}

func TestListenersOtherPID(t *testing.T) {
	t.Setenv("LISTEN_FDS", "1")
	t.Setenv("LISTEN_PID", "1") // meant for another process: fd 3 is not ours
	lns, err := Listeners()
	if lns != nil || err != nil {
		t.Fatalf("Listeners() with another LISTEN_PID = %v, %v; want nil, nil", lns, err)
	}
	assertListenEnvGone(t)
}

func assertListenEnvGone(t *testing.T) {
	t.Helper()
	for _, k := range []string{"LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"} {
		if _, set := os.LookupEnv(k); set {
			t.Errorf("%s still set after Listeners()", k)
		}
	}
}

// shortTempDir returns a directory whose socket paths fit in sun_path (108
// bytes), which t.TempDir does not promise.
func shortTempDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "sda")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// startChild runs this test binary's TestListenersChild with f as fd 3 and
// LISTEN_FDS=1, as a service manager would. The child sets LISTEN_PID itself,
// since systemd does that between fork and exec, which os/exec cannot.
func startChild(t *testing.T, mode string, f *os.File) (*exec.Cmd, *bytes.Buffer) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestListenersChild$", "-test.v")
	cmd.Env = append(os.Environ(), "KLOCK_SYSTEMD_CHILD="+mode, "LISTEN_FDS=1", "LISTEN_FDNAMES=klockd.socket")
	cmd.ExtraFiles = []*os.File{f}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	return cmd, &out
}

func TestListenersInherited(t *testing.T) {
	sock := filepath.Join(shortTempDir(t), "k.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	f, err := ln.File()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cmd, out := startChild(t, "stream", f)

	// The child accepts one connection on the inherited socket and answers.
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	reply, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		t.Fatalf("reading from the child: %v\n%s", err, out)
	}
	if want := "served by " + strconv.Itoa(cmd.Process.Pid) + "\n"; reply != want {
		t.Fatalf("child replied %q; want %q", reply, want)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
}

func TestListenersRejectsDatagram(t *testing.T) {
	sock := filepath.Join(shortTempDir(t), "d.sock")
	pc, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	f, err := pc.File()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cmd, out := startChild(t, "datagram", f)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
}

// TestListenersChild is the child process of the two tests above; in a normal
// run it is skipped.
func TestListenersChild(t *testing.T) {
	mode := os.Getenv("KLOCK_SYSTEMD_CHILD")
	if mode == "" {
		t.Skip("helper process for TestListenersInherited")
	}
	os.Setenv("LISTEN_PID", strconv.Itoa(os.Getpid()))
	lns, err := Listeners()
	assertListenEnvGone(t)
	if mode == "datagram" {
		if lns != nil || err == nil || !strings.HasPrefix(err.Error(), "klock: inherited socket 3 (klockd.socket)") {
			t.Fatalf("Listeners() on a datagram socket = %v, %v; want nil and a klock: error naming fd 3", lns, err)
		}
		return
	}
	if err != nil || len(lns) != 1 {
		t.Fatalf("Listeners() = %v, %v; want one listener", lns, err)
	}
	defer lns[0].Close()
	if again, err := Listeners(); again != nil || err != nil {
		t.Errorf("second Listeners() = %v, %v; want nil, nil", again, err)
	}
	c, err := lns[0].Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("served by " + strconv.Itoa(os.Getpid()) + "\n")); err != nil {
		t.Fatal(err)
	}
}

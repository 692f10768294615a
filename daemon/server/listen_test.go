package server

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"testing"
)

// shortDir returns a temporary directory short enough for socket paths.
func shortDir(t *testing.T) string {
	dir, err := os.MkdirTemp("", "kls")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func TestListenCreatesParentAndMode(t *testing.T) {
	path := filepath.Join(shortDir(t), "sub", "k.sock")
	ln, err := Listen(ListenConfig{Path: path, Group: strconv.Itoa(os.Getgid())})
	if err != nil {
		t.Fatalf("Listen(%s) = %v", path, err)
	}
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o660 {
		t.Errorf("socket mode = %v; want a socket with 0660", fi.Mode())
	}
	ln.Close()
	if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket still there after Close: %v", err)
	}
}

func TestListenRefusesLiveDaemon(t *testing.T) {
	path := filepath.Join(shortDir(t), "k.sock")
	ln, err := Listen(ListenConfig{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if _, err := Listen(ListenConfig{Path: path}); !errors.Is(err, ErrDaemonRunning) {
		t.Fatalf("second Listen = %v; want ErrDaemonRunning", err)
	}
	if c, err := net.Dial("unix", path); err != nil {
		t.Fatalf("the first listener lost its socket: %v", err)
	} else {
		c.Close()
	}
}

func TestListenRemovesStaleSocket(t *testing.T) {
	path := filepath.Join(shortDir(t), "k.sock")
	old, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	old.SetUnlinkOnClose(false)
	old.Close() // a crashed daemon's leftover: the file stays, nobody answers
	ln, err := Listen(ListenConfig{Path: path})
	if err != nil {
		t.Fatalf("Listen over a stale socket = %v", err)
	}
	ln.Close()
}

func TestListenRefusesNonSocket(t *testing.T) {
	path := filepath.Join(shortDir(t), "k.sock")
	if err := os.WriteFile(path, []byte("precious"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Listen(ListenConfig{Path: path}); err == nil {
		t.Fatal("Listen replaced a regular file")
	}
	if b, _ := os.ReadFile(path); string(b) != "precious" {
		t.Fatalf("the regular file was changed: %q", b)
	}
}

func TestListenRefusesWorldWritableParent(t *testing.T) {
	dir := filepath.Join(shortDir(t), "open")
	if err := os.Mkdir(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	os.Chmod(dir, 0o777)
	if _, err := Listen(ListenConfig{Path: filepath.Join(dir, "k.sock")}); err == nil {
		t.Fatal("Listen accepted a world-writable, non-sticky parent directory")
	}
}

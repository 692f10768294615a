package systemd

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// notifyListener is a datagram socket standing in for the service manager's
// NOTIFY_SOCKET; it returns the address to put in the environment.
func notifyListener(t *testing.T, abstract bool) (*net.UnixConn, string) {
	t.Helper()
	var name string
	if abstract {
		name = "@klock-test-" + strconv.Itoa(os.Getpid()) + "-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	} else {
		// t.TempDir can exceed the 108-byte sun_path limit; keep the path short.
		dir, err := os.MkdirTemp("", "sdn")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(dir) })
		name = filepath.Join(dir, "notify.sock")
	}
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		t.Fatalf("listen %s: %v", name, err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn, name
}

// readDatagram returns the next datagram, failing the test if none arrives
// within a generous deadline (a hang guard, not a timing assertion).
func readDatagram(t *testing.T, conn *net.UnixConn) string {
	t.Helper()
	buf := make([]byte, 4096)
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	n, err := conn.Read(buf)
	if err != nil {
		t.Fatalf("reading notify socket: %v", err)
	}
	return string(buf[:n])
}

func TestNotifyUnset(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	sent, err := Notify("READY=1")
	if sent || err != nil {
		t.Fatalf("Notify without NOTIFY_SOCKET = %v, %v; want false, nil", sent, err)
	}
}

func TestNotifySends(t *testing.T) {
	for _, abstract := range []bool{false, true} {
		t.Run("abstract="+strconv.FormatBool(abstract), func(t *testing.T) {
			conn, name := notifyListener(t, abstract)
			t.Setenv("NOTIFY_SOCKET", name)
			for _, state := range []string{"READY=1", "STATUS=serving\nMAINPID=1", "STOPPING=1"} {
				sent, err := Notify(state)
				if !sent || err != nil {
					t.Fatalf("Notify(%q) = %v, %v; want true, nil", state, sent, err)
				}
				if got := readDatagram(t, conn); got != state {
					t.Fatalf("Notify(%q): socket got %q", state, got)
				}
			}
			if got := os.Getenv("NOTIFY_SOCKET"); got != name {
				t.Fatalf("NOTIFY_SOCKET after Notify = %q; want it kept (%q)", got, name)
			}
		})
	}
}

func TestNotifyNoListener(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", filepath.Join(t.TempDir(), "missing.sock"))
	sent, err := Notify("READY=1")
	if sent || err == nil || !strings.HasPrefix(err.Error(), "klock: ") {
		t.Fatalf("Notify to a missing socket = %v, %v; want false and a klock: error", sent, err)
	}
}

func TestWatchdogInterval(t *testing.T) {
	self := strconv.Itoa(os.Getpid())
	tests := []struct {
		usec, pid string
		want      time.Duration
		ok        bool
	}{
		{"", "", 0, false},
		{"30000000", "", 30 * time.Second, true},
		{"30000000", self, 30 * time.Second, true},
		{"30000000", "1", 0, false}, // meant for another process
		{"0", self, 0, false},
		{"-5", self, 0, false},
		{"soon", self, 0, false},
		{"30000000", "me", 0, false},
	}
	for _, tt := range tests {
		t.Setenv("WATCHDOG_USEC", tt.usec)
		t.Setenv("WATCHDOG_PID", tt.pid)
		if tt.pid == "" {
			os.Unsetenv("WATCHDOG_PID")
		}
		got, ok := WatchdogInterval()
		if got != tt.want || ok != tt.ok {
			t.Errorf("WatchdogInterval() with WATCHDOG_USEC=%q WATCHDOG_PID=%q = %v, %v; want %v, %v",
				tt.usec, tt.pid, got, ok, tt.want, tt.ok)
		}
	}
}

func TestWatchdogPings(t *testing.T) {
	conn, name := notifyListener(t, false)
	t.Setenv("NOTIFY_SOCKET", name)
	t.Setenv("WATCHDOG_USEC", "20000") // 20ms: pings every 10ms
	t.Setenv("WATCHDOG_PID", strconv.Itoa(os.Getpid()))

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		Watchdog(ctx)
	}()
	for i := 0; i < 3; i++ {
		if got := readDatagram(t, conn); got != "WATCHDOG=1" {
			t.Fatalf("ping %d = %q; want WATCHDOG=1", i, got)
		}
	}
	cancel()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Watchdog did not return after its context ended")
	}
}

func TestWatchdogDisabledReturns(t *testing.T) {
	t.Setenv("WATCHDOG_USEC", "")
	done := make(chan struct{})
	go func() {
		defer close(done)
		Watchdog(context.Background()) // never cancelled: must return by itself
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Watchdog without WATCHDOG_USEC did not return")
	}
}

package daemon

import (
	"context"
	"errors"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/klockd/klock/protocol"
)

func TestNewRejectsBadConfig(t *testing.T) {
	for _, cfg := range []Config{
		{Fsync: "sometimes"},
		{Recover: "maybe"},
		{MaxConns: -1},
		{MaxAgents: -1},
		{MaxFrame: 10},
		{MaxTTL: time.Microsecond},
	} {
		if _, err := New(cfg); err == nil {
			t.Errorf("New(%+v) = nil error", cfg)
		}
	}
}

// TestRunServesAndStops runs the daemon in memory and in a state
// directory: it answers hello, and when its context ends it returns nil
// and removes its socket.
func TestRunServesAndStops(t *testing.T) {
	for _, stateDir := range []string{"", t.TempDir()} {
		dir, err := os.MkdirTemp("", "kld")
		if err != nil {
			t.Fatal(err)
		}
		defer os.RemoveAll(dir)
		sock := filepath.Join(dir, "k.sock")
		d, err := New(Config{Socket: sock, StateDir: stateDir, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- d.Run(ctx) }()

		var c net.Conn
		deadline := time.Now().Add(10 * time.Second)
		for c == nil {
			if c, err = net.Dial("unix", sock); err != nil {
				c = nil
				if time.Now().After(deadline) {
					t.Fatalf("daemon never listened: %v", err)
				}
				time.Sleep(5 * time.Millisecond)
			}
		}
		frame, _ := protocol.AppendRequest(nil, 1, protocol.OpHello, nil)
		c.Write(frame)
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		body, err := protocol.ReadFrame(c, nil, protocol.DefaultMaxFrame)
		if err != nil {
			t.Fatalf("hello: %v", err)
		}
		var resp protocol.Response
		if err := protocol.DecodeResponse(body, &resp); err != nil || !resp.OK {
			t.Fatalf("hello = %+v, %v", resp, err)
		}
		c.Close()

		cancel()
		if err := <-done; err != nil {
			t.Fatalf("Run = %v; want nil after its context ended", err)
		}
		if _, err := os.Lstat(sock); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("socket left behind: %v", err)
		}
	}
}

package server

import (
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"testing"
	"time"
	"unicode/utf8"

	"golang.org/x/sys/unix"

	"github.com/klockd/klock/daemon/engine"
	"github.com/klockd/klock/protocol"
)

// socketPair returns two connected Unix stream sockets.
func socketPair(tb testing.TB) (*net.UnixConn, *net.UnixConn) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		tb.Fatal(err)
	}
	var conns [2]*net.UnixConn
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "socketpair")
		c, err := net.FileConn(f)
		f.Close()
		if err != nil {
			tb.Fatal(err)
		}
		conns[i] = c.(*net.UnixConn)
	}
	return conns[0], conns[1]
}

// FuzzConnection feeds arbitrary bytes to a served connection: every
// answer must be a well-formed response frame, the connection must end
// when the input does, and the server must stay usable (its lock free).
func FuzzConnection(f *testing.F) {
	var seed []byte
	reg := &protocol.Args{AgentID: "a"}
	reg.Set(protocol.ArgAgentID)
	seed, _ = protocol.AppendRequest(seed, 1, protocol.OpRegisterAgent, reg)
	seed, _ = protocol.AppendRequest(seed, 2, protocol.OpAcquire, acquireArgs("a", "/x", 1000, 0))
	seed, _ = protocol.AppendRequest(seed, 3, protocol.OpListLeases, nil)
	seed, _ = protocol.AppendRequest(seed, 4, protocol.OpStats, nil)
	f.Add(seed)
	f.Add(seed[:len(seed)-3])
	f.Add([]byte{0, 0, 0, 0})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 1})
	f.Add([]byte{0, 0, 0, 1, 0xc1})
	f.Add([]byte("GET / HTTP/1.0\r\n\r\n"))
	hello, _ := protocol.AppendRequest(nil, 9, protocol.OpHello, nil)
	f.Add(append(hello, []byte{0, 0, 0, 3, 0x81, 0xa2, 'i'}...))

	s := New(Config{
		Engine:   engine.New(engine.Config{MaxLeases: 1000, MaxWaiters: 100}),
		MaxFrame: 4096,
		Logger:   slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	defer s.Close()

	f.Fuzz(func(t *testing.T, input []byte) {
		client, server := socketPair(t)
		defer client.Close()
		s.accept(server)
		go func() {
			client.SetWriteDeadline(time.Now().Add(10 * time.Second))
			client.Write(input)
			client.CloseWrite()
		}()
		client.SetReadDeadline(time.Now().Add(10 * time.Second))
		for {
			body, err := protocol.ReadFrame(client, nil, 1<<20)
			if errors.Is(err, io.EOF) || errors.Is(err, unix.ECONNRESET) {
				break
			}
			if err != nil {
				t.Fatalf("reading answers: %v", err)
			}
			var resp protocol.Response
			if err := protocol.DecodeResponse(body, &resp); err != nil {
				t.Fatalf("malformed answer %x: %v", body, err)
			}
			if !resp.OK && resp.Error.Code == protocol.CodeInternal {
				t.Fatalf("INTERNAL answer: %s", resp.Error.Message)
			}
			if !resp.OK && !utf8.ValidString(resp.Error.Message) {
				t.Fatalf("error message is not valid UTF-8: %q", resp.Error.Message)
			}
		}
		// The expiry timer may hold the lock for a moment; a leaked hold
		// would never end.
		locked := make(chan struct{})
		go func() {
			s.mu.Lock()
			s.mu.Unlock()
			close(locked)
		}()
		select {
		case <-locked:
		case <-time.After(10 * time.Second):
			t.Fatal("the engine lock is still held after the connection ended")
		}
	})
}

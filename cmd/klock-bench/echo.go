package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"syscall"

	"github.com/klockd/klock/protocol"
	"github.com/vmihailenco/msgpack/v5"
)

// echoBackend is the round-trip floor: a server that writes every frame back
// unchanged, and clients that send a klock-shaped msgpack request per acquire
// and per release and decode the answer — two round trips per pair, each
// worker on its own connection, each caller reading its own answer.
type echoBackend struct {
	dir string
	srv *server
}

func newEchoBackend(ctx context.Context) (Backend, error) {
	dir, err := os.MkdirTemp("", "klock-bench-echo-")
	if err != nil {
		return nil, err
	}
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	socket := filepath.Join(dir, "echo.sock")
	srv, err := startServer(ctx, "echo", socket, self, "echo-server", "-socket", socket)
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	return &echoBackend{dir: dir, srv: srv}, nil
}

func (b *echoBackend) Name() string { return "echo" }

func (b *echoBackend) Settings() string {
	return "this tool re-executed as a Go server (one goroutine per connection, one write per frame when no further frame is buffered); client encodes and decodes a klock-shaped msgpack request with vmihailenco/msgpack, one connection per worker"
}

func (b *echoBackend) RSS() (int64, bool) { return b.srv.RSS() }

func (b *echoBackend) Hold(ctx context.Context, n int) error {
	return nil // the echo holds no state: the floor is the same with any number of leases
}

func (b *echoBackend) Clients(ctx context.Context, w int) ([]Locker, io.Closer, error) {
	ls := make([]Locker, w)
	var cs closers
	for i := range ls {
		c, err := net.Dial("unix", b.srv.socket)
		if err != nil {
			cs.Close()
			return nil, nil, fmt.Errorf("klock-bench: dial echo: %w", err)
		}
		cs = append(cs, c)
		ec := &echoClient{conn: c, r: bufio.NewReaderSize(c, 4096), agent: "w" + strconv.Itoa(i)}
		ec.enc = msgpack.NewEncoder(&ec.out)
		ls[i] = ec
	}
	return ls, cs, nil
}

func (b *echoBackend) Close() error {
	err := b.srv.Close()
	os.RemoveAll(b.dir)
	return err
}

// echoRequest has the shape of a klock acquire or release request.
type echoRequest struct {
	ID   uint64   `msgpack:"id"`
	Op   string   `msgpack:"op"`
	Args echoArgs `msgpack:"args"`
}

type echoArgs struct {
	AgentID      string `msgpack:"agent_id,omitempty"`
	SessionID    string `msgpack:"session_id,omitempty"`
	ResourceType string `msgpack:"resource_type,omitempty"`
	ResourcePath string `msgpack:"resource_path,omitempty"`
	Predicate    string `msgpack:"predicate,omitempty"`
	TTL          int64  `msgpack:"ttl,omitempty"`
	LeaseID      string `msgpack:"lease_id,omitempty"`
}

// echoClient is one worker's connection to the echo server.
type echoClient struct {
	conn  net.Conn
	r     *bufio.Reader
	agent string
	id    uint64
	out   bytes.Buffer
	enc   *msgpack.Encoder // writes to out
	in    []byte
	resp  echoRequest
}

func (c *echoClient) Acquire(ctx context.Context, resource string) (string, Outcome, error) {
	c.id++
	err := c.roundTrip(echoRequest{ID: c.id, Op: "acquire", Args: echoArgs{
		AgentID: c.agent, SessionID: "bench", ResourceType: "FILE",
		ResourcePath: resource, Predicate: "MUTATES", TTL: 30000,
	}})
	if err != nil {
		return "", DeniedOther, err
	}
	return strconv.FormatUint(c.resp.ID, 10), Granted, nil
}

func (c *echoClient) Release(ctx context.Context, resource, token string) error {
	c.id++
	return c.roundTrip(echoRequest{ID: c.id, Op: "release", Args: echoArgs{LeaseID: token}})
}

func (c *echoClient) roundTrip(req echoRequest) error {
	c.out.Reset()
	c.out.Write([]byte{0, 0, 0, 0})
	if err := c.enc.Encode(&req); err != nil {
		return err
	}
	frame := c.out.Bytes()
	binary.BigEndian.PutUint32(frame, uint32(len(frame)-protocol.HeaderSize))
	if _, err := c.conn.Write(frame); err != nil {
		return fmt.Errorf("klock-bench: echo write: %w", err)
	}
	body, err := protocol.ReadFrame(c.r, c.in, protocol.DefaultMaxFrame)
	if err != nil {
		return fmt.Errorf("klock-bench: echo read: %w", err)
	}
	c.in = body[:0]
	c.resp = echoRequest{}
	if err := msgpack.Unmarshal(body, &c.resp); err != nil {
		return err
	}
	if c.resp.ID != req.ID {
		return fmt.Errorf("klock-bench: echo answered id %d to %d", c.resp.ID, req.ID)
	}
	return nil
}

// runEchoServer is the "echo-server" subcommand: it serves until SIGTERM.
func runEchoServer(args []string) error {
	fs := flag.NewFlagSet("echo-server", flag.ContinueOnError)
	socket := fs.String("socket", "", "Unix socket path to listen on")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *socket == "" {
		return errors.New("klock-bench: echo-server needs -socket")
	}
	ln, err := net.Listen("unix", *socket)
	if err != nil {
		return err
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		<-sig
		ln.Close()
	}()
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		go serveEcho(c)
	}
}

// serveEcho writes every frame back; it flushes when no complete frame
// header is left in the read buffer, so a pipelining client gets batched
// writes and a ping-pong client one write per frame.
func serveEcho(c net.Conn) {
	defer c.Close()
	r := bufio.NewReaderSize(c, 64<<10)
	var buf, out []byte
	for {
		body, err := protocol.ReadFrame(r, buf, protocol.DefaultMaxFrame)
		if err != nil {
			return
		}
		buf = body[:0]
		out = protocol.AppendFrame(out, body)
		if r.Buffered() < 4 {
			if _, err := c.Write(out); err != nil {
				return
			}
			out = out[:0]
		}
	}
}

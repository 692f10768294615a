package server

import (
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/klockd/klock/daemon/engine"
	"github.com/klockd/klock/protocol"
)

// TestFramesAcrossReadsAndBuffers feeds a connection requests one byte at a
// time, then a frame larger than keepBufCap: every request is answered in
// order (conn.step completes frames that span reads, and grows its buffer
// for one that does not fit), and once the large frame is decoded the
// connection is back to a buffer of readBufSize.
func TestFramesAcrossReadsAndBuffers(t *testing.T) {
	s := New(Config{Engine: engine.New(engine.Config{}), Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	defer s.Close()
	client, server := socketPair(t)
	defer client.Close()
	s.accept(server)
	var c *conn
	s.lnMu.Lock()
	for k := range s.conns {
		c = k
	}
	s.lnMu.Unlock()

	var in []byte
	reg := &protocol.Args{AgentID: "a"}
	reg.Set(protocol.ArgAgentID)
	in, _ = protocol.AppendRequest(in, 1, protocol.OpRegisterAgent, reg)
	in, _ = protocol.AppendRequest(in, 2, protocol.OpAcquire, acquireArgs("a", "/x", 30000, 0))
	big := &protocol.Args{Client: strings.Repeat("k", keepBufCap+1000)}
	big.Set(protocol.ArgClient)
	large, _ := protocol.AppendRequest(nil, 3, protocol.OpHello, big)
	last, _ := protocol.AppendRequest(nil, 4, protocol.OpStats, nil)

	errc := make(chan error, 1)
	go func() {
		client.SetWriteDeadline(time.Now().Add(10 * time.Second))
		for i := range in {
			if _, err := client.Write(in[i : i+1]); err != nil {
				errc <- err
				return
			}
		}
		_, err := client.Write(append(large, last...))
		errc <- err
	}()
	client.SetReadDeadline(time.Now().Add(10 * time.Second))
	for id := uint64(1); id <= 4; id++ {
		body, err := protocol.ReadFrame(client, nil, 1<<20)
		if err != nil {
			t.Fatalf("reading answer %d: %v", id, err)
		}
		var resp protocol.Response
		if err := protocol.DecodeResponse(body, &resp); err != nil {
			t.Fatal(err)
		}
		if resp.ID != id || !resp.OK {
			t.Fatalf("answer %+v; want id %d, ok", resp, id)
		}
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	client.Close()
	s.connsDone.Wait() // c's reader is done: its fields are quiet
	if len(c.in) != readBufSize {
		t.Errorf("read buffer is %d bytes after the large frame; want %d", len(c.in), readBufSize)
	}
}

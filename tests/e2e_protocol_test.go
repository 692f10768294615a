package tests

import (
	"encoding/binary"
	"fmt"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/klockd/klock/protocol"
	"github.com/klockd/klock/tests/harness"
)

// TestPipelined1000 sends 1,000 requests in one write on one connection
// and matches every answer to its request by id.
func TestPipelined1000(t *testing.T) {
	d := harness.Start(t, harness.Options{StateDir: "none"})
	r := d.Raw(t)
	mustOK(t, "register", r.Call(1, protocol.OpRegisterAgent, args(protocol.ArgAgentID, "piper", protocol.ArgPriority, 1)), nil)

	const n = 1000
	var batch []byte
	for i := 0; i < n; i++ {
		id := uint64(1000 + i)
		var err error
		switch i % 3 {
		case 0:
			batch, err = protocol.AppendRequest(batch, id, protocol.OpHello, nil)
		case 1:
			batch, err = protocol.AppendRequest(batch, id, protocol.OpAcquire, acquireArgs("piper", "s", fmt.Sprintf("/p/%d", i), "MUTATES", 60000))
		default:
			batch, err = protocol.AppendRequest(batch, id, protocol.OpActiveLeaseCount, nil)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	r.Write(batch)

	seen := make(map[uint64]bool, n)
	for len(seen) < n {
		resp := r.Recv()
		i := int(resp.ID) - 1000
		if i < 0 || i >= n || seen[resp.ID] {
			t.Fatalf("answer with id %d: not an outstanding request", resp.ID)
		}
		seen[resp.ID] = true
		switch i % 3 {
		case 0:
			var h protocol.HelloResult
			mustOK(t, "hello", resp, &h)
			if h.Protocol != protocol.Version || !strings.HasPrefix(h.Server, "klockd ") {
				t.Fatalf("hello = %+v", h)
			}
		case 1:
			var g protocol.Grant
			mustOK(t, "acquire", resp, &g)
			if want := fmt.Sprintf("FILE:/p/%d", i); !g.Success || g.Resource != want {
				t.Fatalf("acquire id %d = %+v; want a grant on %s", resp.ID, g, want)
			}
		default:
			var c protocol.CountResult
			mustOK(t, "count", resp, &c)
		}
	}
	var c protocol.CountResult
	mustOK(t, "count", r.Call(9999, protocol.OpActiveLeaseCount, nil), &c)
	if want := (n + 1) / 3; c.Count != want {
		t.Errorf("active_lease_count = %d; want %d", c.Count, want)
	}
}

// bystander keeps a second client busy with real work while a test sends
// bad input, and reports any failure it saw.
type bystander struct {
	stop   chan struct{}
	done   chan struct{}
	ok     atomic.Int64
	mu     sync.Mutex
	failed error
}

func startBystander(t *testing.T, d *harness.Daemon) *bystander {
	b := &bystander{stop: make(chan struct{}), done: make(chan struct{})}
	r := d.Raw(t)
	mustOK(t, "bystander register", r.Call(1, protocol.OpRegisterAgent, args(protocol.ArgAgentID, "bystander")), nil)
	go func() {
		defer close(b.done)
		for id := uint64(2); ; id += 2 {
			select {
			case <-b.stop:
				return
			default:
			}
			var g protocol.Grant
			resp, err := b.call(r, id, protocol.OpAcquire, acquireArgs("bystander", "s", "/bystander", "MUTATES", 60000), &g)
			if err == nil && !g.Success {
				err = fmt.Errorf("acquire denied: %+v", resp)
			}
			if err == nil {
				var rel protocol.ReleaseResult
				_, err = b.call(r, id+1, protocol.OpRelease, args(protocol.ArgLeaseID, g.LeaseID), &rel)
				if err == nil && !rel.Released {
					err = fmt.Errorf("release of %s returned false", g.LeaseID)
				}
			}
			if err != nil {
				b.mu.Lock()
				b.failed = err
				b.mu.Unlock()
				return
			}
			b.ok.Add(1)
		}
	}()
	return b
}

// call is one round trip without the testing.T (it runs on a goroutine).
func (b *bystander) call(r *harness.Raw, id uint64, op string, a *protocol.Args, v any) (*protocol.Response, error) {
	frame, err := protocol.AppendRequest(nil, id, op, a)
	if err != nil {
		return nil, err
	}
	r.Conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := r.Conn.Write(frame); err != nil {
		return nil, err
	}
	resp, err := r.TryRecv()
	if err != nil {
		return nil, err
	}
	if resp.ID != id || !resp.OK {
		return resp, fmt.Errorf("%s: answer %+v", op, resp)
	}
	return resp, protocol.DecodeResult(resp.Result, v)
}

// check stops the bystander and fails the test if it was ever refused.
func (b *bystander) check(t *testing.T) {
	t.Helper()
	close(b.stop)
	<-b.done
	if b.failed != nil {
		t.Fatalf("the other client was disturbed: %v", b.failed)
	}
	if b.ok.Load() == 0 {
		t.Fatalf("the other client made no progress")
	}
}

// frameLen returns a frame header declaring n bytes.
func frameLen(n uint32) []byte { return binary.BigEndian.AppendUint32(nil, n) }

// TestBadFramesCloseTheConnection: length 0, over max_frame, and garbage
// that reads as an absurd length each get one BAD_FRAME (id 0) and EOF.
func TestBadFramesCloseTheConnection(t *testing.T) {
	d := harness.Start(t, harness.Options{StateDir: "none"})
	b := startBystander(t, d)
	cases := []struct {
		name  string
		bytes []byte
	}{
		{"zero length", frameLen(0)},
		{"over max_frame", frameLen(protocol.DefaultMaxFrame + 1)},
		{"max uint32", frameLen(0xffffffff)},
		{"http request", []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n")},
	}
	for _, tc := range cases {
		r := d.Raw(t)
		r.Write(tc.bytes)
		resp := r.Recv()
		if resp.OK || resp.ID != 0 || resp.Error.Code != protocol.CodeBadFrame {
			t.Errorf("%s: answer %+v; want BAD_FRAME with id 0", tc.name, resp)
		}
		if _, err := r.TryRecv(); err != io.EOF {
			t.Errorf("%s: after BAD_FRAME read gave %v; want EOF (connection closed)", tc.name, err)
		}
	}
	b.check(t)
}

// TestBadRequestsKeepTheConnection sends every kind of malformed or invalid
// request on one connection; each gets its documented error, the
// connection keeps serving, and another client is never disturbed.
func TestBadRequestsKeepTheConnection(t *testing.T) {
	d := harness.Start(t, harness.Options{StateDir: "none"})
	b := startBystander(t, d)
	r := d.Raw(t)
	mustOK(t, "register", r.Call(1, protocol.OpRegisterAgent, args(protocol.ArgAgentID, "a", protocol.ArgPriority, 10)), nil)

	long := strings.Repeat("x", 257)
	type req = map[string]any
	acq := func(over req) req {
		a := req{"agent_id": "a", "session_id": "s", "resource_type": "FILE", "resource_path": "/f", "predicate": "MUTATES", "ttl": 1000}
		for k, v := range over {
			if v == nil {
				delete(a, k)
			} else {
				a[k] = v
			}
		}
		return req{"id": 7, "op": "acquire", "args": a}
	}
	intents := func(n int) []req {
		var in []req
		for i := 0; i < n; i++ {
			in = append(in, req{"resource_type": "FILE", "resource_path": fmt.Sprintf("/m/%d", i), "predicate": "CONSUMES"})
		}
		return in
	}
	cases := []struct {
		name   string
		body   []byte
		wantID uint64
		code   protocol.Code
	}{
		{"garbage byte", []byte{0xc1}, 0, protocol.CodeBadRequest},
		{"truncated map", []byte{0x82, 0xa2, 'i', 'd'}, 0, protocol.CodeBadRequest},
		{"array body", mp(t, []any{1, "hello"}), 0, protocol.CodeBadRequest},
		{"string body", mp(t, "hello"), 0, protocol.CodeBadRequest},
		{"no id", mp(t, req{"op": "hello"}), 0, protocol.CodeBadRequest},
		{"id zero", mp(t, req{"id": 0, "op": "hello"}), 0, protocol.CodeBadRequest},
		{"id negative", mp(t, req{"id": -5, "op": "hello"}), 0, protocol.CodeBadRequest},
		{"id string", mp(t, req{"id": "7", "op": "hello"}), 0, protocol.CodeBadRequest},
		{"no op", mp(t, req{"id": 7}), 7, protocol.CodeBadRequest},
		{"op integer", mp(t, req{"id": 7, "op": 3}), 7, protocol.CodeBadRequest},
		{"args array", mp(t, req{"id": 7, "op": "hello", "args": []int{1}}), 7, protocol.CodeBadRequest},
		{"unknown op", mp(t, req{"id": 7, "op": "launch_missiles"}), 7, protocol.CodeUnknownOp},
		{"ttl string", mp(t, acq(req{"ttl": "1000"})), 7, protocol.CodeInvalidArgument},
		{"ttl negative", mp(t, acq(req{"ttl": -1})), 7, protocol.CodeInvalidArgument},
		{"ttl zero", mp(t, acq(req{"ttl": 0})), 7, protocol.CodeInvalidArgument},
		{"ttl missing", mp(t, acq(req{"ttl": nil})), 7, protocol.CodeInvalidArgument},
		{"ttl over max", mp(t, acq(req{"ttl": int64(25 * time.Hour / time.Millisecond)})), 7, protocol.CodeInvalidArgument},
		{"ttl float", mp(t, acq(req{"ttl": 1.5})), 7, protocol.CodeInvalidArgument},
		{"wait_timeout negative", mp(t, acq(req{"wait_timeout": -1})), 7, protocol.CodeInvalidArgument},
		{"agent_id missing", mp(t, acq(req{"agent_id": nil})), 7, protocol.CodeInvalidArgument},
		{"agent_id empty", mp(t, acq(req{"agent_id": ""})), 7, protocol.CodeInvalidArgument},
		{"agent_id too long", mp(t, acq(req{"agent_id": long})), 7, protocol.CodeInvalidArgument},
		{"agent_id control char", mp(t, acq(req{"agent_id": "a\nb"})), 7, protocol.CodeInvalidArgument},
		{"agent_id integer", mp(t, acq(req{"agent_id": 5})), 7, protocol.CodeInvalidArgument},
		{"session_id missing", mp(t, acq(req{"session_id": nil})), 7, protocol.CodeInvalidArgument},
		{"session_id too long", mp(t, acq(req{"session_id": long})), 7, protocol.CodeInvalidArgument},
		{"resource_type unknown", mp(t, acq(req{"resource_type": "DISK"})), 7, protocol.CodeInvalidArgument},
		{"resource_type missing", mp(t, acq(req{"resource_type": nil})), 7, protocol.CodeInvalidArgument},
		{"resource_path empty", mp(t, acq(req{"resource_path": ""})), 7, protocol.CodeInvalidArgument},
		{"resource_path too long", mp(t, acq(req{"resource_path": "/" + strings.Repeat("p", 4096)})), 7, protocol.CodeInvalidArgument},
		{"resource_path NUL", mp(t, acq(req{"resource_path": "/a\x00b"})), 7, protocol.CodeInvalidArgument},
		{"predicate unknown", mp(t, acq(req{"predicate": "OWNS"})), 7, protocol.CodeInvalidArgument},
		{"predicate missing", mp(t, acq(req{"predicate": nil})), 7, protocol.CodeInvalidArgument},
		{"idem too long", mp(t, acq(req{"idem": strings.Repeat("k", 65)})), 7, protocol.CodeInvalidArgument},
		{"unknown agent", mp(t, acq(req{"agent_id": "nobody"})), 7, protocol.CodeUnknownAgent},
		{"invalid beats unknown agent", mp(t, acq(req{"agent_id": "nobody", "predicate": "OWNS"})), 7, protocol.CodeInvalidArgument},
		{"acquire_many no intents", mp(t, req{"id": 7, "op": "acquire_many", "args": req{"agent_id": "a", "session_id": "s", "ttl": 1000, "intents": []req{}}}), 7, protocol.CodeInvalidArgument},
		{"acquire_many 65 intents", mp(t, req{"id": 7, "op": "acquire_many", "args": req{"agent_id": "a", "session_id": "s", "ttl": 1000, "intents": intents(65)}}), 7, protocol.CodeInvalidArgument},
		{"acquire_many intent not map", mp(t, req{"id": 7, "op": "acquire_many", "args": req{"agent_id": "a", "session_id": "s", "ttl": 1000, "intents": []any{"FILE:/x"}}}), 7, protocol.CodeInvalidArgument},
		{"acquire_many bad predicate", mp(t, req{"id": 7, "op": "acquire_many", "args": req{"agent_id": "a", "session_id": "s", "ttl": 1000, "intents": []req{{"resource_type": "FILE", "resource_path": "/x", "predicate": "NOPE"}}}}), 7, protocol.CodeInvalidArgument},
		{"register empty agent", mp(t, req{"id": 7, "op": "register_agent", "args": req{"agent_id": ""}}), 7, protocol.CodeInvalidArgument},
		{"register negative priority", mp(t, req{"id": 7, "op": "register_agent", "args": req{"agent_id": "b", "priority": -3}}), 7, protocol.CodeInvalidArgument},
		{"release no lease_id", mp(t, req{"id": 7, "op": "release"}), 7, protocol.CodeInvalidArgument},
		{"heartbeat unknown lease", mp(t, req{"id": 7, "op": "heartbeat", "args": req{"lease_id": "00000000-0000-0000-0000-000000000000"}}), 7, protocol.CodeNotFound},
		{"heartbeat ttl negative", mp(t, req{"id": 7, "op": "heartbeat", "args": req{"lease_id": "x", "ttl": -1}}), 7, protocol.CodeInvalidArgument},
		{"end_session missing session", mp(t, req{"id": 7, "op": "end_session", "args": req{"agent_id": "a"}}), 7, protocol.CodeInvalidArgument},
		{"list_leases limit over max", mp(t, req{"id": 7, "op": "list_leases", "args": req{"limit": 10001}}), 7, protocol.CodeInvalidArgument},
		{"list_agents limit over max", mp(t, req{"id": 7, "op": "list_agents", "args": req{"limit": 10001}}), 7, protocol.CodeInvalidArgument},
		{"freeze unknown type", mp(t, req{"id": 7, "op": "freeze", "args": req{"resource_type": "DISK", "resource_path": "/x"}}), 7, protocol.CodeInvalidArgument},
	}
	for _, tc := range cases {
		r.WriteBody(tc.body)
		resp := r.Recv()
		if resp.OK || resp.ID != tc.wantID || resp.Error.Code != tc.code {
			t.Errorf("%s: answer id %d ok %v error %+v; want id %d %s", tc.name, resp.ID, resp.OK, resp.Error, tc.wantID, tc.code)
			continue
		}
		if !strings.HasPrefix(resp.Error.Message, "klock: ") {
			t.Errorf("%s: message %q does not start with \"klock: \"", tc.name, resp.Error.Message)
		}
	}
	// The same connection still serves a good request.
	var h protocol.HelloResult
	mustOK(t, "hello after bad input", r.Call(99, protocol.OpHello, nil), &h)
	b.check(t)
}

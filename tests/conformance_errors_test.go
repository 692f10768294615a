package tests

import (
	"encoding/binary"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/klockd/klock/tests/harness"
)

// TestConformanceBadFrame checks that length 0 and length > max_frame get
// one BAD_FRAME with id 0 and a closed connection, and nothing else is
// affected.
func TestConformanceBadFrame(t *testing.T) {
	d, bystander := confStart(t)
	bystander.register("a", 1)
	g := bystander.grant(cfAcq("a", "s", "/x", "MUTATES", 60000))
	for _, tc := range []struct {
		name  string
		bytes []byte
	}{
		{"length 0", []byte{0, 0, 0, 0}},
		{"length max_frame+1", binary.BigEndian.AppendUint32(nil, 1<<20+1)},
		{"length 4 GiB-1", []byte{0xff, 0xff, 0xff, 0xff}},
	} {
		c := confDial(t, d)
		c.writeRaw(tc.bytes)
		r := c.recv()
		if id, ok := cfInt(r["id"]); !ok || id != 0 {
			t.Errorf("%s: response id %v; want 0", tc.name, r["id"])
		}
		cfError(t, tc.name, r, "BAD_FRAME")
		c.expectClosed()
	}
	// Requests before the bad frame are still answered, then BAD_FRAME.
	c := confDial(t, d)
	pipe := append(c.request(1, "hello", nil), c.request(2, "stats", nil)...)
	c.writeRaw(append(pipe, 0, 0, 0, 0))
	for _, id := range []int64{1, 2} {
		r := c.recv()
		if got, _ := cfInt(r["id"]); got != id {
			t.Fatalf("answer %v before BAD_FRAME; want id %d", r, id)
		}
		cfResult(t, "before BAD_FRAME", r)
	}
	cfError(t, "after pipelined requests", c.recv(), "BAD_FRAME")
	c.expectClosed()

	// A frame of exactly max_frame bytes is read (and here refused as
	// BAD_REQUEST since it is not a map, but the connection stays open).
	c = confDial(t, d)
	body := make([]byte, 1<<20)
	body[0] = 0xc0 // nil, then trailing bytes
	c.writeRaw(append(binary.BigEndian.AppendUint32(nil, uint32(len(body))), body...))
	cfError(t, "max_frame body", c.recv(), "BAD_REQUEST")
	c.ok("hello", nil)

	bystander.ok("heartbeat", map[string]any{"lease_id": g["lease_id"]})

	// max_frame follows --max-frame: 4096 is read, 4097 is BAD_FRAME.
	d2, c2 := confStart(t, "--max-frame", "4096")
	pad := map[string]any{"id": 1, "op": "hello", "args": map[string]any{"pad": ""}}
	n := len(mp(t, pad))
	pad["args"] = map[string]any{"pad": strings.Repeat("x", 4096-n-2)} // str8 header grows by 1... 2 bytes
	body = mp(t, pad)
	for len(body) < 4096 {
		pad["args"].(map[string]any)["pad"] = pad["args"].(map[string]any)["pad"].(string) + "x"
		body = mp(t, pad)
	}
	if len(body) != 4096 {
		t.Fatalf("padding: body %d bytes", len(body))
	}
	c2.writeRaw(cfFrame(body))
	cfResult(t, "4096-byte frame", c2.recv())
	c3 := confDial(t, d2)
	c3.writeRaw(binary.BigEndian.AppendUint32(nil, 4097))
	cfError(t, "4097-byte frame", c3.recv(), "BAD_FRAME")
	c3.expectClosed()
}

// TestConformanceShuttingDown checks that a parked acquire is answered
// SHUTTING_DOWN when the daemon stops.
func TestConformanceShuttingDown(t *testing.T) {
	d, c := confStart(t)
	c.register("old", 1)
	c.register("young", 2)
	c.grant(cfAcq("young", "s", "/x", "MUTATES", 60000))
	w := confDial(t, d)
	w.send("acquire", cfWith(cfAcq("old", "s", "/x", "MUTATES", 60000), "wait_timeout", 30000))
	waitFor(t, "queued", func() bool { return cfNum(t, c.ok("stats", nil), "waiters") == 1 })
	if err := d.Cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	cfError(t, "parked at shutdown", w.recv(), "SHUTTING_DOWN")
	// A second SIGTERM would end klockd at once, so wait instead of Stop.
	select {
	case <-d.Done():
	case <-time.After(harness.StartTimeout):
		t.Fatal("klockd did not exit after SIGTERM")
	}
	if code := d.Cmd.ProcessState.ExitCode(); code != 0 {
		t.Fatalf("klockd exited %d after SIGTERM; want 0", code)
	}
}

// TestConformanceBadRequest checks each BAD_REQUEST variant, the id it is
// answered with, and that the connection stays open.
func TestConformanceBadRequest(t *testing.T) {
	_, c := confStart(t)
	cases := []struct {
		name string
		body any // marshalled unless []byte
		id   int64
	}{
		{"array body", []any{1, "hello"}, 0},
		{"string body", "hello", 0},
		{"integer body", 7, 0},
		{"nil body", nil, 0},
		{"invalid msgpack", []byte{0xc1}, 0},
		{"truncated map", []byte{0x82, 0xa2, 'i', 'd'}, 0},
		{"no id", map[string]any{"op": "hello"}, 0},
		{"id 0", map[string]any{"id": 0, "op": "hello"}, 0},
		{"id negative", map[string]any{"id": -5, "op": "hello"}, 0},
		{"id string", map[string]any{"id": "7", "op": "hello"}, 0},
		{"id float", map[string]any{"id": 7.5, "op": "hello"}, 0},
		{"id bool", map[string]any{"id": true, "op": "hello"}, 0},
		{"no op", map[string]any{"id": 11}, 11},
		{"op integer", map[string]any{"id": 12, "op": 5}, 12},
		{"op binary", map[string]any{"id": 13, "op": []byte("hello")}, 13},
		{"args array", map[string]any{"id": 14, "op": "hello", "args": []any{1}}, 14},
		{"args string", map[string]any{"id": 15, "op": "stats", "args": "x"}, 15},
		{"args integer", map[string]any{"id": 16, "op": "stats", "args": 3}, 16},
		{"empty map", map[string]any{}, 0},
	}
	for _, tc := range cases {
		body, isRaw := tc.body.([]byte)
		if !isRaw {
			body = mp(t, tc.body)
		}
		c.writeRaw(cfFrame(body))
		r, err := c.tryRecv(confTimeout)
		if err != nil {
			t.Fatalf("%s: %v (the connection must stay open)", tc.name, err)
		}
		if id, ok := cfInt(r["id"]); !ok || id != tc.id {
			t.Errorf("%s: response id %v; want %d", tc.name, r["id"], tc.id)
		}
		cfError(t, tc.name, r, "BAD_REQUEST")
		c.ok("hello", nil)
	}
}

// TestConformanceUnknownOp checks UNKNOWN_OP with the request's id.
func TestConformanceUnknownOp(t *testing.T) {
	_, c := confStart(t)
	for _, op := range []string{"nope", "", "acquire_all", "hello "} {
		c.fail(op, nil, "UNKNOWN_OP")
	}
	c.fail("HELLO", nil, "UNKNOWN_OP") // op names are not vocabulary: case matters
}

// badArg is one request that must be refused with INVALID_ARGUMENT; the
// message must name key.
type badArg struct {
	name string
	op   string
	args map[string]any
	key  string
}

// TestConformanceInvalidArgument checks INVALID_ARGUMENT for every
// argument limit, naming the argument, and that it wins over UNKNOWN_AGENT.
func TestConformanceInvalidArgument(t *testing.T) {
	_, c := confStart(t)
	c.register("a", 1)
	ok := cfAcq("a", "s", "/ok", "MUTATES", 1000)
	long := func(n int) string { return strings.Repeat("x", n) }
	path := func(n int) string { return "/" + strings.Repeat("p", n-1) }
	cases := []badArg{
		{"agent_id missing", "acquire", cfWith(ok, "agent_id", nil), "agent_id"},
		{"agent_id empty", "acquire", cfWith(ok, "agent_id", ""), "agent_id"},
		{"agent_id 257 bytes", "acquire", cfWith(ok, "agent_id", long(257)), "agent_id"},
		{"agent_id integer", "acquire", cfWith(ok, "agent_id", 5), "agent_id"},
		{"agent_id binary", "acquire", cfWith(ok, "agent_id", []byte("a")), "agent_id"},
		{"agent_id NUL", "register_agent", map[string]any{"agent_id": "a\x00b"}, "agent_id"},
		{"agent_id newline", "register_agent", map[string]any{"agent_id": "a\nb"}, "agent_id"},
		{"agent_id 257 bytes register", "register_agent", map[string]any{"agent_id": long(257)}, "agent_id"},
		{"agent_id invalid UTF-8", "register_agent", map[string]any{"agent_id": "a\xffb"}, "agent_id"},
		{"session_id missing", "acquire", cfWith(ok, "session_id", nil), "session_id"},
		{"session_id empty", "acquire", cfWith(ok, "session_id", ""), "session_id"},
		{"session_id 257 bytes", "acquire", cfWith(ok, "session_id", long(257)), "session_id"},
		{"session_id tab", "acquire", cfWith(ok, "session_id", "s\tt"), "session_id"},
		{"resource_type missing", "acquire", cfWith(ok, "resource_type", nil), "resource_type"},
		{"resource_type empty", "acquire", cfWith(ok, "resource_type", ""), "resource_type"},
		{"resource_type unknown", "acquire", cfWith(ok, "resource_type", "DIRECTORY"), "resource_type"},
		{"resource_type integer", "acquire", cfWith(ok, "resource_type", 1), "resource_type"},
		{"resource_path missing", "acquire", cfWith(ok, "resource_path", nil), "resource_path"},
		{"resource_path empty", "acquire", cfWith(ok, "resource_path", ""), "resource_path"},
		{"resource_path 4097 bytes", "acquire", cfWith(ok, "resource_path", path(4097)), "resource_path"},
		{"resource_path NUL", "acquire", cfWith(ok, "resource_path", "/a\x00b"), "resource_path"},
		{"resource_path 0x01", "acquire", cfWith(ok, "resource_path", "/a\x01b"), "resource_path"},
		{"resource_path 0x1f", "acquire", cfWith(ok, "resource_path", "/a\x1fb"), "resource_path"},
		{"resource_path newline", "acquire", cfWith(ok, "resource_path", "/a\nb"), "resource_path"},
		{"resource_path DEL", "acquire", cfWith(ok, "resource_path", "/a\x7fb"), "resource_path"},
		{"resource_path C1 NEL", "acquire", cfWith(ok, "resource_path", "/a\u0085b"), "resource_path"},
		// A relative FILE path: klockd cannot know the client's cwd.
		{"resource_path relative FILE", "acquire", cfWith(ok, "resource_path", "src/a.ts"), `resource_path "src/a.ts" is relative; a FILE path must be absolute`},
		{"resource_path ./ FILE", "acquire", cfWith(ok, "resource_path", "./"), "a FILE path must be absolute"},
		{"resource_path 65 levels", "acquire", cfWith(ok, "resource_path", strings.Repeat("/a", 65)), "resource_path has 65 levels"},
		{"freeze resource_path 65 levels", "freeze", map[string]any{"resource_type": "SYMBOL", "resource_path": strings.Repeat("a/", 66)}, "has 65 levels"},
		{"freeze relative FILE", "freeze", map[string]any{"resource_type": "FILE", "resource_path": "x"}, "a FILE path must be absolute"},
		{"thaw relative FILE", "thaw", map[string]any{"resource_type": "file", "resource_path": "x/"}, "a FILE path must be absolute"},
		{"predicate missing", "acquire", cfWith(ok, "predicate", nil), "predicate"},
		{"predicate empty", "acquire", cfWith(ok, "predicate", ""), "predicate"},
		{"predicate unknown", "acquire", cfWith(ok, "predicate", "WRITES"), "predicate"},
		{"predicate list", "acquire", cfWith(ok, "predicate", []any{"MUTATES"}), "predicate"},
		{"ttl missing", "acquire", cfWith(ok, "ttl", nil), "ttl"},
		{"ttl 0", "acquire", cfWith(ok, "ttl", 0), "ttl"},
		{"ttl negative", "acquire", cfWith(ok, "ttl", -1), "ttl"},
		{"ttl over max_ttl", "acquire", cfWith(ok, "ttl", 24*3600*1000+1), "ttl"},
		{"ttl above 2^63-1", "acquire", cfWith(ok, "ttl", uint64(1)<<63), "ttl"},
		{"ttl string", "acquire", cfWith(ok, "ttl", "1000"), "ttl"},
		{"ttl float", "acquire", cfWith(ok, "ttl", 1000.0), "ttl"},
		{"ttl bool", "acquire", cfWith(ok, "ttl", true), "ttl"},
		{"wait_timeout negative", "acquire", cfWith(ok, "wait_timeout", -1), "wait_timeout"},
		{"wait_timeout string", "acquire", cfWith(ok, "wait_timeout", "1"), "wait_timeout"},
		{"idem 65 bytes", "acquire", cfWith(ok, "idem", long(65)), "idem"},
		{"idem integer", "acquire", cfWith(ok, "idem", 1), "idem"},
		{"priority negative", "register_agent", map[string]any{"agent_id": "p", "priority": -1}, "priority"},
		{"priority string", "register_agent", map[string]any{"agent_id": "p", "priority": "1"}, "priority"},
		{"priority float", "register_agent", map[string]any{"agent_id": "p", "priority": 1.0}, "priority"},
		{"priority above 2^63-1", "register_agent", map[string]any{"agent_id": "p", "priority": uint64(1) << 63}, "priority"},
		{"unregister agent_id missing", "unregister_agent", map[string]any{}, "agent_id"},
		{"release lease_id missing", "release", nil, "lease_id"},
		{"release lease_id empty", "release", map[string]any{"lease_id": ""}, "lease_id"},
		{"release lease_id integer", "release", map[string]any{"lease_id": 1}, "lease_id"},
		{"heartbeat lease_id missing", "heartbeat", map[string]any{}, "lease_id"},
		{"heartbeat ttl negative", "heartbeat", map[string]any{"lease_id": "x", "ttl": -5}, "ttl"},
		{"heartbeat ttl over max_ttl", "heartbeat", map[string]any{"lease_id": "x", "ttl": 24*3600*1000 + 1}, "ttl"},
		{"end_session session_id missing", "end_session", map[string]any{"agent_id": "a"}, "session_id"},
		{"end_session agent_id missing", "end_session", map[string]any{"session_id": "s"}, "agent_id"},
		{"list_leases limit 10001", "list_leases", map[string]any{"limit": 10001}, "limit"},
		{"list_leases limit string", "list_leases", map[string]any{"limit": "5"}, "limit"},
		{"list_leases resource_prefix integer", "list_leases", map[string]any{"resource_prefix": 1}, "resource_prefix"},
		{"list_leases agent_id integer", "list_leases", map[string]any{"agent_id": 1}, "agent_id"},
		{"list_agents limit 10001", "list_agents", map[string]any{"limit": 10001}, "limit"},
		{"revoke lease_id missing", "revoke", map[string]any{}, "lease_id"},
		{"freeze resource_type missing", "freeze", map[string]any{"resource_path": "/x"}, "resource_type"},
		{"freeze resource_type unknown", "freeze", map[string]any{"resource_type": "DIR", "resource_path": "/x"}, "resource_type"},
		{"freeze resource_path missing", "freeze", map[string]any{"resource_type": "FILE"}, "resource_path"},
		{"thaw resource_path control", "thaw", map[string]any{"resource_type": "FILE", "resource_path": "/\x02"}, "resource_path"},
		{"hello client integer", "hello", map[string]any{"client": 5}, "client"},
		// INVALID_ARGUMENT wins over UNKNOWN_AGENT.
		{"unknown agent, ttl 0", "acquire", cfWith(ok, "agent_id", "ghost", "ttl", 0), "ttl"},
		{"unknown agent, bad predicate", "acquire", cfWith(ok, "agent_id", "ghost", "predicate", "X"), "predicate"},
		{"unknown agent, many, bad intent", "acquire_many", manyArgs("ghost", []any{map[string]any{"resource_type": "FILE", "resource_path": "", "predicate": "MUTATES"}}), "resource_path"},
	}
	cases = append(cases, manyCases()...)
	defer func() { c.t = t }()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c.t = t
			msg := c.fail(tc.op, tc.args, "INVALID_ARGUMENT")
			if !strings.Contains(msg, tc.key) {
				t.Errorf("%s: message %q does not name %s", tc.name, msg, tc.key)
			}
		})
	}
}

// manyArgs is an acquire_many for agent with intents.
func manyArgs(agent string, in any) map[string]any {
	return map[string]any{"agent_id": agent, "session_id": "s", "ttl": 1000, "intents": in}
}

// manyCases are acquire_many's own INVALID_ARGUMENT cases.
func manyCases() []badArg {
	in := func(kv ...any) []any {
		return []any{cfWith(map[string]any{"resource_type": "FILE", "resource_path": "/m", "predicate": "MUTATES"}, kv...)}
	}
	return []badArg{
		{"intents missing", "acquire_many", manyArgs("a", nil), "intents"},
		{"intents empty", "acquire_many", manyArgs("a", []any{}), "intents"},
		{"intents map", "acquire_many", manyArgs("a", map[string]any{"x": 1}), "intents"},
		{"intents of strings", "acquire_many", manyArgs("a", []any{"FILE:/x"}), "intents"},
		{"intents 65", "acquire_many", manyArgs("a", intents("/q", "CONSUMES", 65)), "intents"},
		{"intent predicate missing", "acquire_many", manyArgs("a", in("predicate", nil)), "predicate"},
		{"intent predicate unknown", "acquire_many", manyArgs("a", in("predicate", "READS")), "predicate"},
		{"intent resource_type unknown", "acquire_many", manyArgs("a", in("resource_type", "X")), "resource_type"},
		{"intent resource_path relative FILE", "acquire_many", manyArgs("a", in("resource_path", "m")), `intents[0].resource_path "m" is relative`},
		{"intent resource_path long", "acquire_many", manyArgs("a", in("resource_path", "/"+strings.Repeat("p", 4096))), "resource_path"},
		{"many ttl 0", "acquire_many", cfWith(manyArgs("a", in()), "ttl", 0), "ttl"},
		{"many session_id missing", "acquire_many", cfWith(manyArgs("a", in()), "session_id", nil), "session_id"},
		{"many idem 65 bytes", "acquire_many", cfWith(manyArgs("a", in()), "idem", strings.Repeat("k", 65)), "idem"},
	}
}

// TestConformanceLimitsAccepted checks the largest allowed values, nil as
// absent, and UNKNOWN_AGENT.
func TestConformanceLimitsAccepted(t *testing.T) {
	_, c := confStart(t)
	agent := strings.Repeat("a", 256)
	c.register(agent, 1)
	g := c.grant(cfAcq(agent, strings.Repeat("s", 256), "/"+strings.Repeat("p", 4095), "MUTATES", 24*3600*1000))
	if cfNum(t, g, "expires_at")-cfNum(t, g, "acquired_at") != 24*3600*1000 {
		t.Errorf("ttl max_ttl gave %v", g)
	}
	c.grant(cfWith(cfAcq(agent, "s", "/u\u00e9\u4e16", "MUTATES", 1), "wait_timeout", 0))
	// ttl as different integer widths.
	for i, ttl := range []any{uint8(200), int16(2000), uint32(60000), int64(60000), uint64(60000)} {
		g := c.grant(cfWith(cfAcq(agent, "s", "/w"+string(rune('a'+i)), "MUTATES", 1), "ttl", ttl))
		if want, _ := cfInt(ttl); cfNum(t, g, "expires_at")-cfNum(t, g, "acquired_at") != want {
			t.Errorf("ttl %v (%T) gave %v", ttl, ttl, g)
		}
	}
	// nil means absent: an optional argument takes its default.
	c.grant(cfWith(cfAcq(agent, "s", "/n", "MUTATES", 1000), "wait_timeout", nilValue{}, "idem", nilValue{}))
	c.ok("list_leases", map[string]any{"limit": nilValue{}})

	c.fail("acquire", cfAcq("ghost", "s", "/x", "MUTATES", 1000), "UNKNOWN_AGENT")
	c.fail("acquire_many", manyArgs("ghost", intents("/g", "MUTATES", 2)), "UNKNOWN_AGENT")
}

// nilValue marshals as msgpack nil (a nil map value would be deleted by
// cfWith).
type nilValue struct{}

// EncodeMsgpack writes nil.
func (nilValue) EncodeMsgpack(enc *msgpack.Encoder) error { return enc.EncodeNil() }

// TestConformanceOtherOpsArgsIgnored checks that keys that are not
// arguments of the op are unknown keys for it and ignored, whatever their
// values, and that an unknown op gets UNKNOWN_OP whatever its args.
func TestConformanceOtherOpsArgsIgnored(t *testing.T) {
	_, c := confStart(t)
	c.ok("hello", map[string]any{"ttl": -1})
	c.ok("stats", map[string]any{"ttl": "x"})
	c.ok("active_lease_count", map[string]any{"intents": 5})
	c.ok("evict_expired", map[string]any{"agent_id": ""})
	c.ok("register_agent", map[string]any{"agent_id": "b", "ttl": "x"})
	c.ok("release", map[string]any{"lease_id": "00000000-0000-4000-8000-000000000000", "priority": -1})
	c.ok("list_agents", map[string]any{"resource_prefix": 7})
	c.fail("nope", map[string]any{"ttl": -1}, "UNKNOWN_OP")
}

// TestConformanceHeartbeatTTLZero checks that heartbeat's optional ttl is
// limited to 1 ms .. max_ttl like every ttl (0 is not "keep").
func TestConformanceHeartbeatTTLZero(t *testing.T) {
	_, c := confStart(t)
	c.register("a", 1)
	g := c.grant(cfAcq("a", "s", "/x", "MUTATES", 60000))
	c.fail("heartbeat", map[string]any{"lease_id": g["lease_id"], "ttl": 0}, "INVALID_ARGUMENT")
	c.fail("heartbeat", map[string]any{"lease_id": "x", "ttl": 0}, "INVALID_ARGUMENT")
}

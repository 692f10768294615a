package tests

// Conformance tests: an independent client written from protocol/README.md alone.
// They speak the wire protocol with net and msgpack directly (plain Go maps
// in, map[string]any out) and never use the repo's protocol or clientlib
// packages, so that our own encoder or decoder cannot hide a mismatch.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/klockd/klock/tests/harness"
)

// confTimeout bounds every read and write of a conformance connection.
const confTimeout = 10 * time.Second

// confConn is one raw client connection.
type confConn struct {
	t      *testing.T
	c      net.Conn
	nextID uint64
}

// confStart starts an in-memory daemon and returns it with one connection.
func confStart(t *testing.T, extra ...string) (*harness.Daemon, *confConn) {
	t.Helper()
	d := harness.Start(t, harness.Options{StateDir: "none", Args: extra})
	return d, confDial(t, d)
}

// confDial opens a new connection to d, closed when the test ends.
func confDial(t *testing.T, d *harness.Daemon) *confConn {
	t.Helper()
	c, err := net.Dial("unix", d.Socket)
	if err != nil {
		t.Fatalf("dial %s: %v", d.Socket, err)
	}
	t.Cleanup(func() { c.Close() })
	return &confConn{t: t, c: c, nextID: 1000}
}

// writeRaw writes b as it is.
func (c *confConn) writeRaw(b []byte) {
	c.t.Helper()
	c.c.SetWriteDeadline(time.Now().Add(confTimeout))
	if _, err := c.c.Write(b); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

// frame returns body with its length prefix.
func cfFrame(body []byte) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(len(body)))
	return append(b, body...)
}

// request builds the frame of one request; args nil leaves the key out.
func (c *confConn) request(id uint64, op string, args map[string]any) []byte {
	m := map[string]any{"id": id, "op": op}
	if args != nil {
		m["args"] = args
	}
	return cfFrame(mp(c.t, m))
}

// send writes one request with a fresh id and returns the id.
func (c *confConn) send(op string, args map[string]any) uint64 {
	c.t.Helper()
	c.nextID++
	c.writeRaw(c.request(c.nextID, op, args))
	return c.nextID
}

// tryRecv reads one response frame and decodes it into a map.
func (c *confConn) tryRecv(timeout time.Duration) (map[string]any, error) {
	c.c.SetReadDeadline(time.Now().Add(timeout))
	var hdr [4]byte
	if _, err := io.ReadFull(c.c, hdr[:]); err != nil {
		return nil, err
	}
	n := binary.BigEndian.Uint32(hdr[:])
	if n == 0 || n > 64<<20 {
		return nil, fmt.Errorf("response frame length %d", n)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(c.c, body); err != nil {
		return nil, err
	}
	var m map[string]any
	if err := msgpack.Unmarshal(body, &m); err != nil {
		return nil, fmt.Errorf("response body %x is not a msgpack map: %v", body, err)
	}
	return m, nil
}

// recv reads one response; it fails the test on error.
func (c *confConn) recv() map[string]any {
	c.t.Helper()
	m, err := c.tryRecv(confTimeout)
	if err != nil {
		c.t.Fatalf("read response: %v", err)
	}
	return m
}

// call sends one request and reads its response, checking the echoed id.
func (c *confConn) call(op string, args map[string]any) map[string]any {
	c.t.Helper()
	id := c.send(op, args)
	resp := c.recv()
	if got, ok := cfInt(resp["id"]); !ok || uint64(got) != id {
		c.t.Fatalf("%s: response id %v (%T); want %d", op, resp["id"], resp["id"], id)
	}
	return resp
}

// ok calls op and returns its result, failing unless the response is a
// well-formed success.
func (c *confConn) ok(op string, args map[string]any) map[string]any {
	c.t.Helper()
	return cfResult(c.t, op+" "+fmt.Sprint(args), c.call(op, args))
}

// fail calls op and returns the error message, failing unless the response
// is a well-formed error with code.
func (c *confConn) fail(op string, args map[string]any, code string) string {
	c.t.Helper()
	return cfError(c.t, op+" "+fmt.Sprint(args), c.call(op, args), code)
}

// cfResult checks the envelope of a success and returns its result.
func cfResult(t *testing.T, what string, resp map[string]any) map[string]any {
	t.Helper()
	if ok, isBool := resp["ok"].(bool); !isBool || !ok {
		t.Fatalf("%s: response %v; want ok: true", what, resp)
	}
	cfCheckShape(t, what+" envelope", resp, cfShape{"id": cfUint, "ok": cfBool, "result": cfMap})
	return resp["result"].(map[string]any)
}

// cfError checks the envelope of an error with code and returns its message.
func cfError(t *testing.T, what string, resp map[string]any, code string) string {
	t.Helper()
	if ok, isBool := resp["ok"].(bool); !isBool || ok {
		t.Fatalf("%s: response %v; want ok: false with %s", what, resp, code)
	}
	cfCheckShape(t, what+" envelope", resp, cfShape{"id": cfUint, "ok": cfBool, "error": cfMap})
	e := resp["error"].(map[string]any)
	cfCheckShape(t, what+" error", e, cfShape{"code": cfStr, "message": cfStr})
	if e["code"] != code {
		t.Fatalf("%s: error %v: %v; want %s", what, e["code"], e["message"], code)
	}
	if e["message"] == "" {
		t.Errorf("%s: empty error message", what)
	}
	return e["message"].(string)
}

// cfKind is a msgpack type a result value must have.
type cfKind int

const (
	cfUint cfKind = iota // a msgpack integer >= 0
	cfBool
	cfStr
	cfArr
	cfMap
)

func (k cfKind) String() string {
	return [...]string{"uint", "bool", "string", "array", "map"}[k]
}

// cfShape is the exact key set of a map with each value's cfKind.
type cfShape map[string]cfKind

// cfCheckShape fails unless m has exactly the keys of want with their kinds.
func cfCheckShape(t *testing.T, what string, m map[string]any, want cfShape) {
	t.Helper()
	var missing, extra, wrong []string
	for k, wk := range want {
		v, present := m[k]
		if !present {
			missing = append(missing, k)
			continue
		}
		if !cfIsKind(v, wk) {
			wrong = append(wrong, fmt.Sprintf("%s=%v (%T, want %s)", k, v, v, wk))
		}
	}
	for k := range m {
		if _, known := want[k]; !known {
			extra = append(extra, k)
		}
	}
	sort.Strings(missing)
	sort.Strings(extra)
	sort.Strings(wrong)
	if len(missing)+len(extra)+len(wrong) > 0 {
		t.Fatalf("%s: %v: missing keys %v, unexpected keys %v, wrong types %v", what, m, missing, extra, wrong)
	}
}

func cfIsKind(v any, k cfKind) bool {
	switch k {
	case cfUint:
		if _, big := v.(uint64); big {
			return true
		}
		n, ok := cfInt(v)
		return ok && n >= 0
	case cfBool:
		_, ok := v.(bool)
		return ok
	case cfStr:
		_, ok := v.(string)
		return ok
	case cfArr:
		_, ok := v.([]any)
		return ok
	case cfMap:
		_, ok := v.(map[string]any)
		return ok
	}
	return false
}

// cfInt returns v as an int64 when it is a msgpack integer of any width
// (uint64 values above 2^63-1 wrap; callers compare them as uint64).
func cfInt(v any) (int64, bool) {
	switch n := v.(type) {
	case int8:
		return int64(n), true
	case int16:
		return int64(n), true
	case int32:
		return int64(n), true
	case int64:
		return n, true
	case uint8:
		return int64(n), true
	case uint16:
		return int64(n), true
	case uint32:
		return int64(n), true
	case uint64:
		return int64(n), true
	}
	return 0, false
}

// num returns m[key] as an int64, failing unless it is an integer.
func cfNum(t *testing.T, m map[string]any, key string) int64 {
	t.Helper()
	n, ok := cfInt(m[key])
	if !ok {
		t.Fatalf("%s = %v (%T); want an integer", key, m[key], m[key])
	}
	return n
}

// cfNow is the wall clock in Unix milliseconds.
func cfNow() int64 { return time.Now().UnixMilli() }

// cfGrantShape is an acquire grant.
var cfGrantShape = cfShape{"success": cfBool, "lease_id": cfStr, "agent_id": cfStr, "session_id": cfStr,
	"resource": cfStr, "predicate": cfStr, "acquired_at": cfUint, "expires_at": cfUint, "fence": cfUint}

// cfDenialShape is an acquire denial.
var cfDenialShape = cfShape{"success": cfBool, "reason": cfStr, "wait_time": cfUint, "held_by": cfStr, "message": cfStr}

// cfCheckGrant fails unless r is a well-formed grant and returns it.
func cfCheckGrant(t *testing.T, what string, r map[string]any) map[string]any {
	t.Helper()
	if r["success"] != true {
		t.Fatalf("%s: %v; want a grant", what, r)
	}
	cfCheckShape(t, what, r, cfGrantShape)
	if _, err := uuid.Parse(r["lease_id"].(string)); err != nil {
		t.Errorf("%s: lease_id %q is not a UUID: %v", what, r["lease_id"], err)
	}
	return r
}

// cfCheckDenial fails unless r is a well-formed denial with reason; it
// returns r.
func cfCheckDenial(t *testing.T, what string, r map[string]any, reason string) map[string]any {
	t.Helper()
	if r["success"] != false {
		t.Fatalf("%s: %v; want a %s denial", what, r, reason)
	}
	cfCheckShape(t, what, r, cfDenialShape)
	if r["reason"] != reason {
		t.Fatalf("%s: reason %v (%v); want %s", what, r["reason"], r["message"], reason)
	}
	if w := cfNum(t, r, "wait_time"); w < 1 {
		t.Errorf("%s: wait_time %d; want >= 1", what, w)
	}
	if r["message"] == "" {
		t.Errorf("%s: empty message", what)
	}
	return r
}

// acq returns acquire args for FILE:path.
func cfAcq(agent, session, path, pred string, ttl int64) map[string]any {
	return map[string]any{"agent_id": agent, "session_id": session, "resource_type": "FILE",
		"resource_path": path, "predicate": pred, "ttl": ttl}
}

// with returns a copy of m with the pairs kv set (a nil value deletes).
func cfWith(m map[string]any, kv ...any) map[string]any {
	out := make(map[string]any, len(m)+len(kv)/2)
	for k, v := range m {
		out[k] = v
	}
	for i := 0; i < len(kv); i += 2 {
		if kv[i+1] == nil {
			delete(out, kv[i].(string))
		} else {
			out[kv[i].(string)] = kv[i+1]
		}
	}
	return out
}

// register registers agent with priority (< 0: none) and returns the result.
func (c *confConn) register(agent string, priority int64) map[string]any {
	c.t.Helper()
	a := map[string]any{"agent_id": agent}
	if priority >= 0 {
		a["priority"] = priority
	}
	return c.ok("register_agent", a)
}

// grant acquires and fails unless granted.
func (c *confConn) grant(args map[string]any) map[string]any {
	c.t.Helper()
	return cfCheckGrant(c.t, fmt.Sprint("acquire ", args), c.ok("acquire", args))
}

// deny acquires and fails unless denied with reason.
func (c *confConn) deny(args map[string]any, reason string) map[string]any {
	c.t.Helper()
	return cfCheckDenial(c.t, fmt.Sprint("acquire ", args), c.ok("acquire", args), reason)
}

// cfWaitPast waits until the wall clock has passed ms (a Unix ms time).
func cfWaitPast(t *testing.T, ms int64) {
	t.Helper()
	waitFor(t, fmt.Sprintf("clock past %d", ms), func() bool { return cfNow() > ms })
}

// expectClosed fails unless the daemon closes c (EOF) within the timeout.
func (c *confConn) expectClosed() {
	c.t.Helper()
	m, err := c.tryRecv(confTimeout)
	if err == nil {
		c.t.Fatalf("got %v; want the connection closed", m)
	}
	if !errors.Is(err, io.EOF) && !strings.Contains(err.Error(), "reset") {
		c.t.Fatalf("read after close: %v; want EOF", err)
	}
}

// TestConformanceHello checks hello's result with and without args.
func TestConformanceHello(t *testing.T) {
	d, c := confStart(t)
	for _, a := range []map[string]any{nil, {}, {"client": "conformance"}} {
		before := cfNow()
		r := c.ok("hello", a)
		cfCheckShape(t, "hello", r, cfShape{"server": cfStr, "protocol": cfUint, "pid": cfUint, "max_frame": cfUint, "started_at": cfUint})
		if p := cfNum(t, r, "protocol"); p != 1 {
			t.Errorf("hello protocol = %d; want 1", p)
		}
		if pid := cfNum(t, r, "pid"); int(pid) != d.Cmd.Process.Pid {
			t.Errorf("hello pid = %d; want %d", pid, d.Cmd.Process.Pid)
		}
		if mf := cfNum(t, r, "max_frame"); mf != 1<<20 {
			t.Errorf("hello max_frame = %d; want the default 1 MiB", mf)
		}
		if s := cfNum(t, r, "started_at"); s > before || s < before-10*60*1000 {
			t.Errorf("hello started_at = %d; want a recent ms time <= %d", s, before)
		}
		if r["server"] == "" {
			t.Errorf("hello server is empty")
		}
	}
	// max_frame follows --max-frame.
	_, c2 := confStart(t, "--max-frame", "4096")
	if mf := cfNum(t, c2.ok("hello", nil), "max_frame"); mf != 4096 {
		t.Errorf("hello max_frame with --max-frame 4096 = %d", mf)
	}
}

// TestConformancePipelining writes several requests in one write and
// checks that a parked acquire is answered after later requests, by id.
func TestConformancePipelining(t *testing.T) {
	d, c := confStart(t)
	c.register("senior", 10)
	c.register("junior", 20)
	other := confDial(t, d)
	held := other.grant(cfAcq("junior", "s", "/p", "MUTATES", 60000))

	// One write: a parked acquire (id 1), then hello (2) and a count (3).
	var b []byte
	b = append(b, c.request(1, "acquire", cfWith(cfAcq("senior", "s", "/p", "MUTATES", 60000), "wait_timeout", 10000))...)
	b = append(b, c.request(2, "hello", nil)...)
	b = append(b, c.request(3, "active_lease_count", nil)...)
	c.writeRaw(b)
	for _, want := range []int64{2, 3} {
		r := c.recv()
		if id := cfNum(t, r, "id"); id != want {
			t.Fatalf("answer id %d (%v); want %d before the parked acquire", id, r, want)
		}
		cfResult(t, "pipelined", r)
	}
	other.ok("release", map[string]any{"lease_id": held["lease_id"]})
	r := c.recv()
	if id := cfNum(t, r, "id"); id != 1 {
		t.Fatalf("answer id %d; want 1 (the parked acquire)", id)
	}
	g := cfCheckGrant(t, "parked acquire", cfResult(t, "parked acquire", r))
	if g["agent_id"] != "senior" || cfNum(t, g, "fence") <= cfNum(t, held, "fence") {
		t.Errorf("parked grant %v; want senior with a fence above %v", g, held["fence"])
	}
}

// TestConformanceIDWidths checks that an id of any integer width is echoed.
func TestConformanceIDWidths(t *testing.T) {
	_, c := confStart(t)
	for _, id := range []any{uint8(7), int16(300), int32(70000), int64(1 << 40), uint64(1<<64 - 1)} {
		c.writeRaw(cfFrame(mp(t, map[string]any{"id": id, "op": "hello"})))
		r := c.recv()
		got, ok := cfInt(r["id"])
		want, _ := cfInt(id)
		if !ok || got != want {
			t.Errorf("id %v (%T) echoed as %v (%T)", id, id, r["id"], r["id"])
			continue
		}
		cfResult(t, fmt.Sprint("hello id ", id), r)
	}
}

// TestConformanceUnknownArgsIgnored checks that unknown keys in args are
// ignored, for ops with and without arguments.
func TestConformanceUnknownArgsIgnored(t *testing.T) {
	_, c := confStart(t)
	extra := map[string]any{"zz_future": map[string]any{"x": []any{1, "y"}}}
	c.ok("hello", extra)
	c.ok("stats", extra)
	c.ok("active_lease_count", map[string]any{"zz": 1})
	c.ok("register_agent", map[string]any{"agent_id": "a", "zz": true})
	c.grant(cfWith(cfAcq("a", "s", "/x", "MUTATES", 1000), "zz_future", "v"))
	c.ok("list_leases", map[string]any{"zz": nil})
}

package main

import (
	"encoding/json"
	"fmt"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/klockd/klock/protocol"
)

var testNow = time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)

func ms(t time.Time) int64 { return t.UnixMilli() }

func TestFormatLeases(t *testing.T) {
	ls := []protocol.LeaseInfo{
		{LeaseID: "11111111-aaaa", AgentID: "senior-bot", SessionID: "s1", Resource: "FILE:/src/auth.ts",
			Predicate: "MUTATES", ExpiresAt: ms(testNow.Add(29500 * time.Millisecond)), Fence: 7, OwnerUID: 1000, OwnerPID: 42},
		{LeaseID: "22222222-bbbb", AgentID: "b", SessionID: "session\twith\ttabs", Resource: "SYMBOL:x",
			Predicate: "CONSUMES", ExpiresAt: ms(testNow.Add(-time.Second)), Fence: 12, OwnerUID: 0, OwnerPID: 1},
	}
	var b strings.Builder
	if err := formatLeases(&b, ls, true, testNow); err != nil {
		t.Fatal(err)
	}
	want := `RESOURCE           PREDICATE  AGENT       SESSION            FENCE  EXPIRES   OWNER            BOUND TO  LEASE
FILE:/src/auth.ts  MUTATES    senior-bot  s1                 7      in 29.5s  uid=1000,pid=42  -         11111111-aaaa
SYMBOL:x           CONSUMES   b           session with tabs  12     expired   uid=0,pid=1      -         22222222-bbbb
(first 2 shown, as --limit asks; more match)
`
	if b.String() != want {
		t.Errorf("formatLeases =\n%s\nwant\n%s", b.String(), want)
	}

	// Bound to this test process, without a ttl: its name is read from /proc.
	comm, err := os.ReadFile("/proc/self/comm")
	if err != nil {
		t.Fatal(err)
	}
	me := int32(os.Getpid())
	b.Reset()
	bound := []protocol.LeaseInfo{{LeaseID: "33333333-cccc", AgentID: "c", SessionID: "s", Resource: "FILE:/b",
		Predicate: "MUTATES", Fence: 13, OwnerUID: 0, OwnerPID: me, BoundPID: me}}
	if err := formatLeases(&b, bound, false, testNow); err != nil {
		t.Fatal(err)
	}
	row := strings.Join(strings.Fields(strings.Split(b.String(), "\n")[1]), " ")
	wantRow := fmt.Sprintf("FILE:/b MUTATES c s 13 no ttl uid=0,pid=%d %d (%s) 33333333-cccc", me, me, strings.TrimSpace(string(comm)))
	if row != wantRow {
		t.Errorf("formatLeases of a bound lease without a ttl: row %q; want %q", row, wantRow)
	}

	b.Reset()
	if err := formatLeases(&b, nil, false, testNow); err != nil || b.String() != "no active leases\n" {
		t.Errorf("formatLeases(none) = %q, %v; want %q", b.String(), err, "no active leases\n")
	}
}

func TestFormatAgents(t *testing.T) {
	as := []protocol.AgentInfo{
		{AgentID: "senior-bot", Priority: 100, RegisteredAt: ms(testNow), Leases: 2},
		{AgentID: "junior", Priority: 200, RegisteredAt: ms(testNow.Add(time.Minute)), Waiting: 1},
	}
	var b strings.Builder
	if err := formatAgents(&b, as, false, time.UTC); err != nil {
		t.Fatal(err)
	}
	want := `AGENT       PRIORITY  REGISTERED           LEASES  WAITING
senior-bot  100       2026-11-29 12:00:00  2       0
junior      200       2026-11-29 12:01:00  0       1
`
	if b.String() != want {
		t.Errorf("formatAgents =\n%s\nwant\n%s", b.String(), want)
	}
	b.Reset()
	if err := formatAgents(&b, nil, false, time.UTC); err != nil || b.String() != "no registered agents\n" {
		t.Errorf("formatAgents(none) = %q, %v", b.String(), err)
	}
}

func TestFormatStatus(t *testing.T) {
	h := &protocol.HelloResult{Server: "klockd/1.0", Protocol: 1, PID: 99, MaxFrame: 1 << 20, StartedAt: ms(testNow)}
	s := &protocol.StatsResult{UptimeMS: 3723000, Connections: 3, Agents: 2, Leases: 5, Waiters: 1,
		Ops: 1000, Grants: 90, Waits: 4, Dies: 6, Expirations: 2, Fence: 90, BoundProcesses: 2, Pidfds: 2, ExitReleases: 7}
	var b strings.Builder
	if err := formatStatus(&b, "/tmp/k.sock", "per-user", h, s, time.UTC); err != nil {
		t.Fatal(err)
	}
	want := `daemon       klockd/1.0 (protocol 1, pid 99)
socket       /tmp/k.sock (per-user daemon)
started      2026-11-29 12:00:00 (up 1h2m3s)
connections  3
agents       2
leases       5
waiters      1
ops          1000
grants       90
denials      4 wait, 6 die
expirations  2
fence        90
bound        2 processes (2 pidfds); 7 leases ended with their process
state        ok
`
	if b.String() != want {
		t.Errorf("formatStatus =\n%s\nwant\n%s", b.String(), want)
	}
	s.Degraded, s.DegradedSince, s.DegradedReason = true, ms(testNow), "ENOSPC: writing /s/log.0000000000000001: no space left on device"
	b.Reset()
	if err := formatStatus(&b, "/tmp/k.sock", "per-user", h, s, time.UTC); err != nil {
		t.Fatal(err)
	}
	line := "state        DEGRADED since 2026-11-29 12:00:00: changes are refused (UNAVAILABLE), reads are served; ENOSPC: writing /s/log.0000000000000001: no space left on device\n"
	if !strings.HasSuffix(b.String(), line) {
		t.Errorf("formatStatus when degraded =\n%s\nwant it to end with\n%s", b.String(), line)
	}
}

func TestFormatEvent(t *testing.T) {
	at := ms(testNow)
	for _, tc := range []struct {
		ev   protocol.WatchEvent
		want string
	}{
		{protocol.WatchEvent{Event: "grant", At: at, Resource: "FILE:/a", AgentID: "x", Predicate: "MUTATES", Fence: 3},
			"12:00:00.000  grant    FILE:/a  x  MUTATES  fence 3\n"},
		{protocol.WatchEvent{Event: "grant", At: at, Resource: "FILE:/a", AgentID: "x", Predicate: "MUTATES", Fence: 4, BoundPID: 4242},
			"12:00:00.000  grant    FILE:/a  x  MUTATES  fence 4  (bound to process 4242)\n"},
		{protocol.WatchEvent{Event: "wait", At: at, Resource: "FILE:/a", AgentID: "y", Predicate: "READS", HeldBy: "x"},
			"12:00:00.000  wait     FILE:/a  y  READS  (waits for x)\n"},
	} {
		var b strings.Builder
		if err := formatEvent(&b, &tc.ev, time.UTC); err != nil {
			t.Fatal(err)
		}
		if b.String() != tc.want {
			t.Errorf("formatEvent(%+v) =\n%q\nwant\n%q", tc.ev, b.String(), tc.want)
		}
	}
}

func TestFormatGrants(t *testing.T) {
	gs := []grantJSON{
		{LeaseID: "id-1", Resource: "FILE:/a", Predicate: "MUTATES", Fence: 3, ExpiresAt: ms(testNow.Add(time.Minute))},
		{LeaseID: "id-22", Resource: "SYMBOL:long.name", Predicate: "CONSUMES", Fence: 4, ExpiresAt: ms(testNow.Add(time.Minute))},
	}
	var b strings.Builder
	if err := formatGrants(&b, gs, testNow); err != nil {
		t.Fatal(err)
	}
	want := "id-1   FILE:/a           MUTATES   fence 3  expires in 1m0s\n" +
		"id-22  SYMBOL:long.name  CONSUMES  fence 4  expires in 1m0s\n"
	if b.String() != want {
		t.Errorf("formatGrants =\n%q\nwant\n%q", b.String(), want)
	}
}

func TestDenialText(t *testing.T) {
	tests := []struct {
		d    denialJSON
		want string
	}{
		{denialJSON{Reason: "DIE", WaitTime: 250, HeldBy: "senior", Message: "held by an older agent"},
			"denied: DIE (held by senior): held by an older agent; retry in 250ms or use --wait"},
		{denialJSON{Reason: "WAIT", WaitTime: 1000},
			"denied: WAIT; retry in 1s or use --wait"},
		{denialJSON{Reason: "RESOURCE_LOCKED", Message: "frozen\nby operator"},
			"denied: RESOURCE_LOCKED: frozen by operator"},
	}
	for _, tt := range tests {
		if got := denialText(tt.d); got != tt.want {
			t.Errorf("denialText(%+v) = %q; want %q", tt.d, got, tt.want)
		}
	}
}

func TestUntilText(t *testing.T) {
	tests := []struct {
		d    time.Duration
		want string
	}{
		{-time.Second, "expired"},
		{0, "expired"},
		{1500 * time.Microsecond, "in 2ms"},
		{999 * time.Millisecond, "in 999ms"},
		{29549 * time.Millisecond, "in 29.5s"},
		{90*time.Second + 400*time.Millisecond, "in 1m30s"},
		{25 * time.Hour, "in 25h0m0s"},
	}
	for _, tt := range tests {
		if got := untilText(testNow.Add(tt.d), testNow); got != tt.want {
			t.Errorf("untilText(now+%v) = %q; want %q", tt.d, got, tt.want)
		}
	}
}

func TestCell(t *testing.T) {
	for in, want := range map[string]string{"": "-", "a\tb": "a b", "x\ny\r": "x y ", "ok": "ok", "\x7f": " "} {
		if got := cell(in); got != want {
			t.Errorf("cell(%q) = %q; want %q", in, got, want)
		}
	}
}

// TestJSONKeysMatchProtocol checks that every --json type uses the keys of
// its protocol result, field by field, so scripts see the wire names; the
// protocol types klockctl prints as they are, by their own json tags.
func TestJSONKeysMatchProtocol(t *testing.T) {
	pairs := []struct{ json, wire any }{
		{grantJSON{}, protocol.Grant{}},
		{manyGrantJSON{}, protocol.AcquireManyGrant{}},
		{denialJSON{}, protocol.Denial{}},
		{protocol.LeaseInfo{}, protocol.LeaseInfo{}},
		{leasesJSON{}, protocol.ListLeasesResult{}},
		{protocol.AgentInfo{}, protocol.AgentInfo{}},
		{agentsJSON{}, protocol.ListAgentsResult{}},
		{helloJSON{}, protocol.HelloResult{}},
		{statsJSON{}, protocol.StatsResult{}},
		{registerJSON{}, protocol.RegisterResult{}},
	}
	for _, p := range pairs {
		jt, wt := reflect.TypeOf(p.json), reflect.TypeOf(p.wire)
		if jt.NumField() != wt.NumField() {
			t.Errorf("%v has %d fields, %v has %d", jt, jt.NumField(), wt, wt.NumField())
			continue
		}
		for i := range jt.NumField() {
			jk := strings.Split(jt.Field(i).Tag.Get("json"), ",")[0]
			wk := strings.Split(wt.Field(i).Tag.Get("msgpack"), ",")[0]
			if jk != wk {
				t.Errorf("%v.%s has json key %q; %v has msgpack key %q", jt, jt.Field(i).Name, jk, wt, wk)
			}
		}
	}
}

func TestLeasesJSONNeverNull(t *testing.T) {
	b, err := json.Marshal(toLeasesJSON(nil, ""))
	if err != nil || string(b) != `{"leases":[],"truncated":false}` {
		t.Errorf("toLeasesJSON(nil) = %s, %v; want an empty list, not null", b, err)
	}
	b, err = json.Marshal(toAgentsJSON(nil, "x"))
	if err != nil || string(b) != `{"agents":[],"truncated":true,"next":"x"}` {
		t.Errorf("toAgentsJSON(nil) = %s, %v; want an empty list, not null", b, err)
	}
}

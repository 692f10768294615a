package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/kardianos/service"

	units "github.com/klockd/klock/systemd"
)

const testExe = "/usr/local/bin/klockd"

// With no flags, install writes the hand-written unit unchanged.
func TestServiceUnitDefaultsAreTheShippedUnits(t *testing.T) {
	for _, user := range []bool{false, true} {
		args, err := serviceArgs(nil, user)
		if err != nil {
			t.Fatal(err)
		}
		got, err := serviceUnit(testExe, args, user)
		if err != nil {
			t.Fatal(err)
		}
		if want := units.Unit(user); got != want {
			t.Errorf("serviceUnit(no flags, user=%v) differs from the shipped unit:\n%s\nwant:\n%s", user, got, want)
		}
	}
}

func TestServiceArgs(t *testing.T) {
	tests := []struct {
		flags []string
		user  bool
		want  []string
	}{
		{nil, false, []string{"run", "--socket", systemSocket, "--state-dir", systemStateDir}},
		{nil, true, []string{"run", "--socket", userSocket, "--state-dir", userStateDir}},
		{[]string{"--fsync", "always", "--socket", "/srv/k.sock", "-max-leases=10"}, false,
			[]string{"run", "--socket", "/srv/k.sock", "--state-dir", systemStateDir, "--fsync", "always", "--max-leases", "10"}},
		{[]string{"--state-dir", ""}, true, []string{"run", "--socket", userSocket, "--state-dir", ""}},
		{[]string{"--log-format=json", "--socket-group", "agents", "--max-ttl", "1h"}, false,
			[]string{"run", "--socket", systemSocket, "--state-dir", systemStateDir, "--log-format", "json", "--max-ttl", "1h0m0s", "--socket-group", "agents"}},
	}
	for _, tt := range tests {
		got, err := serviceArgs(tt.flags, tt.user)
		if err != nil || !reflect.DeepEqual(got, tt.want) {
			t.Errorf("serviceArgs(%q, user=%v) = %q, %v; want %q", tt.flags, tt.user, got, err, tt.want)
		}
	}
}

func TestServiceArgsRejects(t *testing.T) {
	for _, flags := range [][]string{
		{"--no-such-flag"},
		{"--socket", "relative.sock"},
		{"--state-dir", "state"},
		{"--socket", ""},
		{"--fsync"},
		{"extra"},
		{"--socket", "/tmp/x.sock", "positional"},
		{"--max-leases", "many"},
	} {
		if args, err := serviceArgs(flags, false); err == nil || !strings.HasPrefix(err.Error(), "klock: install: ") {
			t.Errorf("serviceArgs(%q) = %q, %v; want a klock: install: error", flags, args, err)
		}
	}
	if _, err := serviceUnit(testExe, []string{"run", "--socket", "/tmp/{{.Path}}"}, false); err == nil {
		t.Errorf("serviceUnit with a template action in an argument succeeded; want an error")
	}
	if _, err := serviceUnit("klockd", nil, false); err == nil {
		t.Errorf("serviceUnit with a relative executable succeeded; want an error")
	}
}

// The ExecStart written must give the daemon exactly the flags install got,
// whatever characters they hold.
func TestServiceUnitExecStartRoundTrip(t *testing.T) {
	t.Setenv("XDG_RUNTIME_DIR", "/run/user/1000")
	odd := []string{
		"/srv/with space/k.sock", `/srv/quote"d/k.sock`, "/srv/per%cent/k.sock",
		"/srv/$HOME/k.sock", `/srv/back\slash/k.sock`, "/srv/semi;colon/k.sock",
		"/srv/it's/k.sock", "/srv/%t/k.sock", "/srv/tab\there/k.sock",
	}
	for _, socket := range odd {
		for _, user := range []bool{false, true} {
			args, err := serviceArgs([]string{"--socket", socket, "--state-dir", "", "--socket-group", "a b"}, user)
			if err != nil {
				t.Fatal(err)
			}
			unit, err := serviceUnit("/opt/klock dir/klockd", args, user)
			if err != nil {
				t.Fatal(err)
			}
			got, ok := unitExecArgs(unit)
			if !ok || !reflect.DeepEqual(got, args) {
				t.Errorf("ExecStart of --socket %q reads back as %q; want %q\n%s", socket, got, args, unit)
			}
			if s := socketFromUnitArgs(got); s != socket {
				t.Errorf("socketFromUnitArgs = %q; want %q", s, socket)
			}
		}
	}
	// The user default's specifier is expanded as systemd would.
	args, _ := serviceArgs(nil, true)
	unit, _ := serviceUnit(testExe, args, true)
	got, _ := unitExecArgs(unit)
	if s := socketFromUnitArgs(got); s != "/run/user/1000/klock/klockd.sock" {
		t.Errorf("user default socket reads back as %q; want /run/user/1000/klock/klockd.sock", s)
	}
}

// Only ExecStart differs between the shipped unit and an installed one.
func TestServiceUnitChangesOnlyExecStart(t *testing.T) {
	args, err := serviceArgs([]string{"--fsync", "always", "--socket", "/srv/klock/k.sock"}, false)
	if err != nil {
		t.Fatal(err)
	}
	unit, err := serviceUnit("/opt/bin/klockd", args, false)
	if err != nil {
		t.Fatal(err)
	}
	gotLines, wantLines := strings.Split(unit, "\n"), strings.Split(units.Unit(false), "\n")
	if len(gotLines) != len(wantLines) {
		t.Fatalf("rendered unit has %d lines; shipped has %d", len(gotLines), len(wantLines))
	}
	for i := range gotLines {
		if strings.HasPrefix(wantLines[i], "ExecStart=") {
			if want := "ExecStart=/opt/bin/klockd run --socket /srv/klock/k.sock --state-dir /var/lib/klock --fsync always"; gotLines[i] != want {
				t.Errorf("ExecStart line = %q; want %q", gotLines[i], want)
			}
			continue
		}
		if gotLines[i] != wantLines[i] {
			t.Errorf("line %d = %q; want %q", i+1, gotLines[i], wantLines[i])
		}
	}
}

func TestRunServiceDryRun(t *testing.T) {
	var out, errOut bytes.Buffer
	if err := runService("install", []string{"--dry-run", "--fsync", "never"}, &out, &errOut); err != nil {
		t.Fatalf("install --dry-run: %v", err)
	}
	if !strings.Contains(out.String(), " run --socket ") || !strings.Contains(out.String(), "--fsync never\n") ||
		!strings.Contains(out.String(), "[Service]") {
		t.Errorf("install --dry-run printed:\n%s", out.String())
	}
}

func TestRunServiceRejectsFlagsOutsideInstall(t *testing.T) {
	var out bytes.Buffer
	for _, action := range []string{"uninstall", "start", "stop", "restart", "status"} {
		err := runService(action, []string{"--socket", "/x"}, &out, &out)
		if err == nil || !strings.Contains(err.Error(), "takes no flags") {
			t.Errorf("runService(%q, flags) = %v; want a takes-no-flags error", action, err)
		}
	}
	if err := runService("reload", nil, &out, &out); err == nil {
		t.Errorf("runService(reload) succeeded; want an error")
	}
}

// Where kardianos finds no systemd (this CI: PID 1 is not systemd), every
// action fails with one clear line pointing at systemd/README.md.
func TestRunServiceWithoutServiceManager(t *testing.T) {
	if sys := service.ChosenSystem(); sys != nil && sys.String() == "linux-systemd" {
		t.Skip("systemd is running here; tests/systemd_test.go exercises install for real when asked to")
	}
	t.Setenv("KLOCK_SOCKET", "")
	for _, action := range []string{"install", "uninstall", "start", "stop", "restart", "status"} {
		var out bytes.Buffer
		err := runService(action, nil, &out, &out)
		if !errors.Is(err, errNoServiceManager) {
			t.Fatalf("runService(%q) = %v; want errNoServiceManager", action, err)
		}
		msg := err.Error()
		if strings.Contains(msg, "\n") || !strings.HasPrefix(msg, "klock: "+action+": no service manager: ") ||
			!strings.Contains(msg, "systemd/README.md") || !strings.Contains(msg, "klockd run") {
			t.Errorf("runService(%q) error is not one clear line: %q", action, msg)
		}
		if action == "status" && !strings.HasPrefix(out.String(), "socket: ") {
			t.Errorf("status without a service manager printed %q; want the socket line", out.String())
		}
	}
	// Nothing was written.
	if _, err := os.Stat("/etc/systemd/system/klockd.service"); err == nil && os.Geteuid() == 0 {
		t.Errorf("/etc/systemd/system/klockd.service exists after a failed install")
	}
	if home, err := os.UserHomeDir(); err == nil && os.Geteuid() != 0 {
		if _, err := os.Stat(filepath.Join(home, ".config/systemd/user/klockd.service")); err == nil {
			t.Errorf("user unit exists after a failed install")
		}
	}
}

func TestServiceProgramStartStop(t *testing.T) {
	started := make(chan struct{})
	p := &serviceProgram{run: func(ctx context.Context) error {
		close(started)
		<-ctx.Done()
		return errors.New("stopped")
	}}
	if err := p.Start(nil); err != nil {
		t.Fatal(err)
	}
	<-started
	if err := p.Stop(nil); err == nil || err.Error() != "stopped" {
		t.Fatalf("Stop = %v; want the run function's error", err)
	}
	if err := (&serviceProgram{}).Start(nil); err == nil {
		t.Errorf("Start without a run function succeeded; want an error")
	}
	if err := (&serviceProgram{}).Stop(nil); err != nil {
		t.Errorf("Stop of a never-started program = %v; want nil", err)
	}
}

// fakeService stands in for kardianos's systemd service, recording calls.
type fakeService struct {
	service.Service
	calls  []string
	status service.Status
	unit   string // written by Install, removed by Uninstall
	script string
}

func (f *fakeService) record(c string) error { f.calls = append(f.calls, c); return nil }
func (f *fakeService) Start() error          { return f.record("start") }
func (f *fakeService) Stop() error           { return f.record("stop") }
func (f *fakeService) Restart() error        { return f.record("restart") }
func (f *fakeService) Install() error {
	f.record("install")
	return os.WriteFile(f.unit, []byte(f.script), 0o644)
}
func (f *fakeService) Uninstall() error {
	f.record("uninstall")
	return os.Remove(f.unit)
}
func (f *fakeService) Status() (service.Status, error) { return f.status, nil }

func TestControlServiceLifecycle(t *testing.T) {
	t.Setenv("XDG_RUNTIME_DIR", "/run/user/1000")
	args, err := serviceArgs([]string{"--socket", "/srv/k lock/k.sock"}, true)
	if err != nil {
		t.Fatal(err)
	}
	unit, err := serviceUnit(testExe, args, true)
	if err != nil {
		t.Fatal(err)
	}
	setup := serviceSetup{user: true, exe: testExe, args: args, unit: unit, unitPath: filepath.Join(t.TempDir(), "klockd.service")}
	f := &fakeService{unit: setup.unitPath, script: unit, status: service.StatusRunning}
	run := func(action string) (string, error) {
		var out bytes.Buffer
		err := controlService(f, setup, action, &out)
		return out.String(), err
	}

	if _, err := run("start"); err == nil || !strings.Contains(err.Error(), "not installed") {
		t.Fatalf("start before install = %v; want a not-installed error", err)
	}
	if out, _ := run("status"); !strings.Contains(out, "not installed") {
		t.Errorf("status before install printed %q", out)
	}
	out, err := run("install")
	if err != nil || !strings.Contains(out, "installed klockd as a user service") || !strings.Contains(out, "journalctl --user -u klockd") {
		t.Fatalf("install = %q, %v", out, err)
	}
	if _, err := run("install"); err == nil || !strings.Contains(err.Error(), "already installed") {
		t.Errorf("second install = %v; want already installed", err)
	}
	for _, action := range []string{"start", "restart", "stop"} {
		if _, err := run(action); err != nil {
			t.Errorf("%s = %v", action, err)
		}
	}
	out, err = run("status")
	if err != nil || !strings.Contains(out, "installed, running") || !strings.Contains(out, "socket: /srv/k lock/k.sock (not answering)") {
		t.Errorf("status = %q, %v; want running and the socket from the unit", out, err)
	}
	if _, err := run("uninstall"); err != nil {
		t.Fatal(err)
	}
	want := []string{"install", "start", "restart", "stop", "stop", "uninstall"}
	if !reflect.DeepEqual(f.calls, want) {
		t.Errorf("calls = %q; want %q", f.calls, want)
	}
}

// install creates the account from the same entry as the shipped file.
func TestSysusersEntryMatchesShippedFile(t *testing.T) {
	data, err := os.ReadFile("../../systemd/klock.sysusers.conf")
	if err != nil {
		t.Fatal(err)
	}
	var entries []string
	for _, line := range strings.Split(string(data), "\n") {
		if line = strings.TrimSpace(line); line != "" && !strings.HasPrefix(line, "#") {
			entries = append(entries, line)
		}
	}
	if len(entries) != 1 || entries[0] != sysusersEntry {
		t.Errorf("systemd/klock.sysusers.conf entries = %q; want [%q]", entries, sysusersEntry)
	}
}

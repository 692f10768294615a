package main

// Service management: klockd install|uninstall|start|stop|restart|status,
// through github.com/kardianos/service.
//
// How the pieces fit:
//
//   - main.go calls runService(cmd, args, stdout, stderr) for those six
//     subcommands; args are what follows the subcommand.
//   - install is a system service when run as root and a user service
//     (systemd --user) otherwise. The flags after install are checked with
//     the same flag set `klockd run` uses and stored as the service's
//     arguments: ExecStart is this executable, "run" and the flags, with
//     --socket and --state-dir added when not given (the service runs as
//     the klock account, whose defaults would not be the system paths).
//     `klockd install --dry-run [flags]` prints the unit instead and touches
//     nothing, also where there is no service manager.
//   - The unit install writes is serviceUnit's rendering: the hand-written
//     systemd/klockd.service (or systemd/user/klockd.service), embedded by
//     package github.com/klockd/klock/systemd, with ExecStart replaced, so
//     the documented and the installed unit cannot drift apart. It is handed
//     to kardianos as its SystemdScript, already rendered.
//   - The service itself runs `klockd run` directly as a Type=notify unit:
//     the daemon handles SIGTERM and talks sd_notify itself (daemon/systemd),
//     so kardianos only installs and controls the unit. serviceProgram is the
//     kardianos Interface for that control; it also adapts a daemon run
//     function (Start returns at once, Stop cancels and waits up to
//     serviceStopTimeout) for a main that wants kardianos to run it.
//   - Only systemd is supported. kardianos falls back to System V init
//     scripts when it finds no systemd, which would install something
//     half-working, so that case is the one-line errNoServiceManager.

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/kardianos/service"

	"github.com/klockd/klock/cmd/internal/installable"
	units "github.com/klockd/klock/systemd"
)

// serviceName names the unit: klockd.service.
const serviceName = "klockd"

// serviceStopTimeout bounds serviceProgram.Stop.
const serviceStopTimeout = 10 * time.Second

// errNoServiceManager is wrapped by every error saying that this machine has
// no service manager klockd can install into.
var errNoServiceManager = errors.New("no service manager")

// serviceSetup is what a service action needs: where the unit goes and what
// it says. It is computed without touching the service manager.
type serviceSetup struct {
	user     bool     // a systemd --user unit
	exe      string   // absolute path of this klockd
	args     []string // "run" and the flags
	unit     string   // the unit file's contents
	unitPath string   // where kardianos writes it
}

// runService performs a service action (install, uninstall, start, stop,
// restart or status) and prints what it did to stdout. Only install takes
// flags: the daemon flags the service will run with, plus --dry-run.
func runService(action string, args []string, stdout, stderr io.Writer) error {
	dryRun := false
	if action == "install" {
		kept := args[:0:0]
		for _, a := range args {
			if a == "--dry-run" || a == "-dry-run" {
				dryRun = true
				continue
			}
			kept = append(kept, a)
		}
		args = kept
	} else if len(args) > 0 {
		return fmt.Errorf("klock: %s takes no flags (%q); give the daemon's flags to install", action, args[0])
	}
	switch action {
	case "install", "uninstall", "start", "stop", "restart", "status":
	default:
		return fmt.Errorf("klock: unknown service action %q; want install, uninstall, start, stop, restart or status", action)
	}

	userService := os.Geteuid() != 0
	exe, err := os.Executable()
	if err == nil {
		exe, err = filepath.EvalSymlinks(exe)
	}
	if err != nil {
		return fmt.Errorf("klock: finding the klockd executable: %w", err)
	}
	setup, err := newServiceSetup(exe, args, userService)
	if err != nil {
		return err
	}
	// A klockd that go run or go test built is deleted by Go: a unit
	// naming it would fail at its next start.
	var transient error
	if action == "install" {
		transient = installable.Check(setup.exe)
	}
	if dryRun {
		if transient != nil {
			fmt.Fprintf(stderr, "klockd: warning: the unit would run %v; %s\n", transient, installable.Advice("klockd"))
		}
		fmt.Fprintf(stdout, "# klockd install would write %s:\n%s", setup.unitPath, setup.unit)
		return nil
	}
	if err := checkServiceManager(action, userService); err != nil {
		if action == "status" {
			reportSocket(stdout, socketFromUnitArgs(setup.args))
		}
		return err
	}
	if transient != nil {
		return fmt.Errorf("klock: install: refusing to write a unit that runs %v; %s", transient, installable.Advice("klockd"))
	}
	svc, err := service.New(&serviceProgram{}, &service.Config{
		Name:        serviceName,
		DisplayName: "klockd",
		Description: "klock lease daemon",
		Executable:  setup.exe,
		Arguments:   setup.args,
		Option: service.KeyValue{
			"UserService":   userService,
			"SystemdScript": setup.unit,
		},
	})
	if err != nil {
		return fmt.Errorf("klock: %s: %w", action, err)
	}
	return controlService(svc, setup, action, stdout)
}

// controlService runs action against the installed (or to be installed) unit.
func controlService(svc service.Service, setup serviceSetup, action string, stdout io.Writer) error {
	kind, journal := "system", "journalctl -u klockd"
	if setup.user {
		kind, journal = "user", "journalctl --user -u klockd"
	}
	_, statErr := os.Stat(setup.unitPath)
	installed := statErr == nil
	if !installed && action != "install" && action != "status" {
		return fmt.Errorf("klock: %s: klockd is not installed as a %s service (no %s); run klockd install first", action, kind, setup.unitPath)
	}
	switch action {
	case "install":
		if installed {
			return fmt.Errorf("klock: install: klockd is already installed as a %s service (%s); run klockd uninstall first", kind, setup.unitPath)
		}
		if !setup.user {
			if err := ensureAccount(stdout); err != nil {
				return err
			}
		}
		if err := svc.Install(); err != nil {
			return fmt.Errorf("klock: install: %w", err)
		}
		fmt.Fprintf(stdout, "installed klockd as a %s service: %s\nit runs: %s\nstart it with: klockd start   (logs: %s)\n",
			kind, setup.unitPath, execStartLine(setup.exe, setup.args), journal)
	case "uninstall":
		_ = svc.Stop() // may not be running; the unit goes either way
		if err := svc.Uninstall(); err != nil {
			return fmt.Errorf("klock: uninstall: %w", err)
		}
		fmt.Fprintf(stdout, "uninstalled the klockd %s service (%s removed); the state directory is kept\n", kind, setup.unitPath)
	case "start", "stop", "restart":
		if err := service.Control(svc, action); err != nil {
			return fmt.Errorf("klock: %s: %v; see %s", action, err, journal)
		}
		fmt.Fprintf(stdout, "klockd %s service: %s done\n", kind, action)
	case "status":
		return reportStatus(svc, setup, kind, installed, stdout)
	}
	return nil
}

// reportStatus prints whether klockd is installed and running, and the
// socket the service serves (read back from the installed unit).
func reportStatus(svc service.Service, setup serviceSetup, kind string, installed bool, stdout io.Writer) error {
	if !installed {
		fmt.Fprintf(stdout, "klockd %s service: not installed (no %s)\n", kind, setup.unitPath)
		reportSocket(stdout, socketFromUnitArgs(setup.args))
		return nil
	}
	state := "installed, stopped"
	st, err := svc.Status()
	switch {
	case err != nil:
		state = "installed, " + err.Error()
	case st == service.StatusRunning:
		state = "installed, running"
	}
	fmt.Fprintf(stdout, "klockd %s service: %s\nunit: %s\n", kind, state, setup.unitPath)
	socket := socketFromUnitArgs(setup.args)
	if data, err := os.ReadFile(setup.unitPath); err == nil {
		if args, ok := unitExecArgs(string(data)); ok {
			socket = socketFromUnitArgs(args)
		}
	}
	reportSocket(stdout, socket)
	return nil
}

// reportSocket prints the socket path and whether something accepts
// connections on it.
func reportSocket(w io.Writer, socket string) {
	state := "accepting connections"
	c, err := net.DialTimeout("unix", socket, time.Second)
	if err != nil {
		state = "not answering"
	} else {
		c.Close()
	}
	fmt.Fprintf(w, "socket: %s (%s)\n", socket, state)
}

// checkServiceManager returns an error wrapping errNoServiceManager, one
// line naming what is missing, when klockd cannot be a service here.
var checkServiceManager = func(action string, userService bool) error {
	const hint = `run "klockd run" under your own supervisor, or see systemd/README.md`
	if runtime.GOOS != "linux" {
		return fmt.Errorf("klock: %s: %w: klockd services are systemd units and this is %s; %s", action, errNoServiceManager, runtime.GOOS, hint)
	}
	if sys := service.ChosenSystem(); sys == nil || sys.String() != "linux-systemd" {
		pid1, _ := os.ReadFile("/proc/1/comm")
		return fmt.Errorf("klock: %s: %w: systemd is not running on this machine (PID 1 is %q); %s",
			action, errNoServiceManager, strings.TrimSpace(string(pid1)), hint)
	}
	if userService {
		rt := os.Getenv("XDG_RUNTIME_DIR")
		if rt == "" {
			return fmt.Errorf("klock: %s: %w: no systemd user manager for this login (XDG_RUNTIME_DIR is unset); run as root for a system service, or %s", action, errNoServiceManager, hint)
		}
		if _, err := os.Stat(filepath.Join(rt, "systemd")); err != nil {
			return fmt.Errorf("klock: %s: %w: no systemd user manager is running for this user (no %s/systemd); run as root for a system service, or %s", action, errNoServiceManager, rt, hint)
		}
	}
	return nil
}

// ensureAccount creates the klock system account the system unit runs as,
// with systemd-sysusers (the entry of systemd/klock.sysusers.conf), when it
// does not exist yet.
func ensureAccount(stdout io.Writer) error {
	if _, err := user.Lookup("klock"); err == nil {
		return nil
	}
	out, err := exec.Command("systemd-sysusers", "--inline", sysusersEntry).CombinedOutput()
	if err != nil {
		return fmt.Errorf("klock: install: creating the klock account with systemd-sysusers: %v: %s", err, strings.TrimSpace(string(out)))
	}
	fmt.Fprintln(stdout, "created the klock system account and group (add agents' users to the klock group to let them reach the socket)")
	return nil
}

// sysusersEntry is the line of systemd/klock.sysusers.conf.
const sysusersEntry = `u klock - "klock lease daemon" /var/lib/klock`

// newServiceSetup checks the flags and renders the unit for exe and args.
func newServiceSetup(exe string, flags []string, userService bool) (serviceSetup, error) {
	args, err := serviceArgs(flags, userService)
	if err != nil {
		return serviceSetup{}, err
	}
	unit, err := serviceUnit(exe, args, userService)
	if err != nil {
		return serviceSetup{}, err
	}
	path := "/etc/systemd/system/" + serviceName + ".service"
	if userService {
		// kardianos writes user units under the home directory, ignoring
		// XDG_CONFIG_HOME; this must be the same path.
		home, err := os.UserHomeDir()
		if err != nil {
			return serviceSetup{}, fmt.Errorf("klock: a user service needs a home directory: %w", err)
		}
		path = filepath.Join(home, ".config", "systemd", "user", serviceName+".service")
	}
	return serviceSetup{user: userService, exe: exe, args: args, unit: unit, unitPath: path}, nil
}

// Paths the service runs with unless told otherwise; the user ones are
// systemd specifiers (%t = $XDG_RUNTIME_DIR, %S = the state directory root).
const (
	systemSocket   = "/run/klock/klockd.sock"
	systemStateDir = "/var/lib/klock"
	userSocket     = "%t/klock/klockd.sock"
	userStateDir   = "%S/klock"
)

// serviceArgs checks flags with the flag set of `klockd run` and returns
// the service's arguments: "run", --socket and --state-dir (given or the
// service defaults), then every other flag given, sorted by name. Values are
// as the daemon will receive them; serviceUnit escapes them for the unit.
func serviceArgs(flags []string, userService bool) ([]string, error) {
	var o options
	fs := newFlags(io.Discard, &o)
	if err := fs.Parse(flags); err != nil {
		return nil, fmt.Errorf("klock: install: %v; try klockd --help", err)
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("klock: install: unexpected argument %q; give only daemon flags", fs.Arg(0))
	}
	given := map[string]string{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = f.Value.String() })

	socket, stateDir := systemSocket, systemStateDir
	if userService {
		socket, stateDir = userSocket, userStateDir
	}
	for _, f := range []struct {
		name string
		dflt *string
	}{{"socket", &socket}, {"state-dir", &stateDir}} {
		v, ok := given[f.name]
		if !ok {
			continue
		}
		// A service runs in /, so a relative path would not mean what it
		// meant where install was typed.
		if v != "" && !filepath.IsAbs(v) {
			return nil, fmt.Errorf("klock: install: --%s %q must be an absolute path for a service", f.name, v)
		}
		if f.name == "socket" && v == "" {
			return nil, errors.New("klock: install: --socket must not be empty")
		}
		*f.dflt = v
		delete(given, f.name)
	}
	args := []string{"run", "--socket", socket, "--state-dir", stateDir}
	names := make([]string, 0, len(given))
	for name := range given {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		args = append(args, "--"+name, given[name])
	}
	return args, nil
}

// serviceUnit renders the unit install writes for a klockd at exe run with
// args (from serviceArgs): systemd/klockd.service, or
// systemd/user/klockd.service for a user service, with ExecStart replaced.
func serviceUnit(exe string, args []string, userService bool) (string, error) {
	if !filepath.IsAbs(exe) {
		return "", fmt.Errorf("klock: the klockd executable %q is not an absolute path", exe)
	}
	for _, w := range append([]string{exe}, args...) {
		// kardianos expands "{{" in a SystemdScript as a template action.
		if strings.Contains(w, "{{") || strings.ContainsRune(w, 0) {
			return "", fmt.Errorf("klock: install: argument %q cannot be written to a unit file", w)
		}
	}
	unit := units.Unit(userService)
	start := strings.Index(unit, "\nExecStart=")
	if start < 0 {
		return "", errors.New("klock: the embedded klockd unit has no ExecStart= line")
	}
	start += len("\nExecStart=")
	end := start + strings.IndexByte(unit[start:], '\n')
	return unit[:start] + execStartLine(exe, args) + unit[end:], nil
}

// execStartLine is the value of ExecStart= for exe and args: each word
// escaped so systemd passes it to klockd unchanged.
func execStartLine(exe string, args []string) string {
	words := make([]string, 0, 1+len(args))
	for _, w := range append([]string{exe}, args...) {
		words = append(words, unitWord(w))
	}
	return strings.Join(words, " ")
}

// unitWord escapes one ExecStart word: % and $ are doubled (specifiers and
// environment expansion), and a word with blanks, quotes, backslashes or
// semicolons is double-quoted with C escapes. The user service defaults
// keep their specifiers.
func unitWord(w string) string {
	if w == userSocket || w == userStateDir {
		return w
	}
	w = strings.ReplaceAll(w, "%", "%%")
	w = strings.ReplaceAll(w, "$", "$$")
	if w != "" && !strings.ContainsAny(w, " \t\n\r\"'\\;") {
		return w
	}
	r := strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`, "\t", `\t`, "\r", `\r`)
	return `"` + r.Replace(w) + `"`
}

// unitExecArgs returns the arguments after the executable in unit's
// ExecStart=, undoing unitWord and expanding %t, %S and %h for the calling
// user; ok is false when there is no ExecStart= line.
func unitExecArgs(unit string) (args []string, ok bool) {
	for _, line := range strings.Split(unit, "\n") {
		if v, found := strings.CutPrefix(line, "ExecStart="); found {
			words := splitUnitWords(v)
			if len(words) == 0 {
				return nil, false
			}
			return words[1:], true
		}
	}
	return nil, false
}

// splitUnitWords splits an ExecStart value into words, the inverse of
// execStartLine.
func splitUnitWords(s string) []string {
	var words []string
	var b strings.Builder
	inWord, quoted := false, false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case quoted && c == '\\' && i+1 < len(s):
			i++
			switch s[i] {
			case 'n':
				b.WriteByte('\n')
			case 't':
				b.WriteByte('\t')
			case 'r':
				b.WriteByte('\r')
			default:
				b.WriteByte(s[i])
			}
		case quoted && c == '"':
			quoted = false
		case !quoted && c == '"':
			quoted, inWord = true, true
		case !quoted && (c == ' ' || c == '\t'):
			if inWord {
				words = append(words, expandUnitWord(b.String()))
				b.Reset()
				inWord = false
			}
		default:
			b.WriteByte(c)
			inWord = true
		}
	}
	if inWord {
		words = append(words, expandUnitWord(b.String()))
	}
	return words
}

// expandUnitWord undoes the % and $ doubling of unitWord and expands the
// specifiers the units use, as systemd would for the calling user.
func expandUnitWord(w string) string {
	var b strings.Builder
	for i := 0; i < len(w); i++ {
		c := w[i]
		if (c != '%' && c != '$') || i+1 == len(w) {
			b.WriteByte(c)
			continue
		}
		i++
		switch next := w[i]; {
		case next == c: // %% or $$
			b.WriteByte(c)
		case c == '%' && next == 't':
			b.WriteString(userRuntimeDir())
		case c == '%' && next == 'h':
			home, _ := os.UserHomeDir()
			b.WriteString(home)
		case c == '%' && next == 'S':
			b.WriteString(userStateRoot())
		default:
			b.WriteByte(c)
			b.WriteByte(next)
		}
	}
	return b.String()
}

// userRuntimeDir is what %t means in a user unit: $XDG_RUNTIME_DIR, which
// a user manager sets to /run/user/$UID.
func userRuntimeDir() string {
	if dir := os.Getenv("XDG_RUNTIME_DIR"); dir != "" {
		return dir
	}
	return "/run/user/" + strconv.Itoa(os.Getuid())
}

// userStateRoot is what %S means in a user unit: $XDG_STATE_HOME, else
// ~/.local/state.
func userStateRoot() string {
	if dir := os.Getenv("XDG_STATE_HOME"); dir != "" {
		return dir
	}
	home, _ := os.UserHomeDir()
	return filepath.Join(home, ".local", "state")
}

// socketFromUnitArgs returns the --socket value in service arguments, with
// the user default's %t expanded.
func socketFromUnitArgs(args []string) string {
	socket := ""
	for i, a := range args {
		name, value, hasValue := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if !strings.HasPrefix(a, "-") || name != "socket" {
			continue
		}
		if !hasValue && i+1 < len(args) {
			value = args[i+1]
		}
		socket = value
	}
	if socket == userSocket {
		socket = expandUnitWord(socket)
	}
	return socket
}

// serviceProgram is the kardianos/service Interface. Installing and
// controlling the unit never calls it. When a main has kardianos run the
// daemon (service.Run), Start launches run in a goroutine and returns at
// once, and Stop cancels run's context and waits for it up to
// serviceStopTimeout; under systemd klockd needs none of this, since
// `klockd run` handles SIGTERM itself.
type serviceProgram struct {
	run    func(ctx context.Context) error // the daemon; nil for control actions
	cancel context.CancelFunc
	done   chan error
}

// Start starts the daemon and returns at once.
func (p *serviceProgram) Start(service.Service) error {
	if p.run == nil {
		return errors.New("klock: klockd is started by its service manager as `klockd run`")
	}
	ctx, cancel := context.WithCancel(context.Background())
	p.cancel, p.done = cancel, make(chan error, 1)
	go func() { p.done <- p.run(ctx) }()
	return nil
}

// Stop asks the daemon to shut down and waits for it, at most
// serviceStopTimeout. It returns the daemon's error.
func (p *serviceProgram) Stop(service.Service) error {
	if p.cancel == nil {
		return nil
	}
	p.cancel()
	select {
	case err := <-p.done:
		return err
	case <-time.After(serviceStopTimeout):
		return fmt.Errorf("klock: klockd did not stop within %s", serviceStopTimeout)
	}
}

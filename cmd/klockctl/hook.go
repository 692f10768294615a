package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"time"

	"github.com/klockd/klock/clientlib"
	"github.com/klockd/klock/protocol"
)

// The hook command: Claude Code's hooks call it when a session starts,
// before every file edit and when a session ends. The formats below follow
// Claude Code's hooks reference, https://code.claude.com/docs/en/hooks
// (sections "Hook input and output", "SessionStart", "Persist environment
// variables", "PreToolUse", "PreToolUse decision control", "Add context for
// Claude", "SessionEnd", "Exit code output"):
//
//   - The hook reads one JSON object on stdin: session_id, cwd,
//     hook_event_name, and for PreToolUse tool_name and tool_input (Write,
//     Edit and MultiEdit carry tool_input.file_path, absolute; NotebookEdit
//     carries tool_input.notebook_path); for SessionStart, source; for
//     SessionEnd, reason.
//   - SessionStart hooks get $CLAUDE_ENV_FILE, a file to which they append
//     "export NAME=value" lines that Claude Code applies to the session's
//     later Bash commands.
//   - Exit 0 with no output is "no decision": the edit goes through
//     Claude Code's normal permission flow. The hook never answers "allow",
//     which would skip the user's permission prompt.
//   - Exit 0 with {"hookSpecificOutput": {"hookEventName": "PreToolUse",
//     "permissionDecision": "deny", "permissionDecisionReason": ...}} on
//     stdout blocks the edit and shows Claude the reason; with only
//     "additionalContext" it makes no decision and adds that text to
//     Claude's context next to the tool's result.
//   - {"systemMessage": ...} is a warning shown to the user (not to Claude).
//   - Any other non-zero exit than 2 is a non-blocking error: the action
//     proceeds and the first line of stderr is shown.
//   - SessionEnd has no decision control, and its hooks share a 1.5 s
//     budget unless the hook's "timeout" raises it.

// editTools are the Claude Code tools that write a file, and the
// tool_input field that names it.
var editTools = map[string]string{
	"Edit":         "file_path",
	"Write":        "file_path",
	"MultiEdit":    "file_path",
	"NotebookEdit": "notebook_path",
}

// hookInput is the part of a hook's stdin the hook reads.
type hookInput struct {
	SessionID     string `json:"session_id"`
	Cwd           string `json:"cwd"`
	HookEventName string `json:"hook_event_name"`
	ToolName      string `json:"tool_name"`
	ToolInput     struct {
		FilePath     string `json:"file_path"`
		NotebookPath string `json:"notebook_path"`
	} `json:"tool_input"`
	Source string `json:"source"` // SessionStart: startup, resume, clear, compact or fork
	Reason string `json:"reason"` // SessionEnd
}

// hookOutput is what the hook prints on stdout: a PreToolUse decision, or
// a warning for the user.
type hookOutput struct {
	HookSpecificOutput *hookDecision `json:"hookSpecificOutput,omitempty"`
	SystemMessage      string        `json:"systemMessage,omitempty"`
}

// hookDecision is PreToolUse's hookSpecificOutput: a decision, or no
// decision and context for Claude.
type hookDecision struct {
	HookEventName            string `json:"hookEventName"`
	PermissionDecision       string `json:"permissionDecision,omitempty"`
	PermissionDecisionReason string `json:"permissionDecisionReason,omitempty"`
	AdditionalContext        string `json:"additionalContext,omitempty"`
}

// maxHookInput bounds what the hook reads: a Write's tool_input carries the
// whole file's content.
const maxHookInput = 64 << 20

// hookDialTimeout bounds the connection attempt: the hook runs before
// every edit, and a daemon that does not answer at once is treated as down.
const hookDialTimeout = 2 * time.Second

// hookUnavailableWait bounds how long the hook retries a change klockd
// cannot make durable (UNAVAILABLE) before it allows the edit with its
// warning (or denies it, --fail-closed): the edit waits for the hook, and
// a full disk does not heal in the seconds an edit can wait.
const hookUnavailableWait = time.Second

func hookCommand() *command {
	var failClosed bool
	var ttl *time.Duration
	return &command{
		name:     "hook",
		synopsis: "[flags] claude-code",
		summary:  "Claude Code hook: lease a file before each edit, release at session end",
		help: `A command for Claude Code's hooks (settings.json "hooks"; "klockctl integrate
claude-code" writes the entries). It reads the hook's JSON input on stdin.

A session acts as the agent claude-code:<session_id>, its own, in session
<session_id>; or as $KLOCK_AGENT, a shared agent, when that is set to
another name.

SessionStart: appends "export KLOCK_AGENT=claude-code:<session_id>" to
$CLAUDE_ENV_FILE, which Claude Code applies to the session's Bash
commands, so that "klockctl guard" run by a git commit in the session
knows the files its own edits leased. Nothing is written for a shared
agent: the Bash commands inherit $KLOCK_AGENT already.

PreToolUse for Edit, Write, MultiEdit and NotebookEdit: takes a MUTATES
lease on the file (tool_input.file_path, or notebook_path) for the
session's agent, with --ttl. A repeat edit of the file in the same
session reuses that lease and renews it. When the lease is granted the
hook makes no decision and the edit goes through Claude Code's usual
permission checks. When another agent holds the file, the hook denies the
edit, and Claude is told who holds it, since and until when, and what to
do. An agent klockd does not know is registered first, without a
priority, and Claude is told so. Other tools are ignored.

SessionEnd: releases every lease the session took; the session's own
agent is ended and unregistered (a shared agent is left registered, and
its session only emptied, so that a resumed session can take files again).

When klockd cannot be reached (or refuses the request), the edit is
allowed with a one-line warning to the user; --fail-closed denies it
instead. Exits 0 except on unreadable input (exit 1: Claude Code then
shows the error and lets the edit proceed).`,
		flags: func(fs *flag.FlagSet) {
			fs.BoolVar(&failClosed, "fail-closed", false, "deny edits when klockd cannot be reached or refuses the request")
			ttl = durationFlag(fs, "ttl", 30*time.Minute,
				"lease lifetime; each edit of the file renews it, and SessionEnd releases it")
		},
		run: func(a *app, _ *flag.FlagSet, args []string) error {
			if len(args) != 1 || args[0] != "claude-code" {
				return usagef("hook", "want exactly one agent name: claude-code")
			}
			if *ttl < time.Second {
				return usagef("hook", "--ttl must be at least 1s")
			}
			return a.claudeCodeHook(failClosed, *ttl)
		},
	}
}

// claudeCodeHook runs one Claude Code hook invocation. A panic becomes an
// ordinary error (exit 1, which Claude Code reports without blocking): Go's
// own exit code for a panic, 2, would block the edit.
func (a *app) claudeCodeHook(failClosed bool, ttl time.Duration) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("internal error (a bug in klockctl): %v\n%s", p, debug.Stack())
		}
	}()
	data, err := io.ReadAll(io.LimitReader(a.stdin, maxHookInput+1))
	if err != nil {
		return fmt.Errorf("reading the hook input: %v", err)
	}
	if len(data) > maxHookInput {
		return fmt.Errorf("the hook input is over %d MiB", maxHookInput>>20)
	}
	var in hookInput
	if err := json.Unmarshal(data, &in); err != nil {
		return fmt.Errorf("the hook input is not a JSON object: %v", err)
	}
	switch in.HookEventName {
	case "PreToolUse":
		field, ok := editTools[in.ToolName]
		if !ok {
			return nil
		}
		return a.preEdit(&in, field, failClosed, ttl)
	case "SessionStart":
		return a.sessionStart(&in)
	case "SessionEnd":
		return a.sessionEnd(&in)
	}
	return nil
}

// hookAgent returns the agent and session a Claude Code session acts as,
// and whether the agent is the session's own (then SessionEnd unregisters
// it). $KLOCK_AGENT names a shared agent, unless it is the session's own
// name, which SessionStart exported for the session's commands.
func (a *app) hookAgent(in *hookInput) (agent, session string, own bool) {
	agent = "claude-code:" + in.SessionID
	if env := a.getenv("KLOCK_AGENT"); env != "" && env != agent {
		return env, in.SessionID, false
	}
	return agent, in.SessionID, true
}

// sessionStart exports the session's own agent to its Bash commands by
// appending "export KLOCK_AGENT=..." to $CLAUDE_ENV_FILE. It needs no
// klockd. Without the file (a Claude Code that does not offer it) the user
// is told that a commit in the session does not know its agent.
func (a *app) sessionStart(in *hookInput) error {
	if in.SessionID == "" {
		return errors.New("the hook input has no session_id")
	}
	agent, _, own := a.hookAgent(in)
	if msg := protocol.CheckText("agent_id", agent, protocol.MaxIDLen); msg != "" {
		return fmt.Errorf("the session's agent cannot be %q: %s", agent, strings.TrimPrefix(msg, "klock: "))
	}
	if !own {
		return nil // a shared $KLOCK_AGENT: the Bash commands inherit it
	}
	envFile := a.getenv("CLAUDE_ENV_FILE")
	if envFile == "" {
		return writeJSON(a.stdout, hookOutput{SystemMessage: fmt.Sprintf("klock: $CLAUDE_ENV_FILE is not set, "+
			"so this session's Bash commands do not know its klock agent, and klockctl guard (a git commit) "+
			"treats the files this session's edits leased as another agent's; export KLOCK_AGENT=%s there", agent)})
	}
	f, err := os.OpenFile(envFile, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("exporting KLOCK_AGENT to the session: %v", err)
	}
	_, err = fmt.Fprintf(f, "export KLOCK_AGENT=%s\n", shellQuote(agent))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("exporting KLOCK_AGENT to the session: %v", err)
	}
	return nil
}

// preEdit decides one PreToolUse of an editing tool.
func (a *app) preEdit(in *hookInput, field string, failClosed bool, ttl time.Duration) error {
	if in.SessionID == "" {
		return errors.New("the hook input has no session_id")
	}
	path := in.ToolInput.FilePath
	if field == "notebook_path" {
		path = in.ToolInput.NotebookPath
	}
	if path == "" {
		return fmt.Errorf("the %s call has no tool_input.%s", in.ToolName, field)
	}
	cwd := in.Cwd
	if cwd == "" {
		cwd = a.cwd()
	}
	if !filepath.IsAbs(path) {
		path = filepath.Join(cwd, path) // so that a name like "a:b" stays a file
	}
	r, err := parseResource(path, cwd)
	if err != nil {
		return err
	}
	agent, session, _ := a.hookAgent(in)

	ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
	defer cancel()
	c, err := a.hookDial(ctx)
	if err != nil {
		return a.hookUnavailable(failClosed, path, unreachableError(err))
	}
	defer c.Close()

	// Not bound: the hook process exits at once, and the lease must last
	// while the agent edits.
	req := clientlib.AcquireRequest{
		AgentID: agent, SessionID: session, TTL: ttl, Idem: hookIdem(session, r.Path), Bind: clientlib.BindNone,
		Intents: []clientlib.Intent{{ResourceType: r.Type, ResourcePath: r.Path, Predicate: "MUTATES", ClientPath: r.ClientPath}},
	}
	var res *clientlib.AcquireResult
	notice, err := acquireRegistering(ctx, c, agent, func() (err error) {
		res, err = c.AcquireOnce(ctx, req)
		return err
	})
	if notice != "" {
		notice = "klock: " + notice + "."
	}
	if err != nil {
		return a.hookUnavailable(failClosed, path, err)
	}
	if res.Success {
		// A repeat edit gets the session's lease back (same idem key) with
		// its old expiry: renew it so that it lasts ttl from this edit.
		if time.Until(res.ExpiresAt) < ttl-ttl/10 {
			if _, err := c.Heartbeat(ctx, res.LeaseID, ttl); err != nil {
				return a.hookUnavailable(failClosed, path, err)
			}
		}
		if notice != "" {
			return writeJSON(a.stdout, hookOutput{HookSpecificOutput: &hookDecision{
				HookEventName: "PreToolUse", AdditionalContext: notice}})
		}
		return nil
	}
	holders, _ := holdersOf(ctx, c, r.Key())
	reason := editDenial(path, res, holders, agent, time.Now())
	if notice != "" {
		reason += " " + notice
	}
	return a.hookDeny(reason)
}

// hookDial connects without reconnecting: a hook that cannot reach klockd
// answers rather than retrying. With no socket named, Dial starts klockd on
// first use (protocol/README.md "Autostart"), so that the session's edits
// are protected from then on; hookDialTimeout bounds that too, and a
// daemon that is not up by then counts as unreachable.
func (a *app) hookDial(ctx context.Context) (*clientlib.Client, error) {
	ctx, cancel := context.WithTimeout(ctx, hookDialTimeout)
	defer cancel()
	return clientlib.Dial(ctx, clientlib.Options{
		Socket: a.socketPath(), ClientName: "klockctl-hook/" + version(),
		NoReconnect: true, DialTimeout: hookDialTimeout, UnavailableWait: hookUnavailableWait,
		NoAutostart: clientlib.AutostartDisabled(a.getenv), Stderr: a.stderr,
	})
}

// hookIdem is the idempotency key of a session's lease on a file: the same
// for every edit of that file in that session, so that a repeat edit
// returns the lease the session already holds rather than stacking
// another. Keys are per agent across sessions, so the session is part of
// it: with a shared $KLOCK_AGENT, another session must not get this lease.
func hookIdem(session, path string) string {
	sum := sha256.Sum256([]byte(session + "\x00" + path))
	return "claude-code-" + hex.EncodeToString(sum[:16])
}

// editDenial is the reason Claude is given when it may not edit path.
func editDenial(path string, res *clientlib.AcquireResult, holders []protocol.LeaseInfo, agent string, now time.Time) string {
	who := describeHolders(othersOnly(holders, agent), res.HeldBy, now)
	switch protocol.Reason(res.Reason) {
	case protocol.ReasonDie:
		return fmt.Sprintf("klock: %s is reserved by another agent: %s. Do not edit it now: "+
			"work on other files and try this edit again later, after that agent is done with it, "+
			"or ask the user to coordinate with that agent.", path, who)
	case protocol.ReasonWait:
		return fmt.Sprintf("klock: %s is reserved by another agent: %s. Your session is older, "+
			"so klock will give you the file once that agent is done with it: do other work first "+
			"and try this edit again later.", path, who)
	case protocol.ReasonConflict:
		return fmt.Sprintf("klock: %s is reserved by another session of the same agent (%s): %s. "+
			"Do not edit it from this session; finish the work in that session, or ask the user.",
			path, res.HeldBy, who)
	case protocol.ReasonResourceLocked:
		return fmt.Sprintf("klock: %s is frozen by an operator (%s): nobody may take it until it is thawed. "+
			"Do not edit it; ask the user.", path, oneLine(res.Message))
	case protocol.ReasonSessionExpired:
		return fmt.Sprintf("klock: this session was ended in klock, so it may no longer take files (%s). "+
			"Ask the user to start a new session.", oneLine(res.Message))
	}
	return fmt.Sprintf("klock: %s may not be edited now: %s (%s).", path, res.Reason, oneLine(res.Message))
}

// hookDeny prints a PreToolUse deny decision with reason.
func (a *app) hookDeny(reason string) error {
	return writeJSON(a.stdout, hookOutput{HookSpecificOutput: &hookDecision{
		HookEventName: "PreToolUse", PermissionDecision: "deny", PermissionDecisionReason: reason,
	}})
}

// hookUnavailable answers an edit klockd could not decide: allowed with a
// one-line warning to the user, or denied with --fail-closed.
func (a *app) hookUnavailable(failClosed bool, path string, cause error) error {
	why := oneLine(errText(cause))
	if failClosed {
		return a.hookDeny(fmt.Sprintf("klock: cannot check who holds %s, and this hook fails closed: %s. "+
			"Do not edit files until klockd runs again; tell the user.", path, why))
	}
	return writeJSON(a.stdout, hookOutput{SystemMessage: fmt.Sprintf(
		"klock: edit of %s allowed without a lease: %s", path, why)})
}

// sessionEnd ends the Claude Code session's klock session, which releases
// its leases, and unregisters its own agent. A daemon that cannot be
// reached is reported on stderr (Claude Code logs it); the leases then end
// at their ttl.
func (a *app) sessionEnd(in *hookInput) error {
	if in.SessionID == "" {
		return errors.New("the hook input has no session_id")
	}
	agent, session, own := a.hookAgent(in)
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	c, err := a.hookDial(ctx)
	if err != nil {
		fmt.Fprintf(a.stderr, "klockctl: session %s not ended in klock; its leases expire at their ttl: %s\n",
			oneLine(session), oneLine(errText(unreachableError(err))))
		return nil
	}
	defer c.Close()
	if err := endHookSession(ctx, c, agent, session, own); err != nil {
		fmt.Fprintf(a.stderr, "klockctl: ending session %s: %s\n", oneLine(session), oneLine(errText(err)))
	}
	return nil
}

// endHookSession releases everything a Claude Code session holds. The
// session's own agent is ended and unregistered, which also forgets the
// ended session. A shared agent ($KLOCK_AGENT) is not unregistered, so its
// session is not ended either, only emptied: Claude Code may resume a
// session with the same session_id, and klockd refuses acquires in a
// session it remembers as ended (SESSION_EXPIRED).
func endHookSession(ctx context.Context, c *clientlib.Client, agent, session string, own bool) error {
	if own {
		_, err := c.EndSession(ctx, agent, session)
		if errors.Is(err, clientlib.ErrUnknownAgent) {
			return nil
		}
		if err != nil {
			return err
		}
		_, err = c.UnregisterAgent(ctx, agent)
		if errors.Is(err, clientlib.ErrUnknownAgent) {
			return nil
		}
		return err
	}
	ls, _, err := c.ListLeases(ctx, clientlib.LeaseFilter{AgentID: agent, Limit: 10000})
	if err != nil {
		return err
	}
	for _, l := range ls {
		if l.SessionID != session {
			continue
		}
		if _, err := c.ReleaseLease(ctx, l.LeaseID); err != nil {
			return err
		}
	}
	return nil
}

package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"strings"

	"github.com/klockd/klock/cmd/internal/installable"
)

// The integrate command writes the configuration that makes an agent use
// klock. The shapes it writes follow Claude Code's documentation: .mcp.json
// is {"mcpServers": {NAME: {"type": "stdio", "command", "args"}}}
// (https://code.claude.com/docs/en/mcp, "Project scope"), and
// .claude/settings.json's "hooks" maps an event to matcher groups, each
// {"matcher", "hooks": [{"type": "command", "command", "timeout"}]}
// (https://code.claude.com/docs/en/hooks, "Configuration"); a matcher made
// of names and "|" matches those tool names exactly.

func integrateCommand() *command {
	var dir string
	var dryRun bool
	return &command{
		name:     "integrate",
		synopsis: "[flags] claude-code | git",
		summary:  "wire klock into Claude Code (MCP + hooks) or into git (pre-commit guard)",
		help: `"integrate claude-code" merges into DIR/.mcp.json an mcpServers.klock entry
running "klockctl mcp", and into DIR/.claude/settings.json a SessionStart
hook, a PreToolUse hook for Edit|Write|MultiEdit|NotebookEdit and a
SessionEnd hook, all running "klockctl hook claude-code". Everything else in
those files is kept; running it again changes nothing; --dry-run prints
what it would write instead.

"integrate git" installs DIR's .git/hooks/pre-commit running "klockctl
guard". An existing pre-commit hook is kept and run first: it is renamed
pre-commit.klock-chained and called by the new hook.

Both write the absolute path of the klockctl that runs them, and warn when
that path will not last (a "go run" build, Go's build cache, or a
temporary directory).`,
		flags: func(fs *flag.FlagSet) {
			fs.StringVar(&dir, "dir", "", "the project directory `DIR` (default: the current directory)")
			fs.BoolVar(&dryRun, "dry-run", false, "print what would change, change nothing")
		},
		run: func(a *app, _ *flag.FlagSet, args []string) error {
			if len(args) != 1 {
				return usagef("integrate", "want one target: claude-code or git")
			}
			if dir == "" {
				dir = a.cwd()
			}
			exe, err := a.selfPath()
			if err != nil {
				return err
			}
			switch args[0] {
			case "claude-code":
				return a.integrateClaudeCode(dir, exe, dryRun)
			case "git":
				return a.integrateGit(dir, exe, dryRun)
			}
			return usagef("integrate", "unknown target %q: want claude-code or git", args[0])
		},
	}
}

// selfPath returns the absolute path of this klockctl, warning on stderr
// when it will not last.
func (a *app) selfPath() (string, error) {
	exe, err := os.Executable()
	if err != nil {
		return "", fmt.Errorf("cannot find klockctl's own path: %v", err)
	}
	if resolved, err := filepath.EvalSymlinks(exe); err == nil {
		exe = resolved
	}
	if err := installable.Check(exe); err != nil {
		fmt.Fprintf(a.stderr, "klockctl: warning: %v, and what integrate writes runs it; %s\n",
			err, installable.Advice("klockctl"))
	}
	return exe, nil
}

// shellQuote quotes s for sh when it needs it.
func shellQuote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789/._-+:@%=,") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// editMatcher is the PreToolUse matcher: the tools that write files.
const editMatcher = "Edit|Write|MultiEdit|NotebookEdit"

func (a *app) integrateClaudeCode(dir, exe string, dryRun bool) error {
	hook := shellQuote(exe) + " hook claude-code"
	mcpEntry := map[string]any{"type": "stdio", "command": exe, "args": []any{"mcp"}}
	mcpPath := filepath.Join(dir, ".mcp.json")
	if err := a.mergeJSON(mcpPath, dryRun, func(doc map[string]any) error {
		servers, err := objectAt(doc, "mcpServers", mcpPath)
		if err != nil {
			return err
		}
		servers["klock"] = mcpEntry
		return nil
	}); err != nil {
		return err
	}
	settingsPath := filepath.Join(dir, ".claude", "settings.json")
	return a.mergeJSON(settingsPath, dryRun, func(doc map[string]any) error {
		hooks, err := objectAt(doc, "hooks", settingsPath)
		if err != nil {
			return err
		}
		// SessionStart (every source: a new, resumed, cleared, compacted or
		// forked session) exports the session's agent to its Bash commands,
		// for the guard; it writes a file and needs no klockd.
		if err := setKlockHook(hooks, "SessionStart", "", hook, 5, settingsPath); err != nil {
			return err
		}
		// SessionEnd hooks share a 1.5 s budget unless a hook's timeout
		// raises it; ending a session is one round trip, but a cold klockd
		// may need longer.
		if err := setKlockHook(hooks, "PreToolUse", editMatcher, hook, 30, settingsPath); err != nil {
			return err
		}
		return setKlockHook(hooks, "SessionEnd", "", hook, 5, settingsPath)
	})
}

// objectAt returns doc[key] as an object, creating it when absent.
func objectAt(doc map[string]any, key, file string) (map[string]any, error) {
	v, ok := doc[key]
	if !ok || v == nil {
		m := map[string]any{}
		doc[key] = m
		return m, nil
	}
	m, ok := v.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("%s: %q is not a JSON object; fix it by hand, then run integrate again", file, key)
	}
	return m, nil
}

// isKlockHook reports whether a hook handler is one integrate wrote: a
// command running "klockctl ... hook claude-code".
func isKlockHook(h any) bool {
	m, ok := h.(map[string]any)
	if !ok {
		return false
	}
	cmd, _ := m["command"].(string)
	return strings.Contains(cmd, "klockctl") && strings.HasSuffix(cmd, " hook claude-code")
}

// setKlockHook makes hooks[event] hold exactly one klock handler running
// command, in a group with matcher: earlier klock handlers are removed
// (with their group when it empties), other groups and handlers are kept.
func setKlockHook(hooks map[string]any, event, matcher, command string, timeout int, file string) error {
	var groups []any
	if v, ok := hooks[event]; ok && v != nil {
		var isList bool
		if groups, isList = v.([]any); !isList {
			return fmt.Errorf("%s: hooks.%s is not a JSON array; fix it by hand, then run integrate again", file, event)
		}
	}
	var kept []any
	for _, g := range groups {
		gm, ok := g.(map[string]any)
		if !ok {
			kept = append(kept, g)
			continue
		}
		handlers, _ := gm["hooks"].([]any)
		var rest []any
		for _, h := range handlers {
			if !isKlockHook(h) {
				rest = append(rest, h)
			}
		}
		if len(rest) == len(handlers) {
			kept = append(kept, g)
			continue
		}
		if len(rest) > 0 {
			gm["hooks"] = rest
			kept = append(kept, gm)
		}
	}
	group := map[string]any{"hooks": []any{map[string]any{"type": "command", "command": command, "timeout": timeout}}}
	if matcher != "" {
		group["matcher"] = matcher
	}
	hooks[event] = append(kept, group)
	return nil
}

// mergeJSON reads the JSON object in file (none yet is an empty object),
// lets change edit it, and writes it back when it changed; with dryRun it
// prints the new content instead.
func (a *app) mergeJSON(file string, dryRun bool, change func(map[string]any) error) error {
	old, err := os.ReadFile(file)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	doc := map[string]any{}
	if len(bytes.TrimSpace(old)) > 0 {
		if err := json.Unmarshal(old, &doc); err != nil {
			return fmt.Errorf("%s is not a JSON object (%v); fix it by hand, then run integrate again", file, err)
		}
	}
	var before any
	_ = json.Unmarshal(old, &before)
	if err := change(doc); err != nil {
		return err
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(doc); err != nil {
		return err
	}
	var after any
	_ = json.Unmarshal(buf.Bytes(), &after)
	if reflect.DeepEqual(before, after) {
		fmt.Fprintf(a.stdout, "%s: up to date\n", file)
		return nil
	}
	verb := "updated"
	if old == nil {
		verb = "created"
	}
	if dryRun {
		fmt.Fprintf(a.stdout, "%s: would be %s as:\n%s", file, verb, buf.String())
		return nil
	}
	if err := writeFileAtomic(file, buf.Bytes(), 0o644); err != nil {
		return err
	}
	fmt.Fprintf(a.stdout, "%s: %s\n", file, verb)
	return nil
}

// writeFileAtomic writes data to file through a temporary file and a
// rename, creating the directory if needed, and keeps an existing file's
// mode.
func writeFileAtomic(file string, data []byte, mode os.FileMode) error {
	if fi, err := os.Stat(file); err == nil {
		mode = fi.Mode().Perm()
	}
	if err := os.MkdirAll(filepath.Dir(file), 0o755); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(file), "."+filepath.Base(file)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), file)
}

// preCommitMarker is in every pre-commit hook integrate writes.
const preCommitMarker = "# klock: installed by \"klockctl integrate git\""

// chainedSuffix names the pre-commit hook that was there before.
const chainedSuffix = ".klock-chained"

func (a *app) integrateGit(dir, exe string, dryRun bool) error {
	a.getwd = func() (string, error) { return dir, nil }
	hooksDir, err := a.git("rev-parse", "--path-format=absolute", "--git-path", "hooks")
	if err != nil {
		return err
	}
	hook := filepath.Join(strings.TrimSpace(hooksDir), "pre-commit")
	script := fmt.Sprintf(`#!/bin/sh
%s
# Refuses to commit files another agent holds a klock lease on.
# Skip it once with: git commit --no-verify
chained="$(dirname "$0")/pre-commit%s"
if [ -x "$chained" ]; then
	"$chained" "$@" || exit $?
fi
exec %s guard
`, preCommitMarker, chainedSuffix, shellQuote(exe))
	old, err := os.ReadFile(hook)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	if string(old) == script {
		fmt.Fprintf(a.stdout, "%s: up to date\n", hook)
		return nil
	}
	chain := old != nil && !bytes.Contains(old, []byte(preCommitMarker))
	if dryRun {
		if chain {
			fmt.Fprintf(a.stdout, "%s: would be renamed %s and run first\n", hook, filepath.Base(hook)+chainedSuffix)
		}
		fmt.Fprintf(a.stdout, "%s: would be written as:\n%s", hook, script)
		return nil
	}
	if chain {
		if _, err := os.Stat(hook + chainedSuffix); err == nil {
			return fmt.Errorf("%s exists and so does %s: move one of them away, then run integrate again", hook, hook+chainedSuffix)
		}
		if err := os.Rename(hook, hook+chainedSuffix); err != nil {
			return err
		}
		fmt.Fprintf(a.stdout, "%s: kept as %s, run first\n", hook, hook+chainedSuffix)
	}
	if err := writeFileAtomic(hook, []byte(script), 0o755); err != nil {
		return err
	}
	if err := os.Chmod(hook, 0o755); err != nil {
		return err
	}
	fmt.Fprintf(a.stdout, "%s: installed (runs %s guard)\n", hook, exe)
	return nil
}

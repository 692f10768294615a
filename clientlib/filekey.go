package clientlib

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/klockd/klock/protocol"
)

// This file is the one rule that turns a FILE path into the path klock keys
// it by, "FILE paths" in protocol/README.md. Every client follows it (the
// Python client has a copy, tested against this one), so that one file has
// one key whichever client, directory or git worktree names it.

// EnvWorktrees is the environment variable that turns the worktree mapping
// off: KLOCK_WORKTREES=separate keys every linked worktree by its own paths.
const EnvWorktrees = "KLOCK_WORKTREES"

// FilePath is a FILE path resolved by the rule.
type FilePath struct {
	// Key is the resource_path to send: absolute, cleaned, and inside a
	// linked git worktree the same path in the repository's main worktree.
	Key string
	// Path is the path as the client named it, absolute and cleaned but not
	// mapped. It differs from Key only inside a linked worktree; acquire
	// sends it as client_path so that others see where the holder works.
	Path string
}

// ResolveOptions says where a FilePath is resolved from.
type ResolveOptions struct {
	// Dir is the working directory a relative path is joined to; "" means
	// the process's (os.Getwd).
	Dir string
	// Worktrees is "separate" to key linked worktrees by their own paths,
	// "shared" to map them to the main worktree, or "" to read
	// $KLOCK_WORKTREES (shared unless it says separate).
	Worktrees string
}

// FileKey returns the key path of the FILE path p, resolved against the
// process's working directory and $KLOCK_WORKTREES: what every klock client
// sends as resource_path for that file.
func FileKey(p string) (string, error) {
	fp, err := ResolveFile(p, ResolveOptions{})
	return fp.Key, err
}

// ResolveFile applies the rule of protocol/README.md "FILE paths" to p:
//
//  1. A relative p is joined to the working directory (o.Dir, else the
//     process's); it is an error when there is none to join it to.
//  2. The result is cleaned lexically (path.Clean: no symlink is followed
//     and the file need not exist); a p ending in '/' (a subtree) keeps
//     one trailing '/'.
//  3. Unless worktrees are separate, the nearest directory at or above the
//     path that holds a ".git" entry decides: a ".git" file whose gitdir
//     has a "commondir" file marks a linked worktree, and the path is
//     moved to the same place under the main worktree (see mainWorktree).
//     A ".git" directory (a main worktree or a plain clone), or a ".git"
//     file without a commondir (a submodule), leaves the path as it is.
//
// The rule is idempotent: resolving a Key again returns it unchanged. It
// starts no git process: it stats ".git" at each level up to the first
// one found and reads at most two small files; answers are cached per
// directory for a second (see roots).
func ResolveFile(p string, o ResolveOptions) (FilePath, error) {
	if p == "" {
		return FilePath{}, errors.New("klock: empty FILE path")
	}
	abs := p
	if !filepath.IsAbs(abs) {
		dir := o.Dir
		if dir == "" {
			wd, err := os.Getwd()
			if err != nil {
				return FilePath{}, fmt.Errorf("klock: FILE path %q is relative and the working directory is unknown: %w", p, err)
			}
			dir = wd
		}
		if !filepath.IsAbs(dir) {
			return FilePath{}, fmt.Errorf("klock: FILE path %q is relative and the working directory %q is not absolute", p, dir)
		}
		abs = dir + "/" + abs
	}
	abs = cleanKeepSlash(abs, strings.HasSuffix(p, "/"))
	fp := FilePath{Key: abs, Path: abs}
	separate, err := worktreesSeparate(o.Worktrees)
	if err != nil {
		return FilePath{}, err
	}
	if !separate {
		fp.Key = mapWorktree(abs)
	}
	return fp, nil
}

// cleanKeepSlash cleans p and, when subtree is set, ends it with one '/'
// ("/" stays "/").
func cleanKeepSlash(p string, subtree bool) string {
	c := filepath.Clean(p)
	if subtree && c != "/" {
		c += "/"
	}
	return c
}

// worktreesSeparate reads the worktree mode: mode, else $KLOCK_WORKTREES.
func worktreesSeparate(mode string) (bool, error) {
	if mode == "" {
		mode = os.Getenv(EnvWorktrees)
	}
	switch mode {
	case "", "shared":
		return false, nil
	case "separate":
		return true, nil
	}
	return false, fmt.Errorf("klock: %s=%q is not one of shared, separate", EnvWorktrees, mode)
}

// mapWorktree returns abs (absolute, clean) moved into the main worktree
// when it lies in a linked worktree, else abs itself.
func mapWorktree(abs string) string {
	subtree := strings.HasSuffix(abs, "/") && abs != "/"
	dir := strings.TrimSuffix(abs, "/")
	if dir == "" {
		dir = "/"
	}
	root, main := roots.lookup(dir)
	if main == "" || main == root {
		return abs
	}
	return cleanKeepSlash(main+"/"+strings.TrimPrefix(dir, root), subtree)
}

// roots caches, per directory, the nearest working-tree root at or above
// it. Resolving costs a stat per level (about 4 µs each on the benchmark
// machine, against a 30 µs round trip to klockd; see BenchmarkResolveFile),
// and the Client resolves every FILE intent it sends, so answers are kept
// for rootsTTL: a worktree created or removed is seen within that time.
var roots = rootCache{now: time.Now}

const (
	rootsTTL = time.Second
	rootsMax = 4096 // entries; the cache is emptied when it grows past this
)

// rootCache maps directories to their working-tree root.
type rootCache struct {
	now func() time.Time

	mu sync.Mutex // guards m
	m  map[string]rootEntry
}

// rootEntry is the answer for one directory: the nearest directory at or
// above it holding a ".git" entry ("" if none), and that root's main
// worktree when the root is a linked worktree ("" otherwise).
type rootEntry struct {
	root, main string
	at         time.Time
}

// lookup returns the working-tree root at or above dir and its main
// worktree, as rootEntry says, from the cache when it is fresh.
func (c *rootCache) lookup(dir string) (root, main string) {
	now := c.now()
	c.mu.Lock()
	e, ok := c.m[dir]
	c.mu.Unlock()
	if ok && now.Sub(e.at) < rootsTTL {
		return e.root, e.main
	}
	var visited []string
	for d := dir; ; d = filepath.Dir(d) {
		visited = append(visited, d)
		if m, found := worktreeRoot(d); found {
			root, main = d, m
			break
		}
		if d == "/" {
			break
		}
	}
	c.mu.Lock()
	if c.m == nil || len(c.m)+len(visited) > rootsMax {
		c.m = make(map[string]rootEntry)
	}
	for _, d := range visited {
		c.m[d] = rootEntry{root: root, main: main, at: now}
	}
	c.mu.Unlock()
	return root, main
}

// worktreeRoot looks for a ".git" entry in dir. found says there is one
// (dir is the root of a working tree, so the search stops); main is the
// main worktree's path when dir is a linked worktree, else "".
func worktreeRoot(dir string) (main string, found bool) {
	dotGit := filepath.Join(dir, ".git")
	fi, err := os.Stat(dotGit)
	if err != nil {
		return "", false
	}
	if !fi.Mode().IsRegular() {
		return "", true // a directory: a main worktree or a plain clone
	}
	gitdir, ok := readGitdirFile(dotGit)
	if !ok {
		return "", true
	}
	if !filepath.IsAbs(gitdir) {
		gitdir = filepath.Join(dir, gitdir)
	}
	common, err := os.ReadFile(filepath.Join(gitdir, "commondir"))
	if err != nil {
		return "", true // a submodule or --separate-git-dir checkout: no main worktree to map to
	}
	cd, _, _ := strings.Cut(string(common), "\n")
	cd = strings.TrimRight(cd, "\r")
	if cd == "" {
		return "", true
	}
	if !filepath.IsAbs(cd) {
		cd = filepath.Join(gitdir, cd)
	}
	return mainWorktree(filepath.Clean(cd)), true
}

// mainWorktree returns the main worktree of the repository whose common git
// directory is common: its parent when it is named ".git", else (a bare
// repository, or one made with --separate-git-dir) the common directory
// itself, which is also what `git worktree list` shows for it.
func mainWorktree(common string) string {
	if filepath.Base(common) == ".git" {
		return filepath.Dir(common)
	}
	return common
}

// readGitdirFile reads a ".git" file: one line "gitdir: PATH".
func readGitdirFile(name string) (string, bool) {
	f, err := os.Open(name)
	if err != nil {
		return "", false
	}
	defer f.Close()
	var buf [4096]byte
	n, _ := f.Read(buf[:])
	line, _, _ := strings.Cut(string(buf[:n]), "\n")
	gitdir, ok := strings.CutPrefix(strings.TrimRight(line, "\r"), "gitdir: ")
	if !ok || gitdir == "" {
		return "", false
	}
	return gitdir, true
}

// resolveIntents returns intents with every FILE path resolved by the rule
// against the process's working directory, and ClientPath set to the path
// as named when the worktree mapping changed it (unless the caller set
// it). The slice is copied only when something changes; a path the rule
// refuses is an INVALID_ARGUMENT *Error.
func resolveIntents(intents []Intent) ([]Intent, error) {
	out := intents
	for i, in := range intents {
		if !strings.EqualFold(in.ResourceType, "FILE") || in.ResourcePath == "" {
			continue // an empty path is the daemon's to refuse, as for any type
		}
		fp, err := ResolveFile(in.ResourcePath, ResolveOptions{})
		if err != nil {
			return nil, &Error{Code: protocol.CodeInvalidArgument, Message: err.Error()}
		}
		clientPath := in.ClientPath
		if clientPath == "" && fp.Path != fp.Key {
			clientPath = fp.Path
		}
		if fp.Key == in.ResourcePath && clientPath == in.ClientPath {
			continue
		}
		if &out[0] == &intents[0] {
			out = append([]Intent(nil), intents...)
		}
		out[i].ResourcePath, out[i].ClientPath = fp.Key, clientPath
	}
	return out, nil
}

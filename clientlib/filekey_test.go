package clientlib

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestResolveFileCleans(t *testing.T) {
	for _, tc := range []struct {
		dir, p, want string
	}{
		{"/w", "src/auth.ts", "/w/src/auth.ts"},
		{"/w", "./src/../auth.ts", "/w/auth.ts"},
		{"/w/x", "../y/", "/w/y/"},
		{"/w", "src/", "/w/src/"},
		{"/w", "src//", "/w/src/"},
		{"/w", ".", "/w"},
		{"/w", "./", "/w/"},
		{"/w", "/abs/./p", "/abs/p"},
		{"/w", "/abs/dir/", "/abs/dir/"},
		{"/w", "/..", "/"},
		{"/w", "/", "/"},
		{"/w", "//", "/"},
		{"/", "a", "/a"},
	} {
		got, err := ResolveFile(tc.p, ResolveOptions{Dir: tc.dir, Worktrees: "separate"})
		if err != nil || got.Key != tc.want || got.Path != tc.want {
			t.Errorf("ResolveFile(%q) in %s = %+v, %v; want %q", tc.p, tc.dir, got, err, tc.want)
		}
	}
}

func TestResolveFileErrors(t *testing.T) {
	for _, tc := range []struct {
		p    string
		o    ResolveOptions
		want string
	}{
		{"", ResolveOptions{Dir: "/w"}, "empty FILE path"},
		{"a", ResolveOptions{Dir: "rel"}, "not absolute"},
		{"/a", ResolveOptions{Worktrees: "mixed"}, `KLOCK_WORKTREES="mixed" is not one of shared, separate`},
	} {
		_, err := ResolveFile(tc.p, tc.o)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ResolveFile(%q, %+v) = %v; want an error containing %q", tc.p, tc.o, err, tc.want)
		}
	}
}

func TestFileKeyUsesTheWorkingDirectory(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir)
	got, err := FileKey("a/b.ts")
	if want := filepath.Join(dir, "a/b.ts"); err != nil || got != want {
		t.Fatalf("FileKey(a/b.ts) = %q, %v; want %q", got, err, want)
	}
}

// layout writes files (name → contents, names relative to a new temporary
// directory) and returns the directory, symlinks resolved.
func layout(t testing.TB, files map[string]string) string {
	t.Helper()
	root, err := filepath.EvalSymlinks(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	writeFiles(t, root, files)
	return root
}

// writeFiles writes files below root (see layout).
func writeFiles(t testing.TB, root string, files map[string]string) {
	t.Helper()
	for name, data := range files {
		p := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if data == "/" {
			continue // a directory only
		}
		if err := os.WriteFile(p, []byte(strings.ReplaceAll(data, "ROOT", root)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// TestResolveFileMapsLinkedWorktrees uses the layout git 2.39's
// "git worktree add" writes (absolute gitdir, relative commondir);
// tests/worktree_test.go runs the real git.
func TestResolveFileMapsLinkedWorktrees(t *testing.T) {
	root := layout(t, map[string]string{
		"repo/.git/HEAD":                  "ref: refs/heads/main\n",
		"repo/.git/worktrees/a/commondir": "../..\n",
		"repo/.git/worktrees/b/commondir": "../..\n",
		"repo-wt-a/.git":                  "gitdir: ROOT/repo/.git/worktrees/a\n",
		"repo-wt-a/src/auth.ts":           "x\n",
		"repo-wt-b/.git":                  "gitdir: ROOT/repo/.git/worktrees/b\n",
		"clone/.git/HEAD":                 "ref: refs/heads/main\n",
	})
	repo, wt, nested, clone := root+"/repo", root+"/repo-wt-a", root+"/repo-wt-b", root+"/clone"

	for _, tc := range []struct {
		name, dir, p, key string
	}{
		{"main checkout keeps its keys", repo, "src/auth.ts", repo + "/src/auth.ts"},
		{"main checkout, absolute", "/", repo + "/src/auth.ts", repo + "/src/auth.ts"},
		{"linked worktree maps to main", wt, "src/auth.ts", repo + "/src/auth.ts"},
		{"second worktree maps to the same key", nested, "./src/../src/auth.ts", repo + "/src/auth.ts"},
		{"a file that does not exist yet", wt + "/src", "new/file.go", repo + "/src/new/file.go"},
		{"a subtree keeps its slash", wt, "src/", repo + "/src/"},
		{"the worktree root itself", "/", wt, repo},
		{"the worktree root as a subtree", wt, "./", repo + "/"},
		{"a separate clone stays separate", clone, "src/auth.ts", clone + "/src/auth.ts"},
		{"outside any repository", "/", "/nonexistent-klock/x.ts", "/nonexistent-klock/x.ts"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ResolveFile(tc.p, ResolveOptions{Dir: tc.dir})
			if err != nil || got.Key != tc.key {
				t.Fatalf("ResolveFile(%q) in %s = %+v, %v; want key %q", tc.p, tc.dir, got, err, tc.key)
			}
			if want := cleanKeepSlash(filepath.Join(tc.dir, tc.p), strings.HasSuffix(tc.p, "/")); filepath.IsAbs(tc.p) {
				want = cleanKeepSlash(tc.p, strings.HasSuffix(tc.p, "/"))
				if got.Path != want {
					t.Errorf("Path = %q; want %q (the path as named)", got.Path, want)
				}
			} else if got.Path != want {
				t.Errorf("Path = %q; want %q (the path as named)", got.Path, want)
			}
			again, err := ResolveFile(got.Key, ResolveOptions{})
			if err != nil || again.Key != got.Key {
				t.Errorf("resolving the key again = %+v, %v; want it unchanged (%q)", again, err, got.Key)
			}
		})
	}

	t.Run("KLOCK_WORKTREES=separate", func(t *testing.T) {
		t.Setenv(EnvWorktrees, "separate")
		got, err := ResolveFile("src/auth.ts", ResolveOptions{Dir: wt})
		if want := wt + "/src/auth.ts"; err != nil || got.Key != want {
			t.Fatalf("ResolveFile in a worktree with %s=separate = %+v, %v; want key %q", EnvWorktrees, got, err, want)
		}
		got, err = ResolveFile("src/auth.ts", ResolveOptions{Dir: wt, Worktrees: "shared"})
		if want := repo + "/src/auth.ts"; err != nil || got.Key != want {
			t.Fatalf("Worktrees: shared overrides the environment: %+v, %v; want key %q", got, err, want)
		}
	})
}

// TestResolveFileGitLayouts covers the layouts git writes besides the
// default: a relative gitdir (git worktree add --relative-paths, git 2.48),
// worktrees of a bare repository, and a submodule, whose .git file has no
// commondir. They are written by hand so that the test does not depend on
// the installed git's version.
func TestResolveFileGitLayouts(t *testing.T) {
	root := layout(t, map[string]string{
		// rel-wt is a worktree of main with relative links.
		"main/.git/worktrees/rel/commondir": "../..\n",
		"rel-wt/.git":                       "gitdir: ../main/.git/worktrees/rel\n",
		// A bare repository with a worktree: the key root is the bare repo.
		"proj.git/worktrees/w1/commondir": "../..\n",
		"w1/.git":                         "gitdir: ROOT/proj.git/worktrees/w1\r\n",
		// A submodule inside main: a .git file, no commondir.
		"main/.git/modules/sub/HEAD": "ref: refs/heads/main\n",
		"main/sub/.git":              "gitdir: ../.git/modules/sub\n",
		// A .git file that is not a gitdir link.
		"odd/.git": "something else\n",
	})
	for _, tc := range []struct{ p, key string }{
		{root + "/rel-wt/a/b.go", root + "/main/a/b.go"},
		{root + "/w1/x.go", root + "/proj.git/x.go"},
		{root + "/main/sub/x.go", root + "/main/sub/x.go"},
		{root + "/odd/x.go", root + "/odd/x.go"},
	} {
		got, err := ResolveFile(tc.p, ResolveOptions{})
		if err != nil || got.Key != tc.key {
			t.Errorf("ResolveFile(%q) = %+v, %v; want key %q", tc.p, got, err, tc.key)
		}
	}
}

// BenchmarkResolveFile measures the rule's cost per FILE intent: a short
// path outside any repository, and one four levels deep in a linked
// worktree (one stat per level up to the worktree's root, one file read).
func BenchmarkResolveFile(b *testing.B) {
	b.Run("no-repo-uncached", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			roots.mu.Lock()
			roots.m = nil
			roots.mu.Unlock()
			if _, err := ResolveFile("/src/auth.ts", ResolveOptions{}); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("no-repo", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := ResolveFile("/src/auth.ts", ResolveOptions{}); err != nil {
				b.Fatal(err)
			}
		}
	})
	root := layout(b, map[string]string{
		"main/.git/worktrees/w/commondir": "../..\n",
		"wt/.git":                         "gitdir: ROOT/main/.git/worktrees/w\n",
	})
	deep := root + "/wt/a/b/c/d.go"
	b.Run("worktree-depth-4", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if fp, err := ResolveFile(deep, ResolveOptions{}); err != nil || fp.Key == deep {
				b.Fatal(fp, err)
			}
		}
	})
}

// TestResolveFileCacheExpires checks that a worktree made after a path was
// resolved is seen once the cached answer is rootsTTL old, not before.
func TestResolveFileCacheExpires(t *testing.T) {
	now := time.Unix(1000, 0)
	saved := roots.now
	roots.now = func() time.Time { return now }
	t.Cleanup(func() { roots.now = saved })

	root, err := filepath.EvalSymlinks(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	p := root + "/wt/src/a.go"
	if got, _ := ResolveFile(p, ResolveOptions{}); got.Key != p {
		t.Fatalf("before the worktree exists: key %q; want %q", got.Key, p)
	}
	writeFiles(t, root, map[string]string{
		"main/.git/worktrees/w/commondir": "../..\n",
		"wt/.git":                         "gitdir: ROOT/main/.git/worktrees/w\n",
	})
	now = now.Add(rootsTTL - time.Millisecond)
	if got, _ := ResolveFile(p, ResolveOptions{}); got.Key != p {
		t.Fatalf("within the cache's lifetime: key %q; want the cached %q", got.Key, p)
	}
	now = now.Add(time.Millisecond)
	if got, want := mustResolve(t, p), root+"/main/src/a.go"; got != want {
		t.Fatalf("after the cache's lifetime: key %q; want %q", got, want)
	}
}

func mustResolve(t *testing.T, p string) string {
	t.Helper()
	got, err := ResolveFile(p, ResolveOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return got.Key
}

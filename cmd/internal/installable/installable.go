// Package installable tells whether an executable may be written into
// something that outlives the current build: a service unit's ExecStart
// (klockd install), an agent's hook configuration (klockctl integrate).
// A binary that `go run` or `go test` built lives in a temporary or cache
// directory that Go deletes, so a unit or hook naming it breaks later, far
// from the command that wrote it.
package installable

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// TransientError says why exe is not a lasting path.
type TransientError struct {
	Exe    string // the executable, symlinks resolved
	Dir    string // the temporary or cache directory it lives in
	Reason string // "go run's build directory", "the Go build cache", "a temporary directory"
}

// Error describes the problem; Advice says what to do.
func (e *TransientError) Error() string {
	return fmt.Sprintf("%s is in %s (%s), which is deleted sooner or later", e.Exe, e.Dir, e.Reason)
}

// Check returns a *TransientError when exe (an absolute path, symlinks
// resolved) lives where it will not last: a go-build directory of `go run`
// or `go test`, the Go build cache ($GOCACHE, else the user cache's
// go-build), or a temporary directory ($TMPDIR, /tmp, /var/tmp, /dev/shm).
// It returns nil for anything else.
func Check(exe string) error {
	exe = filepath.Clean(exe)
	for _, part := range strings.Split(filepath.Dir(exe), "/") {
		if strings.HasPrefix(part, "go-build") {
			dir := exe[:strings.Index(exe, "/"+part+"/")+len(part)+1]
			return &TransientError{Exe: exe, Dir: dir, Reason: "a build directory of go run or go test"}
		}
	}
	if cache := goCache(); cache != "" && within(exe, cache) {
		return &TransientError{Exe: exe, Dir: cache, Reason: "the Go build cache"}
	}
	for _, tmp := range []string{os.Getenv("TMPDIR"), "/tmp", "/var/tmp", "/dev/shm"} {
		if tmp != "" && filepath.IsAbs(tmp) && within(exe, tmp) {
			return &TransientError{Exe: exe, Dir: filepath.Clean(tmp), Reason: "a temporary directory"}
		}
	}
	return nil
}

// Advice says how to install the program name (klockd, klockctl) from a
// clone so that its path lasts: system-wide for root, else ~/.local/bin.
func Advice(name string) string {
	dir := "/usr/local/bin/"
	if os.Geteuid() != 0 {
		dir = "~/.local/bin/"
	}
	return fmt.Sprintf("build it where it stays, `go build -o %s ./cmd/%s` in a clone, and run %s%s from there", dir, name, dir, name)
}

// goCache is where Go keeps its build cache: $GOCACHE, else the user cache
// directory's go-build (what `go env GOCACHE` prints, without running go).
func goCache() string {
	if c := os.Getenv("GOCACHE"); c != "" && c != "off" && filepath.IsAbs(c) {
		return filepath.Clean(c)
	}
	if d, err := os.UserCacheDir(); err == nil {
		return filepath.Join(d, "go-build")
	}
	return ""
}

// within reports whether path is dir or below it.
func within(path, dir string) bool {
	dir = filepath.Clean(dir)
	return path == dir || strings.HasPrefix(path, dir+"/") || dir == "/"
}

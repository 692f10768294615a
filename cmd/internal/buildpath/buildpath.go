// Package buildpath tells whether an executable lives somewhere it will not
// stay: a temporary directory or Go's build cache, where "go run" and
// "go test" put the binaries they build. A command that writes its own path
// into a configuration file (klockctl integrate, klockd install) warns when
// that path will soon be gone.
package buildpath

import (
	"os"
	"path/filepath"
	"strings"
)

// Temporary reports whether exe (an absolute path) is in a temporary
// directory or a Go build cache, and why, in words for a warning.
func Temporary(exe string) (why string, temporary bool) {
	exe = filepath.Clean(exe)
	for _, part := range strings.Split(exe, string(filepath.Separator)) {
		if strings.HasPrefix(part, "go-build") {
			return "it was built by \"go run\" or \"go test\" into " + filepath.Dir(exe) + ", which Go deletes", true
		}
	}
	if cache := os.Getenv("GOCACHE"); cache != "" && within(exe, cache) {
		return "it is in Go's build cache " + cache, true
	}
	for _, tmp := range []string{os.TempDir(), "/tmp", "/var/tmp"} {
		if within(exe, tmp) {
			return "it is under the temporary directory " + tmp, true
		}
	}
	return "", false
}

// within reports whether path is dir or below it.
func within(path, dir string) bool {
	dir = filepath.Clean(dir)
	rel, err := filepath.Rel(dir, path)
	return err == nil && rel != ".." && !strings.HasPrefix(rel, "../") && rel != "."
}

package protocol

import (
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestSpecHasOneName: the wire spec is protocol/README.md, and nothing in
// the repository (code, docs, messages sent to clients) points to another
// name for it (issue 19 found references to a spec file that never
// existed).
func TestSpecHasOneName(t *testing.T) {
	stale := "PROTOCOL" + ".md" // split so that this file does not match
	if _, err := os.Stat("README.md"); err != nil {
		t.Fatalf("the spec protocol/README.md: %v", err)
	}
	err := filepath.WalkDir("..", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if name := d.Name(); name == ".git" || name == "testdata" || name == "__pycache__" {
				return filepath.SkipDir
			}
			return nil
		}
		switch filepath.Ext(path) {
		case ".go", ".md", ".py", ".toml", ".service", ".socket":
		default:
			return nil
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if strings.Contains(string(data), stale) {
			t.Errorf("%s mentions %s; the spec is protocol/README.md", path, stale)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

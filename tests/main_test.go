package tests

import (
	"os"
	"testing"

	"github.com/klockd/klock/tests/harness"
)

// TestMain removes the binaries the harness built, so test runs do not
// leave a copy of klockd and klockctl behind in the temp directory.
func TestMain(m *testing.M) {
	code := m.Run()
	harness.RemoveBinaries()
	harness.StopEtcd()
	os.Exit(code)
}

// Package tracefile writes a Go runtime execution trace of the running
// process to a file (klockd --trace, klock-bench -trace), for go tool trace.
package tracefile

import (
	"os"
	"runtime/trace"
)

// Start starts tracing into path and returns the function that stops the
// trace and closes the file.
func Start(path string) (stop func(), err error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	if err := trace.Start(f); err != nil {
		f.Close()
		return nil, err
	}
	return func() {
		trace.Stop()
		f.Close()
	}, nil
}

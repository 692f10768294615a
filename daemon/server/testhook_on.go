//go:build klockd_testhooks

package server

import (
	"os"
	"strconv"
	"strings"
)

// Built with -tags klockd_testhooks (tests/harness does, for tests that
// need it), klockd reads KLOCKD_TEST_PANIC=<op>:<n>: the n-th state change
// of op panics after the engine has changed and before its records reach
// the journal. Release builds have no such hook.
func init() {
	op, nth, ok := strings.Cut(os.Getenv("KLOCKD_TEST_PANIC"), ":")
	n, err := strconv.Atoi(nth)
	if !ok || err != nil || n < 1 {
		return
	}
	seen := 0
	// Called under Server.mu, so seen needs no other lock.
	midChangeHook = func(o string) {
		if o != op {
			return
		}
		if seen++; seen == n {
			panic("klockd_testhooks: KLOCKD_TEST_PANIC=" + op + ":" + nth)
		}
	}
}

// Package harness runs the real klockd binary for end-to-end tests: it
// builds klockd and klockctl once per test process, starts a daemon on a
// private socket and state directory, waits until it answers hello, and
// stops it when the test ends. Raw gives tests a bare protocol connection
// for what the client library would never send.
package harness

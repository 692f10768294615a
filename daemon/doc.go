// Package daemon wires klockd together: it recovers the lease engine's
// state from the store, creates (or adopts from systemd) the socket, runs
// the server, tells the service manager when it is ready and stopping, and
// shuts everything down in order when its context ends.
//
// cmd/klockd is a thin main around Config, New and Run.
package daemon

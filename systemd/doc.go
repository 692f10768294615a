// Package systemd holds klockd's hand-written systemd units, the files in
// this directory, embedded so that `klockd install` writes exactly the unit
// documented here (with its own ExecStart). README.md beside this file says
// how to install and run them.
//
// The daemon's side of the systemd protocols (socket activation, sd_notify,
// watchdog) is package github.com/klockd/klock/daemon/systemd.
package systemd

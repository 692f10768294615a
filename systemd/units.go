package systemd

import _ "embed" // the unit files

//go:embed klockd.service
var systemService string

//go:embed user/klockd.service
var userService string

// Unit returns the contents of klockd.service: the system unit, or with
// user set the systemd --user unit (user/klockd.service). Its ExecStart runs
// /usr/local/bin/klockd with the default socket and state directory.
func Unit(user bool) string {
	if user {
		return userService
	}
	return systemService
}

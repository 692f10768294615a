package main

import (
	"flag"
	"fmt"
	"runtime"
	"runtime/debug"

	"github.com/klockd/klock/protocol"
)

// buildVersion is set at link time (-ldflags "-X main.buildVersion=v1.2.3");
// when empty, the module version or VCS revision recorded by the Go
// toolchain is used.
var buildVersion string

// version returns klockctl's version for people and for hello's client name.
func version() string {
	if buildVersion != "" {
		return buildVersion
	}
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return "devel"
	}
	if v := info.Main.Version; v != "" && v != "(devel)" {
		return v
	}
	for _, s := range info.Settings {
		if s.Key == "vcs.revision" && len(s.Value) >= 12 {
			return "devel-" + s.Value[:12]
		}
	}
	return "devel"
}

// versionJSON is the version command's --json output.
type versionJSON struct {
	Version  string `json:"version"`
	Protocol int    `json:"protocol"`
	Go       string `json:"go"`
}

func versionCommand() *command {
	return &command{
		name:     "version",
		synopsis: "[flags]",
		summary:  "print klockctl's version and protocol version",
		help: `Prints klockctl's version, the protocol version it speaks and the Go
version it was built with. It does not contact the daemon ("klockctl status"
shows the daemon's version).`,
		run: func(a *app, _ *flag.FlagSet, args []string) error {
			if len(args) != 0 {
				return usagef("version", "version takes no arguments")
			}
			v := versionJSON{Version: version(), Protocol: protocol.Version, Go: runtime.Version()}
			if a.json {
				return writeJSON(a.stdout, v)
			}
			_, err := fmt.Fprintf(a.stdout, "klockctl %s (protocol %d, %s)\n", v.Version, v.Protocol, v.Go)
			return err
		},
	}
}

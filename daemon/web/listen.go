package web

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"time"
)

// CheckAddr validates an --http address: 127.0.0.1:PORT (any 127.x.y.z),
// [::1]:PORT, or a Unix socket path (anything holding a "/"). Every other
// address is refused, naming why: the dashboard and /metrics are not
// authenticated.
func CheckAddr(addr string) error {
	if addr == "" {
		return errors.New("klock: --http needs an address: 127.0.0.1:PORT, [::1]:PORT or a Unix socket path")
	}
	if isSocketPath(addr) {
		return nil
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("klock: --http %q is not 127.0.0.1:PORT, [::1]:PORT or a Unix socket path (a path holds a \"/\")", addr)
	}
	if _, err := net.LookupPort("tcp", port); err != nil || port == "" {
		return fmt.Errorf("klock: --http %q: %q is not a port number", addr, port)
	}
	ip := net.ParseIP(host)
	if ip == nil || !ip.IsLoopback() {
		what := "not a loopback address"
		switch {
		case host == "":
			what = "every interface"
		case ip == nil:
			what = "a host name, not a loopback IP address"
		}
		return fmt.Errorf("klock: --http %q is %s: the dashboard and /metrics have no authentication, "+
			"so klockd serves them only on 127.0.0.1:PORT, [::1]:PORT or a Unix socket path", addr, what)
	}
	return nil
}

func isSocketPath(addr string) bool { return strings.Contains(addr, "/") }

// Listen opens the --http listener after CheckAddr. A Unix socket left by
// a daemon that is gone is replaced; one that answers is not.
func Listen(addr string) (net.Listener, error) {
	if err := CheckAddr(addr); err != nil {
		return nil, err
	}
	if !isSocketPath(addr) {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return nil, fmt.Errorf("klock: --http %s: %w", addr, err)
		}
		return ln, nil
	}
	if fi, err := os.Lstat(addr); err == nil && fi.Mode()&os.ModeSocket != 0 {
		if c, err := net.DialTimeout("unix", addr, 200*time.Millisecond); err == nil {
			c.Close()
			return nil, fmt.Errorf("klock: --http %s: something already serves that socket", addr)
		}
		os.Remove(addr)
	}
	ln, err := net.Listen("unix", addr)
	if err != nil {
		return nil, fmt.Errorf("klock: --http %s: %w", addr, err)
	}
	if err := os.Chmod(addr, 0o660); err != nil {
		ln.Close()
		return nil, fmt.Errorf("klock: --http %s: %w", addr, err)
	}
	return ln, nil
}

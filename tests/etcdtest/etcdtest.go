// Package etcdtest starts real etcd members for tests: Debian's etcd-server
// (the etcd binary on PATH), on loopback ports, with their data in the
// test's temporary directory, stopped when the test ends.
//
// Without the binary a test is skipped on a developer machine and fails in
// CI (CI set), where .ci/run installs etcd-server.
package etcdtest

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// StartTimeout bounds how long a member may take to serve.
const StartTimeout = 30 * time.Second

// Flags are the settings of the members besides their names, URLs and data
// directories: Raft ticks 10 times etcd's defaults (a killed member's
// absence is noticed in half a second) and everything else as shipped
// (the WAL is fsynced).
const Flags = "--heartbeat-interval 50 --election-timeout 500"

// Cluster is a set of etcd members started for one test (Start) or for a
// whole test process (StartProcess).
type Cluster struct {
	bin     string
	tls     *TLS
	dir     string // StartProcess's data directory
	Members []*Member
}

// Member is one etcd process.
type Member struct {
	c       *Cluster
	Name    string
	Client  string // client URL
	Peer    string // peer URL
	dataDir string

	// mu guards the fields that follow.
	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
	log  *bytes.Buffer
}

// Binary returns the path of the etcd binary, skipping or failing tb
// without it.
func Binary(tb testing.TB) string {
	tb.Helper()
	bin, err := exec.LookPath("etcd")
	if err == nil {
		return bin
	}
	if os.Getenv("CI") != "" {
		tb.Fatal("etcd is not installed; CI must have it (apt-get install -y etcd-server)")
	}
	tb.Skip("etcd is not installed (apt-get install -y etcd-server); skipped outside CI")
	return ""
}

// TLS are the files that make members serve clients over TLS and require
// a client certificate signed by CA (etcd's --client-cert-auth).
type TLS struct {
	CA, Cert, Key string // PEM files: the CA, the members' certificate (for 127.0.0.1) and its key
}

// Start starts a cluster of n members and waits until it serves. It is
// stopped when the test ends.
func Start(tb testing.TB, n int) *Cluster {
	tb.Helper()
	return StartTLS(tb, n, nil)
}

// StartTLS is Start with clients served over TLS when tls is not nil (the
// cluster is then not waited for: its client needs the certificates).
func StartTLS(tb testing.TB, n int, tls *TLS) *Cluster {
	tb.Helper()
	bin := Binary(tb)
	c, err := start(bin, n, tb.TempDir(), tls)
	if c != nil {
		tb.Cleanup(func() {
			c.Close()
			if tb.Failed() {
				for _, m := range c.Members {
					tb.Logf("etcd member %s log (tail):\n%s", m.Name, m.logTail(4000))
				}
			}
		})
	}
	if err != nil {
		tb.Fatal(err)
	}
	return c
}

// StartProcess starts a cluster of n members that outlives any one test:
// the caller closes it (TestMain). It fails when etcd is not installed.
func StartProcess(n int) (*Cluster, error) {
	bin, err := exec.LookPath("etcd")
	if err != nil {
		return nil, fmt.Errorf("etcd is not installed (apt-get install -y etcd-server): %w", err)
	}
	dir, err := os.MkdirTemp("", "etcdtest-")
	if err != nil {
		return nil, err
	}
	c, err := start(bin, n, dir, nil)
	if err != nil {
		if c != nil {
			c.Close()
		}
		os.RemoveAll(dir)
		return nil, err
	}
	c.dir = dir
	return c, nil
}

func start(bin string, n int, dir string, tls *TLS) (*Cluster, error) {
	c := &Cluster{bin: bin, tls: tls}
	scheme := "http"
	if tls != nil {
		scheme = "https"
	}
	ports, err := freePorts(2 * n)
	if err != nil {
		return nil, err
	}
	var initial []string
	for i := 0; i < n; i++ {
		m := &Member{
			c:       c,
			Name:    fmt.Sprintf("m%d", i),
			Client:  fmt.Sprintf("%s://127.0.0.1:%d", scheme, ports[2*i]),
			Peer:    fmt.Sprintf("http://127.0.0.1:%d", ports[2*i+1]),
			dataDir: filepath.Join(dir, fmt.Sprintf("etcd-m%d", i)),
		}
		c.Members = append(c.Members, m)
		initial = append(initial, m.Name+"="+m.Peer)
	}
	for _, m := range c.Members {
		if err := m.start(strings.Join(initial, ","), "new"); err != nil {
			return c, err
		}
	}
	if tls != nil {
		return c, nil
	}
	return c, c.waitHealthy(StartTimeout)
}

// Close kills every member (and removes the data of a StartProcess
// cluster).
func (c *Cluster) Close() {
	for _, m := range c.Members {
		m.Kill()
	}
	if c.dir != "" {
		os.RemoveAll(c.dir)
	}
}

// Endpoints returns the members' client URLs.
func (c *Cluster) Endpoints() []string {
	var out []string
	for _, m := range c.Members {
		out = append(out, m.Client)
	}
	return out
}

// EndpointList returns the client URLs comma-separated, as --etcd takes them.
func (c *Cluster) EndpointList() string { return strings.Join(c.Endpoints(), ",") }

// Client returns a client of the cluster, closed when the test ends.
func (c *Cluster) Client(tb testing.TB) *clientv3.Client {
	tb.Helper()
	cli, err := c.newClient()
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { cli.Close() })
	return cli
}

func (c *Cluster) newClient() (*clientv3.Client, error) {
	return clientv3.New(clientv3.Config{Endpoints: c.Endpoints(), DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
}

// WaitHealthy waits until a linearizable read succeeds (the cluster has a
// quorum and a leader), failing tb after StartTimeout.
func (c *Cluster) WaitHealthy(tb testing.TB) {
	tb.Helper()
	if err := c.waitHealthy(StartTimeout); err != nil {
		tb.Fatal(err)
	}
}

func (c *Cluster) waitHealthy(timeout time.Duration) error {
	cli, err := c.newClient()
	if err != nil {
		return err
	}
	defer cli.Close()
	deadline := time.Now().Add(timeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := cli.Get(ctx, "/etcdtest/health")
		cancel()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			var logs string
			for _, m := range c.Members {
				logs += fmt.Sprintf("\n-- member %s:\n%s", m.Name, m.logTail(2000))
			}
			return fmt.Errorf("etcd did not become healthy within %s: %v%s", timeout, err, logs)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (m *Member) start(initial, state string) error {
	args := []string{
		"--name", m.Name,
		"--data-dir", m.dataDir,
		"--listen-client-urls", m.Client,
		"--advertise-client-urls", m.Client,
		"--listen-peer-urls", m.Peer,
		"--initial-advertise-peer-urls", m.Peer,
		"--initial-cluster", initial,
		"--initial-cluster-state", state,
		"--initial-cluster-token", "etcdtest",
		"--heartbeat-interval", "50", "--election-timeout", "500", // Flags
		"--logger", "zap",
		"--log-level", "warn",
	}
	if t := m.c.tls; t != nil {
		args = append(args, "--cert-file", t.Cert, "--key-file", t.Key, "--trusted-ca-file", t.CA, "--client-cert-auth")
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.log == nil {
		m.log = new(bytes.Buffer)
	}
	cmd := exec.Command(m.c.bin, args...)
	cmd.Stdout = &lockedWriter{mu: &m.mu, w: m.log}
	cmd.Stderr = cmd.Stdout
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting etcd member %s: %v", m.Name, err)
	}
	done := make(chan struct{})
	go func() {
		cmd.Wait()
		close(done)
	}()
	m.cmd, m.done = cmd, done
	return nil
}

// PID returns the member's process id, or 0 when it is not running.
func (m *Member) PID() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cmd == nil {
		return 0
	}
	return m.cmd.Process.Pid
}

// Kill stops the member with SIGKILL and waits for it to exit.
func (m *Member) Kill() {
	m.mu.Lock()
	cmd, done := m.cmd, m.done
	m.mu.Unlock()
	if cmd == nil {
		return
	}
	cmd.Process.Kill()
	<-done
	m.mu.Lock()
	if m.cmd == cmd {
		m.cmd = nil
	}
	m.mu.Unlock()
}

// Restart starts a killed member again on its data directory.
func (m *Member) Restart(tb testing.TB) {
	tb.Helper()
	var initial []string
	for _, o := range m.c.Members {
		initial = append(initial, o.Name+"="+o.Peer)
	}
	if err := m.start(strings.Join(initial, ","), "existing"); err != nil {
		tb.Fatal(err)
	}
}

func (m *Member) logTail(n int) string {
	m.mu.Lock()
	defer m.mu.Unlock()
	b := m.log.Bytes()
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

type lockedWriter struct {
	mu *sync.Mutex
	w  *bytes.Buffer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// freePorts returns n loopback ports that were free a moment ago.
func freePorts(n int) ([]int, error) {
	var lns []net.Listener
	var out []int
	defer func() {
		for _, ln := range lns {
			ln.Close()
		}
	}()
	for i := 0; i < n; i++ {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		lns = append(lns, ln)
		out = append(out, ln.Addr().(*net.TCPAddr).Port)
	}
	return out, nil
}

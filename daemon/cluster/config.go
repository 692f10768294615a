package cluster

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"regexp"
	"strings"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
)

// DefaultPrefix is the etcd key prefix of a cluster unless told.
const DefaultPrefix = "/klock/"

// Defaults of Config.
const (
	DefaultSessionTTL    = 5 * time.Second
	DefaultTimeout       = 5 * time.Second
	DefaultSnapshotEvery = 10_000
)

// StateMachine is what a cluster replicates: klockd's engine behind its
// server. Every node's state machine is fed the same entries in the same
// order and must reach the same state from them: it may depend on nothing
// else (no clock, no randomness but Entry.Seed, no local settings that
// differ between nodes). Its methods may be called from several goroutines.
type StateMachine interface {
	// Apply applies one entry and returns what to answer its proposer.
	// tag is what this node passed to Propose for it, nil for the entries
	// of other nodes (and for this node's own entries when it restarted).
	Apply(e *Entry, tag any) any
	// Snapshot returns the whole state after the last entry applied.
	Snapshot() ([]byte, error)
	// Restore replaces the state with a snapshot's. Anything the node was
	// waiting to answer that the new state no longer has must be answered
	// by the state machine, as an error that says the outcome is unknown.
	Restore(b []byte) error
	// NextDeadline returns the earliest entry time at which a KindTick has
	// work, or false when none.
	NextDeadline() (int64, bool)
	// Owners returns the owners that have something only they can end
	// (see KindDropOwner), in any order.
	Owners() []string
}

// Config configures a Node. Endpoints, NodeID and StateMachine are
// required.
type Config struct {
	Endpoints []string    // etcd client URLs
	Prefix    string      // key prefix; "" = DefaultPrefix
	NodeID    string      // this node's name: 1..64 of [A-Za-z0-9._-]
	TLS       *tls.Config // nil = plain TCP (or the URLs' https scheme with system roots)
	// Settings are what every node must agree on (engine limits), as flag
	// name -> value; the first node to start stores them, the others refuse
	// to start with different ones.
	Settings      map[string]string
	StateMachine  StateMachine
	SessionTTL    time.Duration // etcd lease of the node's liveness; 0 = DefaultSessionTTL
	Timeout       time.Duration // one etcd request; 0 = DefaultTimeout
	SnapshotEvery int           // commands between snapshots; 0 = DefaultSnapshotEvery
	Logger        *slog.Logger  // nil = slog.Default()
	Now           func() time.Time
}

var nodeIDPattern = regexp.MustCompile(`^[A-Za-z0-9._-]{1,64}$`)

// CheckNodeID returns an error naming what is wrong with a node id.
func CheckNodeID(id string) error {
	if !nodeIDPattern.MatchString(id) {
		return fmt.Errorf("klock: node id %q is not 1..64 of the characters A-Z a-z 0-9 . _ -", id)
	}
	return nil
}

// ParseEndpoints splits a comma-separated --etcd value into client URLs,
// checking each.
func ParseEndpoints(s string) ([]string, error) {
	var out []string
	for _, e := range strings.Split(s, ",") {
		e = strings.TrimSpace(e)
		if e == "" {
			continue
		}
		u, err := url.Parse(e)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, fmt.Errorf("klock: etcd endpoint %q is not an http:// or https:// URL with a host and port", e)
		}
		out = append(out, e)
	}
	if len(out) == 0 {
		return nil, errors.New("klock: --etcd names no endpoint; give one or more URLs, comma-separated")
	}
	return out, nil
}

// CheckPrefix returns an error naming what is wrong with a key prefix.
func CheckPrefix(p string) error {
	if !strings.HasPrefix(p, "/") || !strings.HasSuffix(p, "/") || len(p) > 128 {
		return fmt.Errorf("klock: --etcd-prefix %q must start and end with / and be at most 128 bytes", p)
	}
	return nil
}

// TLSConfig loads a client TLS configuration: a CA bundle to trust and,
// optionally, a client certificate and key. All empty returns nil.
func TLSConfig(caFile, certFile, keyFile string) (*tls.Config, error) {
	if caFile == "" && certFile == "" && keyFile == "" {
		return nil, nil
	}
	if (certFile == "") != (keyFile == "") {
		return nil, errors.New("klock: --etcd-cert and --etcd-key go together; give both or neither")
	}
	for _, f := range []string{caFile, certFile, keyFile} {
		if f == "" {
			continue
		}
		if _, err := os.Stat(f); err != nil {
			return nil, fmt.Errorf("klock: etcd TLS file: %w", err)
		}
	}
	info := transport.TLSInfo{TrustedCAFile: caFile, CertFile: certFile, KeyFile: keyFile}
	cfg, err := info.ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("klock: loading etcd TLS files: %w", err)
	}
	return cfg, nil
}

func (c *Config) setDefaults() error {
	if len(c.Endpoints) == 0 {
		return errors.New("klock: cluster mode needs at least one etcd endpoint")
	}
	if c.StateMachine == nil {
		return errors.New("klock: cluster mode needs a state machine")
	}
	if err := CheckNodeID(c.NodeID); err != nil {
		return err
	}
	if c.Prefix == "" {
		c.Prefix = DefaultPrefix
	}
	if err := CheckPrefix(c.Prefix); err != nil {
		return err
	}
	if c.SessionTTL <= 0 {
		c.SessionTTL = DefaultSessionTTL
	}
	if c.SessionTTL < time.Second {
		return fmt.Errorf("klock: etcd session ttl %s is below etcd's 1 s granularity", c.SessionTTL)
	}
	if c.Timeout <= 0 {
		c.Timeout = DefaultTimeout
	}
	if c.SnapshotEvery <= 0 {
		c.SnapshotEvery = DefaultSnapshotEvery
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return nil
}

package daemon

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/klockd/klock/daemon/cluster"
	"github.com/klockd/klock/daemon/engine"
	"github.com/klockd/klock/daemon/server"
)

// ClusterConfig makes klockd one node of a lock table shared through etcd
// (cluster mode; daemon/cluster).
type ClusterConfig struct {
	Endpoints []string // etcd client URLs; required
	Prefix    string   // etcd key prefix; "" = cluster.DefaultPrefix
	// NodeID names this klockd in the cluster; "" = the host name plus a
	// short random suffix, kept in the state directory when there is one.
	NodeID     string
	CACert     string        // CA bundle to check etcd's certificate; "" = none (or the system's, for https)
	Cert, Key  string        // client certificate and key for etcd; both or neither
	SessionTTL time.Duration // how long etcd keeps this node alive without hearing from it; 0 = cluster.DefaultSessionTTL
}

// nodeIDFile is where a generated node id is kept in the state directory.
const nodeIDFile = "node-id"

// check validates the cluster flags.
func (c *ClusterConfig) check() error {
	if len(c.Endpoints) == 0 {
		return errors.New("klock: --etcd names no endpoint")
	}
	if c.Prefix == "" {
		c.Prefix = cluster.DefaultPrefix
	}
	if err := cluster.CheckPrefix(c.Prefix); err != nil {
		return err
	}
	if c.NodeID != "" {
		if err := cluster.CheckNodeID(c.NodeID); err != nil {
			return fmt.Errorf("%w (--node-id)", err)
		}
	}
	if c.SessionTTL != 0 && c.SessionTTL < 2*time.Second {
		return fmt.Errorf("klock: --etcd-session-ttl %s is too short; at least 2s", c.SessionTTL)
	}
	return nil
}

// settings are the engine limits every node of a cluster must share: each
// node's engine decides every change, and they agree only with equal
// limits.
func settings(ecfg engine.Config) map[string]string {
	return map[string]string{
		"--max-leases":                       strconv.Itoa(ecfg.MaxLeases),
		"--max-waiters":                      strconv.Itoa(ecfg.MaxWaiters),
		"--max-agents":                       strconv.Itoa(ecfg.MaxAgents),
		"--max-ttl":                          (time.Duration(ecfg.MaxTTL) * time.Millisecond).String(),
		"admin uid (the uid klockd runs as)": strconv.FormatUint(uint64(ecfg.AdminUID), 10),
	}
}

// joinCluster joins the cluster as srv's state machine and switches srv to
// cluster mode. The node is current (snapshot and log loaded) when it
// returns.
func (d *Daemon) joinCluster(ctx context.Context, srv *server.Server, ecfg engine.Config) (*cluster.Node, error) {
	cc := d.cfg.Cluster
	id := cc.NodeID
	if id == "" {
		var err error
		if id, err = defaultNodeID(d.cfg.StateDir); err != nil {
			return nil, err
		}
	}
	tlsCfg, err := cluster.TLSConfig(cc.CACert, cc.Cert, cc.Key)
	if err != nil {
		return nil, err
	}
	node, err := cluster.Start(ctx, cluster.Config{
		Endpoints:    cc.Endpoints,
		Prefix:       cc.Prefix,
		NodeID:       id,
		TLS:          tlsCfg,
		Settings:     settings(ecfg),
		StateMachine: srv.StateMachine(),
		SessionTTL:   cc.SessionTTL,
		Logger:       d.log,
	})
	if err != nil {
		return nil, err
	}
	srv.SetReplicator(node)
	return node, nil
}

// defaultNodeID returns the node id kept in stateDir, or makes one from the
// host name and a random suffix (and keeps it there, when stateDir is set).
func defaultNodeID(stateDir string) (string, error) {
	path := filepath.Join(stateDir, nodeIDFile)
	if stateDir != "" {
		if b, err := os.ReadFile(path); err == nil {
			id := strings.TrimSpace(string(b))
			if err := cluster.CheckNodeID(id); err != nil {
				return "", fmt.Errorf("%w (in %s)", err, path)
			}
			return id, nil
		} else if !errors.Is(err, fs.ErrNotExist) {
			return "", fmt.Errorf("klock: reading the node id: %w", err)
		}
	}
	host, _ := os.Hostname()
	host = hostChars.ReplaceAllString(host, "-")
	if len(host) > 48 {
		host = host[:48]
	}
	if host == "" {
		host = "klockd"
	}
	var b [3]byte
	rand.Read(b[:])
	id := host + "-" + hex.EncodeToString(b[:])
	if stateDir != "" {
		if err := os.MkdirAll(stateDir, 0o700); err != nil {
			return "", fmt.Errorf("klock: keeping the node id: %w", err)
		}
		if err := os.WriteFile(path, []byte(id+"\n"), 0o600); err != nil {
			return "", fmt.Errorf("klock: keeping the node id: %w", err)
		}
	}
	return id, nil
}

var hostChars = regexp.MustCompile(`[^A-Za-z0-9._-]`)

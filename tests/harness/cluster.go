package harness

import (
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/klockd/klock/tests/etcdtest"
)

// ClusterModeEnv, when set to a non-empty value, makes Start run every
// klockd in cluster mode (README "Several machines"), each on its own key
// prefix of one etcd member that the test process starts once: the whole
// end-to-end suite then runs against cluster-mode daemons. Tests of what
// cluster mode does differently skip themselves (SkipInClusterMode).
const ClusterModeEnv = "KLOCK_TEST_ETCD"

// ClusterMode reports whether the suite runs against cluster-mode daemons.
func ClusterMode() bool { return os.Getenv(ClusterModeEnv) != "" }

// SkipInClusterMode skips a test that checks what a single daemon does and
// cluster mode does differently (protocol/README.md "Cluster mode").
func SkipInClusterMode(tb testing.TB, why string) {
	tb.Helper()
	if ClusterMode() {
		tb.Skip("cluster mode: " + why)
	}
}

var (
	sharedMu   sync.Mutex
	sharedEtcd *etcdtest.Cluster
	sharedSeq  atomic.Int64
)

// sharedCluster returns cluster options for a new daemon: the shared etcd
// (started on first use) and a prefix no other daemon uses.
func sharedCluster(tb testing.TB) *ClusterOptions {
	tb.Helper()
	sharedMu.Lock()
	defer sharedMu.Unlock()
	if sharedEtcd == nil {
		etcdtest.Binary(tb) // skips, or fails in CI, without etcd
		c, err := etcdtest.StartProcess(1)
		if err != nil {
			tb.Fatalf("harness: %v", err)
		}
		sharedEtcd = c
	}
	n := sharedSeq.Add(1)
	return &ClusterOptions{
		Etcd:   sharedEtcd.EndpointList(),
		Prefix: fmt.Sprintf("/klocktest/%d-%d/", os.Getpid(), n),
		NodeID: fmt.Sprintf("node%d", n),
	}
}

// StopEtcd stops the etcd that cluster mode started, if any. Call it from
// TestMain once every test has run.
func StopEtcd() {
	sharedMu.Lock()
	defer sharedMu.Unlock()
	if sharedEtcd != nil {
		sharedEtcd.Close()
		sharedEtcd = nil
	}
}

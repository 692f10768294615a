package tests

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/klockd/klock/protocol"
	"github.com/klockd/klock/tests/harness"
)

// TestDurableAnswersDoNotWaitForAFullSocket: in durable mode the goroutine
// that writes a journal round also sends the answers whose records that
// round made durable (daemon/server/answer.go). A client that sends changes
// and never reads fills its socket; the writer must leave that socket to a
// goroutine of its own, never wait on it: another client's changes go on
// being answered while the non-reader is still connected (the daemon drops
// it only after its 10 s write timeout). A writer that waited on the full
// socket would hold every change's answer until that drop.
func TestDurableAnswersDoNotWaitForAFullSocket(t *testing.T) {
	d := harness.Start(t, harness.Options{}) // durable: a state directory
	b := startBystander(t, d)

	sink := d.Raw(t)
	mustOK(t, "register", sink.Call(1, protocol.OpRegisterAgent, args(protocol.ArgAgentID, "sink")), nil)
	var flood []byte
	for i := 0; i < 3000; i++ {
		var err error
		flood, err = protocol.AppendRequest(flood, uint64(10+i), protocol.OpAcquire,
			acquireArgs("sink", "s", fmt.Sprintf("/sink/%d", i), "MUTATES", 600000))
		if err != nil {
			t.Fatal(err)
		}
	}
	// The daemon stops reading the sink once its answers back up, so this
	// write may block; its outcome does not matter.
	go func() {
		sink.Conn.SetWriteDeadline(time.Now().Add(30 * time.Second))
		sink.Conn.Write(flood)
	}()
	raw, err := sink.Conn.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	queued := func() int {
		var n int
		raw.Control(func(fd uintptr) { n, _ = unix.IoctlGetInt(int(fd), unix.SIOCINQ) })
		return n
	}
	// Answers pile up unread until the daemon's writes to the sink would
	// block: well over 64 KiB of them.
	waitFor(t, "the sink's answers to back up", func() bool { return queued() > 64<<10 })

	from := b.ok.Load()
	waitFor(t, "the other client's changes to be answered", func() bool { return b.ok.Load() >= from+200 })
	if strings.Contains(d.Logs(), "dropping a connection") {
		t.Fatalf("the other client's changes were answered only once the sink was dropped (answers waited on its full socket); %d KiB unread", queued()>>10)
	}
	b.check(t)
}

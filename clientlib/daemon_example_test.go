package clientlib_test

import (
	"context"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"time"

	"github.com/klockd/klock/clientlib"
)

var (
	buildOnce sync.Once
	klockdBin string
)

// startKlockd makes the examples runnable: it builds ./cmd/klockd (once),
// starts it in memory on a private socket, points KLOCK_SOCKET at it and
// returns a function that stops it. The client library never imports the
// daemon; this runs the real binary, as a user would.
func startKlockd() (stop func()) {
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "klock-example-bin")
		if err != nil {
			log.Fatal(err)
		}
		clientlib.AtTestExit = append(clientlib.AtTestExit, func() { os.RemoveAll(dir) })
		klockdBin = filepath.Join(dir, "klockd")
		cmd := exec.Command("go", "build", "-o", klockdBin, "../cmd/klockd")
		if out, err := cmd.CombinedOutput(); err != nil {
			log.Fatalf("go build ./cmd/klockd: %v\n%s", err, out)
		}
	})
	dir, err := os.MkdirTemp("", "klkx")
	if err != nil {
		log.Fatal(err)
	}
	socket := filepath.Join(dir, "klockd.sock")
	cmd := exec.Command(klockdBin, "run", "--socket", socket, "--state-dir", "")
	if err := cmd.Start(); err != nil {
		log.Fatal(err)
	}
	stop = func() {
		cmd.Process.Kill()
		cmd.Wait()
		os.RemoveAll(dir)
		os.Unsetenv("KLOCK_SOCKET")
	}
	// Wait until the daemon answers.
	deadline := time.Now().Add(15 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		c, err := clientlib.Dial(ctx, clientlib.Options{Socket: socket, NoReconnect: true})
		if err == nil {
			_, err = c.Hello(ctx)
			c.Close()
		}
		cancel()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			stop()
			log.Fatalf("klockd did not answer on %s: %v", socket, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	os.Setenv("KLOCK_SOCKET", socket)
	return stop
}

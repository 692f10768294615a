package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime/trace"
	"strconv"
	"strings"
	"time"

	"github.com/klockd/klock/clientlib"
	"github.com/klockd/klock/cmd/internal/tracefile"
)

// The stall probe's stats client runs in a process of its own (this tool
// re-executed as "stats-probe"): in the tool's process its calls waited up
// to 0.4 s for the Go scheduler behind the hundred goroutines reading the
// waiters' grants, and for that process's collector, which is the tool
// measuring itself, not klockd (runtime traces of both, BENCHMARKS.md
// "Stall probe"). Alone, it waits only for klockd and the kernel.

// probeTrace, set by -trace, is where the probe process writes its own
// runtime trace (the file name with ".probe-N" added for repetition N).
var probeTrace string

// runStatsProbe is the probe process: it connects to -socket, says
// "ready" on stdout, then calls stats in a loop until its stdin ends, and
// writes each call's latency in nanoseconds, one a line.
func runStatsProbe(args []string) error {
	fs := flag.NewFlagSet("stats-probe", flag.ContinueOnError)
	socket := fs.String("socket", "", "klockd socket")
	traceOut := fs.String("trace", "", "write a runtime trace of the probe to this file")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ctx := context.Background()
	if *traceOut != "" {
		stop, err := tracefile.Start(*traceOut)
		if err != nil {
			return err
		}
		defer stop()
	}
	c, err := clientlib.Dial(ctx, clientlib.Options{Socket: *socket, NoReconnect: true})
	if err != nil {
		return err
	}
	defer c.Close()
	stop := make(chan struct{})
	go func() {
		io.Copy(io.Discard, os.Stdin)
		close(stop)
	}()
	out := bufio.NewWriter(os.Stdout)
	fmt.Fprintln(out, "ready")
	out.Flush()
	lat := make([]time.Duration, 0, 1<<16)
	for {
		select {
		case <-stop:
			for _, d := range lat {
				out.WriteString(strconv.FormatInt(int64(d), 10))
				out.WriteByte('\n')
			}
			return out.Flush()
		default:
		}
		t0 := time.Now()
		trace.WithRegion(ctx, "stats", func() { _, err = c.Stats(ctx) })
		if err != nil {
			return err
		}
		lat = append(lat, time.Since(t0))
	}
}

// statsProbe is a running probe process.
type statsProbe struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	out   *bufio.Reader
}

// startStatsProbe starts a probe process on socket and returns once it is
// connected and calling stats.
func startStatsProbe(socket string, rep int) (*statsProbe, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	args := []string{"stats-probe", "-socket", socket}
	if probeTrace != "" {
		args = append(args, "-trace", probeTrace+".probe-"+strconv.Itoa(rep))
	}
	p := &statsProbe{cmd: exec.Command(self, args...)}
	p.cmd.Stderr = os.Stderr
	if p.stdin, err = p.cmd.StdinPipe(); err != nil {
		return nil, err
	}
	stdout, err := p.cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	p.out = bufio.NewReader(stdout)
	if err := p.cmd.Start(); err != nil {
		return nil, err
	}
	if line, err := p.out.ReadString('\n'); err != nil || line != "ready\n" {
		p.stop()
		return nil, fmt.Errorf("klock-bench: stats probe did not start: %q %v", line, err)
	}
	return p, nil
}

// stop ends the probe and returns its latencies.
func (p *statsProbe) stop() ([]time.Duration, error) {
	p.stdin.Close()
	var lat []time.Duration
	var readErr error
	for {
		line, err := p.out.ReadString('\n')
		if err != nil {
			if !errors.Is(err, io.EOF) {
				readErr = err
			}
			break
		}
		n, err := strconv.ParseInt(strings.TrimSpace(line), 10, 64)
		if err != nil {
			readErr = fmt.Errorf("klock-bench: stats probe wrote %q", line)
			break
		}
		lat = append(lat, time.Duration(n))
	}
	if err := p.cmd.Wait(); err != nil {
		return lat, fmt.Errorf("klock-bench: stats probe: %w", err)
	}
	return lat, readErr
}

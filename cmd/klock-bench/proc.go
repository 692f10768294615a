package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// serverLogs, set by -server-logs, copies every server's output to the
// tool's stderr (to read a goroutine dump after SIGQUIT, say).
var serverLogs bool

// server is a child process listening on a Unix socket.
type server struct {
	name   string
	socket string
	cmd    *exec.Cmd
	out    *syncBuffer
	done   chan struct{} // closed when the process has exited
	err    error         // exit status; valid after done is closed
}

// startServer starts path with args and waits until socket accepts a
// connection, the process exits, or ctx ends.
func startServer(ctx context.Context, name, socket, path string, args ...string) (*server, error) {
	s := &server{name: name, socket: socket, out: &syncBuffer{}, done: make(chan struct{})}
	s.cmd = exec.Command(path, args...)
	var out io.Writer = s.out
	if serverLogs {
		out = io.MultiWriter(s.out, os.Stderr)
	}
	s.cmd.Stdout = out
	s.cmd.Stderr = out
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := s.cmd.Start(); err != nil {
		return nil, fmt.Errorf("klock-bench: start %s: %w", name, err)
	}
	go func() {
		s.err = s.cmd.Wait()
		close(s.done)
	}()
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	for delay := time.Millisecond; ; delay = min(2*delay, 100*time.Millisecond) {
		c, err := net.Dial("unix", socket)
		if err == nil {
			c.Close()
			fmt.Fprintf(os.Stderr, "klock-bench: %s listening on %s, pid %d\n", name, socket, s.cmd.Process.Pid)
			return s, nil
		}
		select {
		case <-s.done:
			return nil, fmt.Errorf("klock-bench: %s exited before listening (%v): %s", name, s.err, s.out.String())
		case <-ctx.Done():
			s.Close()
			return nil, fmt.Errorf("klock-bench: %s did not listen on %s: %w: %s", name, socket, ctx.Err(), s.out.String())
		case <-time.After(delay):
		}
	}
}

// RSS reports the process's resident memory (VmRSS) in bytes.
func (s *server) RSS() (int64, bool) {
	return processRSS(s.cmd.Process.Pid)
}

// Close asks the process to stop with SIGTERM and kills it after 5 s.
func (s *server) Close() error {
	select {
	case <-s.done:
		return nil
	default:
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(5 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.done
		return fmt.Errorf("klock-bench: %s ignored SIGTERM for 5s; killed", s.name)
	}
	var exit *exec.ExitError
	if s.err != nil && !(errors.As(s.err, &exit) && exit.Exited() && exit.ExitCode() == 0) {
		if exit != nil && !exit.Exited() {
			return nil // ended by our signal
		}
		return fmt.Errorf("klock-bench: %s: %v: %s", s.name, s.err, tail(s.out.String(), 500))
	}
	return nil
}

// processRSS reads VmRSS from /proc/PID/status.
func processRSS(pid int) (int64, bool) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), "VmRSS:")
		if !ok {
			continue
		}
		kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
		if err != nil {
			return 0, false
		}
		return kb * 1024, true
	}
	return 0, false
}

// tail returns at most the last n bytes of s.
func tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

// syncBuffer is a bytes.Buffer safe for the concurrent writes of a child's
// stdout and stderr.
type syncBuffer struct {
	mu sync.Mutex // guards b
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.b.Len() > 1<<20 {
		return len(p), nil // a chatty server must not grow the tool without bound
	}
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

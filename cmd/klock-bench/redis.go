package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// redisRelease is the standard compare-and-delete release of a Redis lock:
// delete the key only if it still holds our token.
const redisRelease = `if redis.call("get", KEYS[1]) == ARGV[1] then
	return redis.call("del", KEYS[1])
else
	return 0
end`

// redisTTL is the lease lifetime in the loop; long enough never to expire
// during a cell.
const redisTTL = 30 * time.Second

// redisBackend is a real redis-server on a Unix socket only, either without
// persistence or with an append-only file fsynced every second.
type redisBackend struct {
	name    string
	args    []string
	dir     string
	srv     *server
	release *redis.Script
}

func newRedisBackend(ctx context.Context, durable bool) (Backend, error) {
	bin, err := findRedis()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "klock-bench-redis-")
	if err != nil {
		return nil, err
	}
	socket := filepath.Join(dir, "redis.sock")
	b := &redisBackend{name: "redis", dir: dir, release: redis.NewScript(redisRelease)}
	b.args = []string{"--port", "0", "--unixsocket", socket, "--unixsocketperm", "700",
		"--dir", dir, "--save", "", "--loglevel", "warning"}
	if durable {
		b.name = "redis-aof"
		b.args = append(b.args, "--appendonly", "yes", "--appendfsync", "everysec")
	} else {
		b.args = append(b.args, "--appendonly", "no")
	}
	if b.srv, err = startServer(ctx, b.name, socket, bin, b.args...); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	return b, nil
}

// findRedis looks for redis-server on PATH, then in the Debian locations.
func findRedis() (string, error) {
	if p, err := exec.LookPath("redis-server"); err == nil {
		return p, nil
	}
	for _, p := range []string{"/usr/bin/redis-server", "/usr/sbin/redis-server", "/usr/local/bin/redis-server"} {
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", errors.New("klock-bench: redis-server not found on PATH or in /usr/bin; install it (apt-get install -y redis-server) or leave redis out of -backends")
}

func (b *redisBackend) Name() string { return b.name }

func (b *redisBackend) Settings() string {
	v, _ := exec.Command(b.srv.cmd.Path, "--version").Output()
	return fmt.Sprintf("%s %s; client go-redis/v9, pool of max(W,10) connections; acquire SET key token NX PX 30000, release compare-and-delete Lua via EVALSHA",
		trimSpace(string(v)), quoteArgs(b.args))
}

func (b *redisBackend) RSS() (int64, bool) { return b.srv.RSS() }

func (b *redisBackend) client(w int) *redis.Client {
	return redis.NewClient(&redis.Options{
		Network:      "unix",
		Addr:         b.srv.socket,
		PoolSize:     max(w, 10),
		MinIdleConns: w,
	})
}

func (b *redisBackend) Clients(ctx context.Context, w int) ([]Locker, io.Closer, error) {
	c := b.client(w)
	if err := b.release.Load(ctx, c).Err(); err != nil {
		c.Close()
		return nil, nil, fmt.Errorf("klock-bench: redis script load: %w", err)
	}
	ls := make([]Locker, w)
	for i := range ls {
		ls[i] = &redisClient{c: c, release: b.release, prefix: "w" + strconv.Itoa(i) + "-"}
	}
	return ls, c, nil
}

// Hold sets n keys with a one-hour expiry, pipelined in batches.
func (b *redisBackend) Hold(ctx context.Context, n int) error {
	c := b.client(1)
	defer c.Close()
	const batch = 1000
	for start := 0; start < n; start += batch {
		p := c.Pipeline()
		for i := start; i < min(n, start+batch); i++ {
			p.SetNX(ctx, "held:"+strconv.Itoa(i), "holder-"+strconv.Itoa(i), time.Hour)
		}
		if _, err := p.Exec(ctx); err != nil {
			return fmt.Errorf("klock-bench: redis hold: %w", err)
		}
	}
	got, err := c.DBSize(ctx).Result()
	if err != nil {
		return err
	}
	if got < int64(n) {
		return fmt.Errorf("klock-bench: redis holds %d keys, want %d", got, n)
	}
	return nil
}

// Release deletes the held keys, as klock's end_session releases its held
// leases: FLUSHALL, the cheapest way Redis has.
func (b *redisBackend) Release(ctx context.Context) (time.Duration, error) {
	c := b.client(1)
	defer c.Close()
	t0 := time.Now()
	err := c.FlushAll(ctx).Err()
	return time.Since(t0), err
}

func (b *redisBackend) Close() error {
	err := b.srv.Close()
	os.RemoveAll(b.dir)
	return err
}

// redisClient is one worker on the shared pool.
type redisClient struct {
	c       *redis.Client
	release *redis.Script
	prefix  string
	n       uint64
}

func (c *redisClient) Acquire(ctx context.Context, resource string) (string, Outcome, error) {
	c.n++
	token := c.prefix + strconv.FormatUint(c.n, 10)
	ok, err := c.c.SetNX(ctx, resource, token, redisTTL).Result()
	switch {
	case err != nil:
		return "", DeniedOther, fmt.Errorf("klock-bench: redis set: %w", err)
	case !ok:
		return "", DeniedBusy, nil
	}
	return token, Granted, nil
}

func (c *redisClient) Release(ctx context.Context, resource, token string) error {
	n, err := c.release.EvalSha(ctx, c.c, []string{resource}, token).Int()
	if err != nil {
		return fmt.Errorf("klock-bench: redis release: %w", err)
	}
	if n != 1 {
		return fmt.Errorf("klock-bench: redis release of %s deleted %d keys", resource, n)
	}
	return nil
}

package cluster

import (
	"fmt"
	"strings"
)

// keys builds the etcd keys of one cluster under its prefix.
type keys struct{ prefix string }

func newKeys(prefix string) keys {
	if !strings.HasSuffix(prefix, "/") {
		prefix += "/"
	}
	return keys{prefix: prefix}
}

func (k keys) meta() string            { return k.prefix + "meta" }
func (k keys) nodes() string           { return k.prefix + "nodes/" }
func (k keys) node(id string) string   { return k.prefix + "nodes/" + id }
func (k keys) leader() string          { return k.prefix + "leader" }
func (k keys) tail() string            { return k.prefix + "tail" }
func (k keys) log() string             { return k.prefix + "log/" }
func (k keys) snapshotHead() string    { return k.prefix + "snapshot" }
func (k keys) snapshotDir() string     { return k.prefix + "snapshot/" }
func (k keys) chunks(rev int64) string { return fmt.Sprintf("%ssnapshot/%016x/", k.prefix, rev) }
func (k keys) chunk(rev int64, n int) string {
	return fmt.Sprintf("%ssnapshot/%016x/%06d", k.prefix, rev, n)
}

// batch is the key of one batch of commands: its owner's id and a
// sequence number of that owner, so keys never repeat.
func (k keys) batch(owner string, seq uint64) string {
	return fmt.Sprintf("%slog/%s/%016x", k.prefix, owner, seq)
}

// rangeEnd returns the end of the key range of every key starting with p.
func rangeEnd(p string) string {
	b := []byte(p)
	for i := len(b) - 1; i >= 0; i-- {
		if b[i] < 0xff {
			b[i]++
			return string(b[:i+1])
		}
	}
	return "\x00"
}

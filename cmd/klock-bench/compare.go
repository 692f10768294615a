package main

import (
	"context"
	"errors"
	"strings"
)

// compareBinary is one -compare entry: the local klock back ends run a
// second time on another klockd binary, as back ends named NAME-TAG, so
// that two builds are measured side by side in one run.
type compareBinary struct {
	tag, path string
}

// parseCompare parses a -compare value, TAG=PATH.
func parseCompare(v string) (compareBinary, error) {
	tag, path, ok := strings.Cut(v, "=")
	if !ok || tag == "" || path == "" || strings.ContainsAny(tag, ", ") {
		return compareBinary{}, errors.New("want TAG=PATH, e.g. before=/tmp/klockd-before")
	}
	return compareBinary{tag: tag, path: path}, nil
}

// localKlock names the back ends that start one local klockd, which
// -compare can run on another binary.
var localKlock = map[string]bool{
	"klock": true, "klock-conn": true, "klock-never": true, "klock-everysec": true,
	"klock-always": true, "klock-conn-everysec": true,
}

// withCompared returns names with, right after each local klock back end,
// its NAME-TAG twin for every -compare entry.
func withCompared(names []string, cmp []compareBinary) []string {
	var out []string
	for _, n := range names {
		out = append(out, n)
		if localKlock[n] {
			for _, c := range cmp {
				out = append(out, n+"-"+c.tag)
			}
		}
	}
	return out
}

// backendMaker returns the constructor of back end name: one of
// backendMakers, or a -compare twin, which is its base back end started
// from the twin's binary.
func backendMaker(cfg config, name string) func(context.Context, *runEnv) (Backend, error) {
	if mk, ok := backendMakers[name]; ok {
		return mk
	}
	for _, c := range cfg.compare {
		base, ok := strings.CutSuffix(name, "-"+c.tag)
		if !ok || !localKlock[base] {
			continue
		}
		return func(ctx context.Context, env *runEnv) (Backend, error) {
			twin := *env
			twin.cfg.klockd = c.path
			b, err := backendMakers[base](ctx, &twin)
			if kb, ok := b.(*klockBackend); ok {
				kb.name, kb.bin = name, c.path
			}
			return b, err
		}
	}
	return nil
}

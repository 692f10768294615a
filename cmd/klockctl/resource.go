package main

import (
	"fmt"
	"path/filepath"
	"slices"
	"strings"

	"github.com/klockd/klock/clientlib"
)

// resourceTypes are the resource types of protocol/README.md "Vocabulary", upper case.
var resourceTypes = []string{"FILE", "SYMBOL", "API_ENDPOINT", "DATABASE_TABLE", "CONFIG_KEY"}

// predicates are the predicates of protocol/README.md "Vocabulary", upper case.
var predicates = []string{"PROVIDES", "CONSUMES", "MUTATES", "DELETES", "DEPENDS_ON", "RENAMES"}

// resource is one resource named on the command line.
type resource struct {
	Type string // upper case, one of resourceTypes
	Path string
	// ClientPath is a FILE path as named (absolute, cleaned) when the
	// worktree rule keyed it as another Path; "" otherwise.
	ClientPath string
}

// Key returns the resource as the daemon names it, TYPE:path.
func (r resource) Key() string { return r.Type + ":" + r.Path }

// parseResource parses a resource argument. TYPE:path names a resource of
// that type (TYPE case-insensitive); anything without a TYPE: prefix is a
// FILE. A FILE path goes through the one rule every client follows
// (clientlib.ResolveFile): made absolute against cwd and cleaned, keeping a
// trailing '/', and mapped from a linked git worktree to the main one, so
// that shells in different directories and worktrees lock the same key.
// Other types' paths are sent as written.
func parseResource(arg, cwd string) (resource, error) {
	if arg == "" {
		return resource{}, fmt.Errorf("klock: empty resource")
	}
	typ, path := "FILE", arg
	if prefix, rest, ok := strings.Cut(arg, ":"); ok && isTypeName(prefix) {
		typ, path = strings.ToUpper(prefix), rest
		if !slices.Contains(resourceTypes, typ) {
			return resource{}, fmt.Errorf("klock: unknown resource type %q in %q; allowed: %s (write ./%s for a file)",
				prefix, arg, strings.Join(resourceTypes, ", "), arg)
		}
		if path == "" {
			return resource{}, fmt.Errorf("klock: resource %q has an empty path", arg)
		}
	}
	if typ != "FILE" {
		return resource{Type: typ, Path: path}, nil
	}
	if !filepath.IsAbs(path) && cwd == "" {
		return resource{}, fmt.Errorf("klock: relative path %q and no working directory to resolve it", path)
	}
	fp, err := clientlib.ResolveFile(path, clientlib.ResolveOptions{Dir: cwd})
	if err != nil {
		return resource{}, err
	}
	r := resource{Type: "FILE", Path: fp.Key}
	if fp.Path != fp.Key {
		r.ClientPath = fp.Path
	}
	return r, nil
}

// parseResources parses every argument with parseResource and rejects a
// resource named twice, which acquire_many would reject less clearly.
func parseResources(args []string, cwd string) ([]resource, error) {
	if len(args) == 0 {
		return nil, fmt.Errorf("klock: no RESOURCE given")
	}
	out := make([]resource, 0, len(args))
	seen := make(map[string]bool, len(args))
	for _, a := range args {
		r, err := parseResource(a, cwd)
		if err != nil {
			return nil, err
		}
		if seen[r.Key()] {
			return nil, fmt.Errorf("klock: resource %s given twice", r.Key())
		}
		seen[r.Key()] = true
		out = append(out, r)
	}
	return out, nil
}

// isTypeName reports whether s looks like a resource type name (letters and
// underscores), as opposed to the start of a path such as "./a:b" or "/x:y".
func isTypeName(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '_') {
			return false
		}
	}
	return true
}

// parsePredicate returns the predicate upper-cased, or an error listing the
// allowed ones.
func parsePredicate(s string) (string, error) {
	p := strings.ToUpper(strings.TrimSpace(s))
	if !slices.Contains(predicates, p) {
		return "", fmt.Errorf("klock: unknown predicate %q; allowed: %s", s, strings.Join(predicates, ", "))
	}
	return p, nil
}

package main

import (
	"fmt"
	"path/filepath"
	"slices"
	"strings"
)

// resourceTypes are the resource types of PROTOCOL.md "Vocabulary", upper case.
var resourceTypes = []string{"FILE", "SYMBOL", "API_ENDPOINT", "DATABASE_TABLE", "CONFIG_KEY"}

// predicates are the predicates of PROTOCOL.md "Vocabulary", upper case.
var predicates = []string{"PROVIDES", "CONSUMES", "MUTATES", "DELETES", "DEPENDS_ON", "RENAMES"}

// resource is one resource named on the command line.
type resource struct {
	Type string // upper case, one of resourceTypes
	Path string
}

// Key returns the resource as the daemon names it, TYPE:path. The daemon
// cleans FILE paths; the key shown here is what the user asked for.
func (r resource) Key() string { return r.Type + ":" + r.Path }

// parseResource parses a resource argument. TYPE:path names a resource of
// that type (TYPE case-insensitive) and path is sent as written. Anything
// without a TYPE: prefix is a file on this machine: it is made absolute
// against cwd and cleaned, the way flock(1) names a file, so that two shells
// in different directories lock the same file.
func parseResource(arg, cwd string) (resource, error) {
	if arg == "" {
		return resource{}, fmt.Errorf("klock: empty resource")
	}
	if prefix, path, ok := strings.Cut(arg, ":"); ok && isTypeName(prefix) {
		typ := strings.ToUpper(prefix)
		if !slices.Contains(resourceTypes, typ) {
			return resource{}, fmt.Errorf("klock: unknown resource type %q in %q; allowed: %s (write ./%s for a file)",
				prefix, arg, strings.Join(resourceTypes, ", "), arg)
		}
		if path == "" {
			return resource{}, fmt.Errorf("klock: resource %q has an empty path", arg)
		}
		return resource{Type: typ, Path: path}, nil
	}
	path := arg
	if !filepath.IsAbs(path) {
		if cwd == "" {
			return resource{}, fmt.Errorf("klock: relative path %q and no working directory to resolve it", arg)
		}
		path = filepath.Join(cwd, path)
	}
	return resource{Type: "FILE", Path: filepath.Clean(path)}, nil
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

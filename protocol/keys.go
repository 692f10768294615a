package protocol

import (
	"path"
	"strings"
)

// CleanFilePath cleans a FILE resource_path the way klockd keys it:
// path.Clean's rules ("/src/./a/../b" is "/src/b"), except that a path
// ending in '/' keeps one trailing '/', because that slash is what makes
// the key a subtree ("/src//" is "/src/"; "/src/.." is "/"). It does not
// make a relative path absolute: that needs the client's working
// directory, which only the client knows.
func CleanFilePath(p string) string {
	c := path.Clean(p)
	if strings.HasSuffix(p, "/") && !strings.HasSuffix(c, "/") {
		c += "/"
	}
	return c
}

// IsSubtree reports whether a resource path, or a resource key
// ("TYPE:path"), names a subtree: it ends in '/'. A subtree covers itself
// and every key of the same type that starts with it.
func IsSubtree(p string) bool { return strings.HasSuffix(p, "/") }

// Covers reports whether a lease on resource key a ("TYPE:path", as klockd
// spells it) covers key b: the keys are equal, or a is a subtree and b
// starts with it. "FILE:/src/" covers "FILE:/src/x/y.ts" and "FILE:/src/x/",
// but not "FILE:/srcfoo.ts" nor "FILE:/src".
func Covers(a, b string) bool {
	return a == b || IsSubtree(a) && strings.HasPrefix(b, a)
}

// Overlaps reports whether leases on keys a and b can conflict: one covers
// the other.
func Overlaps(a, b string) bool { return Covers(a, b) || Covers(b, a) }

package engine

import (
	"strings"
	"testing"

	"github.com/klockd/klock/protocol"
	"github.com/stretchr/testify/require"
)

func TestParsePredicate(t *testing.T) {
	for p := Provides; p <= Renames; p++ {
		for _, s := range []string{p.String(), lower(p.String())} {
			got, err := ParsePredicate(s)
			require.NoError(t, err)
			require.Equal(t, p, got)
		}
	}
	_, err := ParsePredicate("FOO")
	requireCode(t, err, protocol.CodeInvalidArgument,
		`klock: predicate "FOO" is not one of PROVIDES, CONSUMES, MUTATES, DELETES, DEPENDS_ON, RENAMES`)
	_, err = ParsePredicate("")
	requireCode(t, err, protocol.CodeInvalidArgument, "predicate")
	require.Equal(t, "INVALID", Predicate(0).String())
}

func TestParseResourceType(t *testing.T) {
	for r := File; r <= ConfigKey; r++ {
		for _, s := range []string{r.String(), lower(r.String())} {
			got, err := ParseResourceType(s)
			require.NoError(t, err)
			require.Equal(t, r, got)
		}
	}
	_, err := ParseResourceType("DIRECTORY")
	requireCode(t, err, protocol.CodeInvalidArgument,
		`resource_type "DIRECTORY" is not one of FILE, SYMBOL, API_ENDPOINT, DATABASE_TABLE, CONFIG_KEY`)
	require.Equal(t, "INVALID", ResourceType(9).String())
}

func lower(s string) string {
	b := []byte(s)
	for i, c := range b {
		if c >= 'A' && c <= 'Z' {
			b[i] = c + 32
		}
	}
	return string(b)
}

// matrix is DESIGN.md's conflict matrix, as written there.
var matrix = map[Predicate]string{
	//          PRO CON MUT DEL DEP REN
	Provides:  "✗✓✗✗✓✗",
	Consumes:  "✓✓✗✗✓✗",
	Mutates:   "✗✗✗✗✗✗",
	Deletes:   "✗✗✗✗✗✗",
	DependsOn: "✓✓✗✗✓✗",
	Renames:   "✗✗✗✗✗✗",
}

func coexist(p, q Predicate) bool { return []rune(matrix[p])[q-1] == '✓' }

func TestConflictMatrix(t *testing.T) {
	for p := Provides; p <= Renames; p++ {
		for q := Provides; q <= Renames; q++ {
			require.Equalf(t, !coexist(p, q), Conflicts(p, q), "Conflicts(%s, %s)", p, q)
			require.Equalf(t, Conflicts(p, q), Conflicts(q, p), "symmetry %s %s", p, q)
		}
	}
	require.True(t, Conflicts(0, Consumes))
}

func TestResourceKey(t *testing.T) {
	cases := []struct{ typ, path, want string }{
		{"FILE", "/src/./a/../auth.ts", "FILE:/src/auth.ts"},
		{"file", "/src//x/", "FILE:/src/x/"}, // the trailing '/' makes a subtree
		{"FILE", "/src/x/./", "FILE:/src/x/"},
		{"FILE", "/src/x/.", "FILE:/src/x"},
		{"FILE", "/src/..", "FILE:/"},
		{"FILE", "/", "FILE:/"},
		{"FILE", "//", "FILE:/"},
		{"SYMBOL", "pkg/", "SYMBOL:pkg/"},
		{"SYMBOL", "pkg.Func/./x", "SYMBOL:pkg.Func/./x"},
		{"api_endpoint", "GET /users", "API_ENDPOINT:GET /users"},
		{"DATABASE_TABLE", "users", "DATABASE_TABLE:users"},
		{"CONFIG_KEY", "a.b", "CONFIG_KEY:a.b"},
	}
	for _, c := range cases {
		got, err := ResourceKey(c.typ, c.path)
		require.NoError(t, err)
		require.Equalf(t, c.want, got, "ResourceKey(%q, %q)", c.typ, c.path)
	}
	bad := []struct{ typ, path, want string }{
		{"DIR", "/x", "resource_type"},
		{"FILE", "", "resource_path is required"},
		{"FILE", string(make([]byte, 4097)), "resource_path"},
		{"FILE", "/a\x00b", "control character"},
		{"FILE", "/a\nb", "control character"},
		{"FILE", "/a\u0085b", "control character"},
		{"FILE", "/a\xffb", "UTF-8"},
		{"FILE", "src/a.ts", `resource_path "src/a.ts" is relative; a FILE path must be absolute`},
		{"FILE", "./a.ts", "klockd cannot know"},
		{"file", "..", "is relative"},
		{"FILE", strings.Repeat("/a", 65), "resource_path has 65 levels (a '/' before each); at most 64 are allowed"},
		{"SYMBOL", strings.Repeat("a/", 66), "has 65 levels"},
	}
	for _, c := range bad {
		_, err := ResourceKey(c.typ, c.path)
		requireCode(t, err, protocol.CodeInvalidArgument, c.want)
	}
	long := make([]byte, 4096)
	for i := range long {
		long[i] = 'a'
	}
	_, err := ResourceKey("SYMBOL", string(long))
	require.NoError(t, err)
	for _, p := range []string{strings.Repeat("/a", 64), strings.Repeat("/a", 64) + "/", strings.Repeat("/a", 64) + "/./b/.."} {
		_, err = ResourceKey("FILE", p) // 64 levels, counted after cleaning
		require.NoError(t, err)
	}
	// Other types may be relative: only FILE paths name places on disk.
	got, err := ResourceKey("CONFIG_KEY", "db/url")
	require.NoError(t, err)
	require.Equal(t, "CONFIG_KEY:db/url", got)
}

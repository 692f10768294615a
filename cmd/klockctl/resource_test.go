package main

import (
	"strings"
	"testing"
)

func TestParseResource(t *testing.T) {
	tests := []struct {
		arg     string
		want    resource
		wantErr string
	}{
		{arg: "FILE:/src/auth.ts", want: resource{Type: "FILE", Path: "/src/auth.ts"}},
		{arg: "file:/src/auth.ts", want: resource{Type: "FILE", Path: "/src/auth.ts"}},
		{arg: "FILE:src/./a.go", want: resource{Type: "FILE", Path: "/home/u/proj/src/a.go"}}, // typed or not, one rule
		{arg: "FILE:/src/", want: resource{Type: "FILE", Path: "/src/"}},                      // a subtree keeps its '/'
		{arg: "src//", want: resource{Type: "FILE", Path: "/home/u/proj/src/"}},
		{arg: "SYMBOL:a/../b", want: resource{Type: "SYMBOL", Path: "a/../b"}}, // other types: as written
		{arg: "symbol:auth.Login", want: resource{Type: "SYMBOL", Path: "auth.Login"}},
		{arg: "API_ENDPOINT:GET /users/:id", want: resource{Type: "API_ENDPOINT", Path: "GET /users/:id"}},
		{arg: "database_table:users", want: resource{Type: "DATABASE_TABLE", Path: "users"}},
		{arg: "CONFIG_KEY:db.url", want: resource{Type: "CONFIG_KEY", Path: "db.url"}},
		{arg: "/src/auth.ts", want: resource{Type: "FILE", Path: "/src/auth.ts"}},
		{arg: "/src/../src/./auth.ts", want: resource{Type: "FILE", Path: "/src/auth.ts"}},
		{arg: "a.go", want: resource{Type: "FILE", Path: "/home/u/proj/a.go"}},
		{arg: "../other/b.go", want: resource{Type: "FILE", Path: "/home/u/other/b.go"}},
		{arg: "./notes:draft", want: resource{Type: "FILE", Path: "/home/u/proj/notes:draft"}},
		{arg: "/x/y:z", want: resource{Type: "FILE", Path: "/x/y:z"}},
		{arg: "v1.2:x", want: resource{Type: "FILE", Path: "/home/u/proj/v1.2:x"}}, // prefix is not a type name
		{arg: "", wantErr: "empty resource"},
		{arg: "FILE:", wantErr: "empty path"},
		{arg: "SYMBL:auth", wantErr: `unknown resource type "SYMBL"`},
		{arg: "notes:draft", wantErr: "write ./notes:draft for a file"},
	}
	for _, tt := range tests {
		got, err := parseResource(tt.arg, "/home/u/proj")
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("parseResource(%q) = %v, %v; want error containing %q", tt.arg, got, err, tt.wantErr)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("parseResource(%q) = %v, %v; want %v", tt.arg, got, err, tt.want)
		}
	}
}

func TestParseResourceRelativeWithoutCwd(t *testing.T) {
	if _, err := parseResource("a.go", ""); err == nil {
		t.Errorf(`parseResource("a.go", "") = nil error; want an error: nothing to resolve against`)
	}
	if r, err := parseResource("/a.go", ""); err != nil || r.Key() != "FILE:/a.go" {
		t.Errorf(`parseResource("/a.go", "") = %v, %v; want FILE:/a.go`, r, err)
	}
}

func TestParseResources(t *testing.T) {
	got, err := parseResources([]string{"b.go", "SYMBOL:x", "/a.go"}, "/p")
	if err != nil {
		t.Fatalf("parseResources: %v", err)
	}
	want := []string{"FILE:/p/b.go", "SYMBOL:x", "FILE:/a.go"}
	for i, r := range got {
		if r.Key() != want[i] {
			t.Errorf("resource %d = %s; want %s (order kept)", i, r.Key(), want[i])
		}
	}
	if _, err := parseResources([]string{"a.go", "/p/a.go"}, "/p"); err == nil || !strings.Contains(err.Error(), "twice") {
		t.Errorf("parseResources(same file twice) = %v; want a 'given twice' error", err)
	}
	if _, err := parseResources(nil, "/p"); err == nil {
		t.Errorf("parseResources(nil) = nil error; want 'no RESOURCE'")
	}
}

func TestParsePredicate(t *testing.T) {
	for _, in := range []string{"mutates", "MUTATES", " Consumes ", "depends_on", "RENAMES", "provides", "deletes"} {
		got, err := parsePredicate(in)
		if err != nil || got != strings.ToUpper(strings.TrimSpace(in)) {
			t.Errorf("parsePredicate(%q) = %q, %v; want %q", in, got, err, strings.ToUpper(strings.TrimSpace(in)))
		}
	}
	for _, in := range []string{"", "READS", "depends-on"} {
		if got, err := parsePredicate(in); err == nil {
			t.Errorf("parsePredicate(%q) = %q; want an error listing the predicates", in, got)
		} else if !strings.Contains(err.Error(), "DEPENDS_ON") {
			t.Errorf("parsePredicate(%q) error %q does not list the allowed predicates", in, err)
		}
	}
}

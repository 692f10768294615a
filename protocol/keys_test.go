package protocol

import "testing"

func TestCleanFilePath(t *testing.T) {
	tests := []struct{ in, want string }{
		{"/src/a.ts", "/src/a.ts"},
		{"/src/./a/../auth.ts", "/src/auth.ts"},
		{"/src/", "/src/"},
		{"/src//", "/src/"},
		{"/src/./", "/src/"},
		{"/src/x/../", "/src/"},
		{"/src/.", "/src"}, // no trailing '/': a plain key
		{"/src/..", "/"},
		{"/..", "/"},
		{"/", "/"},
		{"//", "/"},
		{"rel/../x/", "x/"}, // cleaned, not made absolute
	}
	for _, tt := range tests {
		if got := CleanFilePath(tt.in); got != tt.want {
			t.Errorf("CleanFilePath(%q) = %q; want %q", tt.in, got, tt.want)
		}
	}
}

func TestCovers(t *testing.T) {
	tests := []struct {
		a, b   string
		covers bool
	}{
		{"FILE:/src/", "FILE:/src/", true},
		{"FILE:/src/", "FILE:/src/a.ts", true},
		{"FILE:/src/", "FILE:/src/x/y.ts", true},
		{"FILE:/src/", "FILE:/src/x/", true},
		{"FILE:/src/", "FILE:/srcfoo.ts", false},
		{"FILE:/src/", "FILE:/src", false},
		{"FILE:/src", "FILE:/src/a.ts", false}, // a plain key covers only itself
		{"FILE:/src/a.ts", "FILE:/src/", false},
		{"FILE:/", "FILE:/anything/at/all", true},
		{"FILE:/", "SYMBOL:/x", false}, // another type
		{"SYMBOL:pkg/", "SYMBOL:pkg/Func", true},
		{"API_ENDPOINT:GET /users/", "API_ENDPOINT:GET /users/:id", true},
	}
	for _, tt := range tests {
		if got := Covers(tt.a, tt.b); got != tt.covers {
			t.Errorf("Covers(%q, %q) = %v; want %v", tt.a, tt.b, got, tt.covers)
		}
		if got, want := Overlaps(tt.a, tt.b), tt.covers || Covers(tt.b, tt.a); got != want {
			t.Errorf("Overlaps(%q, %q) = %v; want %v", tt.a, tt.b, got, want)
		}
		if tt.covers && !Overlaps(tt.b, tt.a) {
			t.Errorf("Overlaps(%q, %q) = false; want true (symmetric)", tt.b, tt.a)
		}
	}
}

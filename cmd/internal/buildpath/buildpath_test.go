package buildpath

import "testing"

func TestTemporary(t *testing.T) {
	t.Setenv("TMPDIR", "/tmp")
	t.Setenv("GOCACHE", "/home/u/.cache/go-build")
	for _, tc := range []struct {
		exe  string
		want bool
	}{
		{"/tmp/go-build1234/b001/exe/klockctl", true},
		{"/home/u/.cache/go-build/ab/abcdef-d/klockctl", true},
		{"/tmp/klockctl", true},
		{"/var/tmp/x/klockctl", true},
		{"/usr/local/bin/klockctl", false},
		{"/home/u/go/bin/klockctl", false},
		{"/tmpfoo/klockctl", false},
	} {
		if why, got := Temporary(tc.exe); got != tc.want || got != (why != "") {
			t.Errorf("Temporary(%q) = %q, %v; want %v", tc.exe, why, got, tc.want)
		}
	}
}

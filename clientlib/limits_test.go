package clientlib

import (
	"strings"
	"testing"

	"github.com/klockd/klock/protocol"
)

// TestCheckDepthKeysFirst: the client counts a path's levels as klockd
// does, on the key: a FILE path after cleaning (so "./" detours do not
// count), any other type as given; and names the intent it refuses.
func TestCheckDepthKeysFirst(t *testing.T) {
	detour := "/src" + strings.Repeat("/.", protocol.MaxPathDepth) + "/a.go" // 66 '/', 2 levels once cleaned
	deep := strings.Repeat("/d", protocol.MaxPathDepth+1)
	for _, tc := range []struct {
		typ, path string
		want      string // "" = accepted
	}{
		{"FILE", detour, ""},
		{"file", detour, ""},
		{"SYMBOL", detour, "klock: resource_path has 66 levels (a '/' before each); at most 64 are allowed"},
		{"FILE", deep, "klock: resource_path has 65 levels (a '/' before each); at most 64 are allowed"},
		{"FILE", deep[:len(deep)-2] + "/", ""}, // 64 levels and a subtree's trailing '/'
	} {
		a := protocol.Args{ResourceType: tc.typ, ResourcePath: tc.path}
		a.Set(protocol.ArgResourceType | protocol.ArgResourcePath)
		err := checkArgs(&a)
		got := ""
		if e, ok := err.(*Error); ok {
			got = e.Message
		} else if err != nil {
			got = err.Error()
		}
		if got != tc.want {
			t.Errorf("%s %.40q...: %q; want %q", tc.typ, tc.path, got, tc.want)
		}
	}
	many := protocol.Args{Intents: []protocol.Intent{{ResourceType: "FILE", ResourcePath: "/x"}, {ResourceType: "API_ENDPOINT", ResourcePath: deep}}}
	many.Set(protocol.ArgIntents)
	if err := checkArgs(&many); err == nil || !strings.Contains(err.Error(), "intents[1].resource_path has 65 levels") {
		t.Errorf("acquire_many with a deep second intent: %v; want intents[1] named", err)
	}
}

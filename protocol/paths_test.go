package protocol

import (
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"testing"
)

func TestUserSockets(t *testing.T) {
	runUser := t.TempDir()
	me := os.Geteuid()
	tmp := "/tmp/klock-" + strconv.Itoa(me) + "/klockd.sock"
	if got := userSockets(runUser, me); !reflect.DeepEqual(got, []string{tmp}) {
		t.Errorf("userSockets without %s/%d = %q; want only %q", runUser, me, got, tmp)
	}
	dir := filepath.Join(runUser, strconv.Itoa(me))
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	want := []string{dir + "/klock/klockd.sock", tmp}
	if got := userSockets(runUser, me); !reflect.DeepEqual(got, want) {
		t.Errorf("userSockets with %s = %q; want %q", dir, got, want)
	}
	// A runtime directory owned by someone else is not the user's.
	other := me + 1
	if err := os.Mkdir(filepath.Join(runUser, strconv.Itoa(other)), 0o700); err != nil {
		t.Fatal(err)
	}
	if got, want := userSockets(runUser, other), []string{"/tmp/klock-" + strconv.Itoa(other) + "/klockd.sock"}; !reflect.DeepEqual(got, want) {
		t.Errorf("userSockets(%d) with a runtime directory owned by uid %d = %q; want %q", other, me, got, want)
	}
}

func TestUserSocketsIgnoreXDGRuntimeDir(t *testing.T) {
	t.Setenv("XDG_RUNTIME_DIR", "")
	without := UserSockets(1234)
	t.Setenv("XDG_RUNTIME_DIR", "/run/user/1234")
	if with := UserSockets(1234); !reflect.DeepEqual(with, without) {
		t.Errorf("UserSockets(1234) = %q with XDG_RUNTIME_DIR, %q without; want the same", with, without)
	}
}

func TestDefaultPaths(t *testing.T) {
	if os.Geteuid() == 0 {
		if got := DefaultSocket(); got != SystemSocket {
			t.Errorf("DefaultSocket() as root = %q; want %q", got, SystemSocket)
		}
		if got := DefaultStateDir(); got != SystemStateDir {
			t.Errorf("DefaultStateDir() as root = %q; want %q", got, SystemStateDir)
		}
	} else if got, want := DefaultSocket(), UserSockets(os.Geteuid())[0]; got != want {
		t.Errorf("DefaultSocket() = %q; want %q", got, want)
	}
	t.Setenv("XDG_STATE_HOME", "/x/state")
	if got := UserStateDir(); got != "/x/state/klock" {
		t.Errorf("UserStateDir() with XDG_STATE_HOME = %q; want /x/state/klock", got)
	}
	t.Setenv("XDG_STATE_HOME", "relative")
	t.Setenv("HOME", "/home/u")
	if got := UserStateDir(); got != "/home/u/.local/state/klock" {
		t.Errorf("UserStateDir() = %q; want /home/u/.local/state/klock", got)
	}
	t.Setenv("HOME", "")
	if got, want := UserStateDir(), "/tmp/klock-state-"+strconv.Itoa(os.Geteuid()); got != want {
		t.Errorf("UserStateDir() without a home = %q; want %q", got, want)
	}
}

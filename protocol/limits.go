package protocol

import (
	"fmt"
	"strings"
	"unicode/utf8"
)

// Limits on arguments (protocol/README.md "Vocabulary" and "More limits"),
// shared by the daemon, which enforces them, and the Go client, which
// checks them before sending so that a caller hears of the argument it got
// wrong, with the daemon's own words, rather than of a frame too large.
const (
	MaxIDLen     = 256             // agent_id, session_id, lease_id: bytes
	MaxPathLen   = 4096            // resource_path, client_path: bytes
	MaxPathDepth = 64              // resource_path: '/' separators (each ends a subtree key above the path)
	MaxIdemLen   = 64              // idem: bytes
	MaxPrefixLen = MaxPathLen + 32 // resource_prefix: a type name, ':' and a path
	DefaultLimit = 1000            // list_leases and list_agents limit when 0
	MaxLimit     = 10000           // the largest list limit
)

// CheckText returns the INVALID_ARGUMENT message for the string argument
// name when s is not 1..max bytes of UTF-8 free of control characters
// (Unicode category Cc: C0, DEL and C1), or "" when s is fine.
func CheckText(name, s string, max int) string {
	return checkText(name, s, max, asciiPrefix(s))
}

// checkText is CheckText, told that s[:from] is printable ASCII.
func checkText(name, s string, max, from int) string {
	if len(s) == 0 {
		return fmt.Sprintf("klock: %s is required (1..%d bytes)", name, max)
	}
	if len(s) > max {
		return fmt.Sprintf("klock: %s is %d bytes; at most %d are allowed", name, len(s), max)
	}
	for i := from; i < len(s); i++ {
		if b := s[i]; b < 0x20 || b == 0x7f {
			return fmt.Sprintf("klock: %s contains control character 0x%02x at byte %d; control characters are not allowed", name, b, i)
		}
		if s[i] >= utf8.RuneSelf {
			if !utf8.ValidString(s[i:]) {
				return fmt.Sprintf("klock: %s is not valid UTF-8", name)
			}
			return checkControlRunes(name, s[i:])
		}
	}
	return ""
}

// asciiPrefix returns the length of s's longest prefix, in 8-byte words,
// of printable ASCII (0x20..0x7e): CheckText's loop starts after it. It
// looks at a word at a time: a byte is outside the range when it is under
// 0x20, is 0x7f, or has its top bit set.
func asciiPrefix(s string) int {
	const ones, highs = 0x0101010101010101, 0x8080808080808080
	i := 0
	for ; i+8 <= len(s); i += 8 {
		w := uint64(s[i]) | uint64(s[i+1])<<8 | uint64(s[i+2])<<16 | uint64(s[i+3])<<24 |
			uint64(s[i+4])<<32 | uint64(s[i+5])<<40 | uint64(s[i+6])<<48 | uint64(s[i+7])<<56
		low := (w - 0x20*ones) &^ w // top bit of a byte under 0x20 (or above one borrowed from)
		del := w ^ 0x7f*ones
		del = (del - ones) &^ del // top bit of a 0x7f byte (or above one borrowed from)
		if (low|del|w)&highs != 0 {
			break
		}
	}
	return i
}

// checkControlRunes finds C1 control characters (U+0080..U+009F).
func checkControlRunes(name, s string) string {
	for _, r := range s {
		if r < 0x20 || r == 0x7f || (r >= 0x80 && r <= 0x9f) {
			return fmt.Sprintf("klock: %s contains control character %U; control characters are not allowed", name, r)
		}
	}
	return ""
}

// CheckDepth returns the INVALID_ARGUMENT message for the resource_path
// argument name when p, as keyed (a FILE path cleaned, CleanFilePath), has
// more than MaxPathDepth levels, or "" when it has not. A trailing '/' (a
// subtree key) is not a level.
func CheckDepth(name, p string) string {
	if n := strings.Count(strings.TrimSuffix(p, "/"), "/"); n > MaxPathDepth {
		return fmt.Sprintf("klock: %s has %d levels (a '/' before each); at most %d are allowed", name, n, MaxPathDepth)
	}
	return ""
}

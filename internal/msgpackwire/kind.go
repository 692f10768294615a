package msgpackwire

import "github.com/vmihailenco/msgpack/v5/msgpcode"

// KindName names the msgpack type that starts with type byte c, for error
// messages: "a string", "an integer", ...
func KindName(c byte) string {
	switch {
	case c == msgpcode.Nil:
		return "nil"
	case c == msgpcode.True || c == msgpcode.False:
		return "a boolean"
	case IsInt(c):
		return "an integer"
	case c == msgpcode.Float || c == msgpcode.Double:
		return "a float"
	case IsStr(c):
		return "a string"
	case c == msgpcode.Bin8 || c == msgpcode.Bin16 || c == msgpcode.Bin32:
		return "binary"
	case IsArray(c):
		return "an array"
	case IsMap(c):
		return "a map"
	default:
		return "an extension"
	}
}

// IsInt reports whether c starts an integer.
func IsInt(c byte) bool {
	return msgpcode.IsFixedNum(c) || (c >= msgpcode.Uint8 && c <= msgpcode.Int64)
}

// IsStr reports whether c starts a str.
func IsStr(c byte) bool {
	return msgpcode.IsFixedString(c) || c == msgpcode.Str8 || c == msgpcode.Str16 || c == msgpcode.Str32
}

// IsMap reports whether c starts a map.
func IsMap(c byte) bool {
	return msgpcode.IsFixedMap(c) || c == msgpcode.Map16 || c == msgpcode.Map32
}

// IsArray reports whether c starts an array.
func IsArray(c byte) bool {
	return msgpcode.IsFixedArray(c) || c == msgpcode.Array16 || c == msgpcode.Array32
}

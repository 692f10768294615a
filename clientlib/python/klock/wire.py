"""The wire format of protocol/README.md, encoded with as little Python as possible.

Every message is a 4-byte big-endian length and one msgpack map. A request is
``{op, args?, id}``: this module encodes everything but the id into a *tail*
(the map header, ``op`` and ``args``), and :func:`frame` appends the id the
connection assigns and the length prefix. Map keys may come in any order on
the wire, so putting ``id`` last lets a tail be built before the id is known
and kept for a resend.

The hot requests (acquire, release, heartbeat) are assembled from
precomputed msgpack pieces instead of a dict handed to ``msgpack.packb``:
the constant keys are byte literals, and the part of an acquire that repeats
from call to call (agent, session, resource, predicate, ttl) is cached. What
that buys is measured in BENCHMARKS.md ("Python client"). Anything the fast
path does not handle (a value that is not a str or a small non-negative int)
goes through ``msgpack.packb``, so the daemon still sees, and refuses with its
own message, whatever the caller passed.
"""

from __future__ import annotations

import struct
from typing import Any, Dict, Optional

import msgpack

from ._version import __version__
from .errors import InvalidArgumentError

__all__ = [
    "CLIENT_NAME",
    "DEFAULT_MAX_FRAME",
    "READ_LIMIT",
    "frame",
    "request_tail",
    "acquire_tail",
    "release_tail",
    "heartbeat_tail",
    "decode",
]

#: How the client introduces itself in ``hello``.
CLIENT_NAME = "klock-python/" + __version__

#: The daemon's default cap on a frame body (1 MiB); ``hello`` announces the real one.
DEFAULT_MAX_FRAME = 1 << 20

#: A response frame longer than this is taken as a broken stream.
READ_LIMIT = 64 << 20

# The daemon's limits on string arguments, in bytes (protocol/README.md
# "Vocabulary"); checked here too, with the daemon's own messages, so that
# an over-long argument is reported as such and not as an oversized frame.
MAX_ID_LEN = 256      # agent_id, session_id, lease_id
MAX_PATH_LEN = 4096   # resource_path
MAX_IDEM_LEN = 64     # idem


def check_text(name: str, s: Any, limit: int) -> None:
    """Raises the daemon's INVALID_ARGUMENT for an empty or over-long string.

    Anything but a str is left for the daemon to name.
    """
    if type(s) is not str:
        return
    if not s:
        raise InvalidArgumentError("klock: %s is required (1..%d bytes)" % (name, limit))
    if len(s) * 4 > limit:  # else it cannot exceed the limit in UTF-8
        n = len(s.encode("utf-8", "surrogatepass"))
        if n > limit:
            raise InvalidArgumentError("klock: %s is %d bytes; at most %d are allowed" % (name, n, limit))

_LEN = struct.Struct(">I")
pack_len = _LEN.pack

_FIXSTR = tuple(bytes((0xA0 | n,)) for n in range(32))
_STR8 = tuple(b"\xd9" + bytes((n,)) for n in range(256))
_UINT7 = tuple(bytes((n,)) for n in range(128))
_FIXMAP = tuple(bytes((0x80 | n,)) for n in range(16))


def _packb(value: Any) -> bytes:
    try:
        return msgpack.packb(value, use_bin_type=True)  # type: ignore[no-any-return]
    except (TypeError, ValueError, OverflowError) as e:
        raise InvalidArgumentError("klock: cannot encode %r: %s" % (value, e)) from None


def pack_str(s: str) -> bytes:
    """msgpack ``str`` of s (UTF-8). Raises UnicodeEncodeError for lone surrogates."""
    b = s.encode()
    n = len(b)
    if n < 32:
        return _FIXSTR[n] + b
    if n < 256:
        return _STR8[n] + b
    if n < 65536:
        return b"\xda" + n.to_bytes(2, "big") + b
    return b"\xdb" + n.to_bytes(4, "big") + b


def pack_uint(n: int) -> bytes:
    """msgpack encoding of a non-negative int (below 2**64)."""
    if n < 128:
        return _UINT7[n]
    if n < 256:
        return b"\xcc" + bytes((n,))
    if n < 65536:
        return b"\xcd" + n.to_bytes(2, "big")
    if n < 1 << 32:
        return b"\xce" + n.to_bytes(4, "big")
    return b"\xcf" + n.to_bytes(8, "big")


def pack_value(v: Any) -> bytes:
    """msgpack of v: the fast path for str and small non-negative ints, else msgpack.packb."""
    t = type(v)
    if t is str:
        try:
            return pack_str(v)
        except UnicodeEncodeError as e:
            raise InvalidArgumentError("klock: cannot encode %r as UTF-8: %s" % (v, e)) from None
    if t is int and 0 <= v < 1 << 64:
        return pack_uint(v)
    return _packb(v)


_ID = b"\xa2id"


def frame(tail: bytes, call_id: int) -> bytes:
    """The whole frame of a request: tail, then ``id``, behind the length prefix."""
    idb = pack_uint(call_id)
    return b"".join((pack_len(len(tail) + 3 + len(idb)), tail, _ID, idb))


def request_tail(op: str, args: Optional[Dict[str, Any]] = None) -> bytes:
    """The tail of any request; an op without arguments sends no ``args`` map."""
    if args:
        return b"\x83\xa2op" + pack_str(op) + b"\xa4args" + _packb(args)
    return b"\x82\xa2op" + pack_str(op)


# ----- acquire ----------------------------------------------------------------------

_ACQUIRE = b"\x83\xa2op\xa7acquire\xa4args"
_IDEM = b"\xa4idem"
_WAIT = b"\xacwait_timeout"
_BIND = b"\xa4bind"
_BIND_PROCESS = b"\xa4bind\xa7process"
_CLIENT_PATH = b"\xabclient_path"

# (agent, session, type, path, predicate, ttl) -> the args entries they encode to.
_acquire_cache: Dict[Any, bytes] = {}
_ACQUIRE_CACHE_MAX = 4096


def _acquire_fixed(agent_id: Any, session_id: Any, resource_type: Any, resource_path: Any,
                   predicate: Any, ttl: Any) -> bytes:
    check_text("agent_id", agent_id, MAX_ID_LEN)
    check_text("session_id", session_id, MAX_ID_LEN)
    check_text("resource_path", resource_path, MAX_PATH_LEN)
    return b"".join((
        b"\xa8agent_id", pack_value(agent_id),
        b"\xaasession_id", pack_value(session_id),
        b"\xadresource_type", pack_value(resource_type),
        b"\xadresource_path", pack_value(resource_path),
        b"\xa9predicate", pack_value(predicate),
        b"\xa3ttl", pack_value(ttl),
    ))


def acquire_tail(agent_id: str, session_id: str, resource_type: str, resource_path: str,
                 predicate: str, ttl: int, idem: str, wait_timeout: Optional[int] = None,
                 bind: Optional[str] = None, client_path: Optional[str] = None) -> bytes:
    """The tail of an ``acquire`` request (``wait_timeout``, ``bind`` and
    ``client_path`` only when given)."""
    # Only an int ttl is cached: 1.0 and True hash like 1, yet must reach the
    # daemon as what they are (and be refused there).
    key: Any = None
    fixed: Optional[bytes] = None
    if type(ttl) is int:
        key = (agent_id, session_id, resource_type, resource_path, predicate, ttl)
        try:
            fixed = _acquire_cache.get(key)
        except TypeError:  # an unhashable argument: encode it, and let the daemon judge it
            key = None
    if fixed is None:
        fixed = _acquire_fixed(agent_id, session_id, resource_type, resource_path, predicate, ttl)
        if key is not None:
            if len(_acquire_cache) >= _ACQUIRE_CACHE_MAX:
                _acquire_cache.clear()
            _acquire_cache[key] = fixed
    n = 7
    extra = b""
    if wait_timeout is not None:
        n += 1
        extra = _WAIT + pack_value(wait_timeout)
    if bind is not None:
        n += 1
        extra += _BIND_PROCESS if bind == "process" else _BIND + pack_value(bind)
    if client_path is not None:
        check_text("client_path", client_path, MAX_PATH_LEN)
        n += 1
        extra += _CLIENT_PATH + pack_value(client_path)
    if type(idem) is str and len(idem) > MAX_IDEM_LEN // 4:
        check_text("idem", idem, MAX_IDEM_LEN)
    return b"".join((_ACQUIRE, _FIXMAP[n], fixed, _IDEM, pack_value(idem), extra))


# ----- release, heartbeat -----------------------------------------------------------

_RELEASE = b"\x83\xa2op\xa7release\xa4args\x81\xa8lease_id"
_HEARTBEAT = b"\x83\xa2op\xa9heartbeat\xa4args"


def release_tail(lease_id: str) -> bytes:
    """The tail of a ``release`` request."""
    if type(lease_id) is str and (not lease_id or len(lease_id) > MAX_ID_LEN // 4):
        check_text("lease_id", lease_id, MAX_ID_LEN)
    return _RELEASE + pack_value(lease_id)


def heartbeat_tail(lease_id: str, ttl: Optional[int] = None) -> bytes:
    """The tail of a ``heartbeat`` request (``ttl`` only when given)."""
    if type(lease_id) is str and (not lease_id or len(lease_id) > MAX_ID_LEN // 4):
        check_text("lease_id", lease_id, MAX_ID_LEN)
    if ttl is None:
        return _HEARTBEAT + b"\x81\xa8lease_id" + pack_value(lease_id)
    return _HEARTBEAT + b"\x82\xa8lease_id" + pack_value(lease_id) + b"\xa3ttl" + pack_value(ttl)


def decode(body: Any) -> Any:
    """Decodes one frame body (bytes or a buffer) to Python values."""
    return msgpack.unpackb(body, raw=False, strict_map_key=False)

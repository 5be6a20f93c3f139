"""Framed messages over pipes and a type-exact codec for values crossing the sandbox wall.

The codec accepts only builtin value types (checked with `type(x) is ...`, so subclasses with a
rigged `__eq__` are refused) and rebuilds them exactly on the trusted side.
"""

from __future__ import annotations

import json
import marshal
import math
import os
import struct
from typing import Any

HEADER = struct.Struct("!I")
# Executor <-> zygote, over a SOCK_SEQPACKET pair that only these two trusted processes hold:
# fixed binary records, cheaper than JSON on the zygote side, where every page the code
# touches between two forks is copied. Request: op (b"S" spawn / b"R" reap), role index or
# pid, grace seconds. Reply: pid (spawn, with the child's 4 pipe ends) or wait status (reap),
# and whether the zygote had to kill.
ZYGOTE_REQUEST = struct.Struct("!cid")
ZYGOTE_REPLY = struct.Struct("!i?")
SPAWN, REAP = b"S", b"R"
ROLES = ("sandbox", "trusted")
MAX_MESSAGE_BYTES = 64 << 20
MAX_DEPTH = 64
MAX_ITEMS = 1_000_000
COMPACT_JSON = json.JSONEncoder(separators=(",", ":"))
CONTAINERS = (list, dict, set)  # the mutable containers whose identity a memo keeps
TAGGED_CONTAINERS = {"tuple": tuple, "set": set, "frozenset": frozenset, "dict": dict}
TAG_OF = {kind: tag for tag, kind in TAGGED_CONTAINERS.items()}


class UnsupportedValue(TypeError):
    """A value of a type the codec refuses to carry across the sandbox boundary."""


def encode_value(value: Any, depth: int = 0, budget: list[int] | None = None,
                 memo: dict[int, tuple[int, Any]] | None = None) -> Any:
    """Turn a builtin value into a JSON-safe tagged tree; raise UnsupportedValue otherwise.

    With a memo (id -> (index, object)), lists, dicts and sets are numbered in the order they
    are first met and met again as {"ref": index}: identity and aliasing survive the trip
    (decode_value with a table rebuilds them). Without one, references are never produced.
    """
    budget = budget if budget is not None else [MAX_ITEMS]
    budget[0] -= 1
    if depth > MAX_DEPTH or budget[0] < 0:
        raise UnsupportedValue("value too deep or too large")
    kind = type(value)
    if value is None or kind is bool or kind is str:
        return value
    if kind is int:
        return {"int": str(value)} if abs(value) >= 2**53 else value
    if kind is float:
        return value if math.isfinite(value) else {"float": repr(value)}
    if kind in CONTAINERS and memo is not None:
        if id(value) in memo:
            return {"ref": memo[id(value)][0]}
        memo[id(value)] = (len(memo), value)
    if kind in (list, tuple, set, frozenset, dict):
        return encode_contents(value, depth, budget, memo)
    if kind is bytes:
        return {"bytes": value.hex()}
    if kind is complex:
        return {"complex": [value.real, value.imag]}
    raise UnsupportedValue(f"cannot carry a value of type {kind.__name__}")


def encode_contents(value: Any, depth: int = 0, budget: list[int] | None = None,
                    memo: dict[int, tuple[int, Any]] | None = None) -> Any:
    """The tagged tree of a container's items (the container itself is not numbered: a state
    update of a container the other side already holds)."""
    budget = budget if budget is not None else [MAX_ITEMS]
    kind = type(value)
    if kind is list:
        return [encode_value(item, depth + 1, budget, memo) for item in value]
    if kind is dict:
        return {"dict": [[encode_value(k, depth + 1, budget, memo),
                          encode_value(v, depth + 1, budget, memo)] for k, v in value.items()]}
    items = list(value)
    if kind is not tuple:
        items.sort(key=repr)
    return {kind.__name__: [encode_value(item, depth + 1, budget, memo) for item in items]}


def decode_value(tree: Any, table: list | None = None) -> Any:
    """Inverse of encode_value, building exact builtin types. With a table (the objects the
    references may name, by index; new lists, dicts and sets are appended as they are built),
    {"ref": i} is table[i]; without one a reference is malformed."""
    if tree is None or type(tree) in (bool, str, int, float):
        return tree
    if type(tree) is not list and (type(tree) is not dict or len(tree) != 1):
        raise ValueError("malformed encoded value")
    kind = list if type(tree) is list else TAGGED_CONTAINERS.get(next(iter(tree)))
    if kind is None:
        return _decode_scalar(tree, table)
    container = kind() if kind in CONTAINERS else None
    if container is not None and table is not None:
        table.append(container)
    return decode_contents(tree, kind, table, container)


def decode_contents(tree: Any, kind: type, table: list | None, into: Any = None) -> Any:
    """The items of a container tree of `kind`, filled into `into` (a fresh or a held
    container of that kind) or built as a tuple or frozenset."""
    body = tree if kind is list else tree.get(TAG_OF[kind]) if type(tree) is dict else None
    if type(body) is not list:
        raise ValueError(f"malformed {kind.__name__} contents")
    if kind is dict:
        items = {}
        for pair in body:
            key, item = pair
            items[decode_value(key, table)] = decode_value(item, table)
    else:
        items = [decode_value(item, table) for item in body]
    if into is None:
        return kind(items)
    if kind is list:
        into[:] = items
    else:
        into.clear()
        into.update(items)
    return into


def _decode_scalar(tree: dict, table: list | None) -> Any:
    (tag, body), = tree.items()
    if tag == "int":
        return int(body)
    if tag == "float":
        return float(body)
    if tag == "bytes":
        return bytes.fromhex(body)
    if tag == "complex":
        return complex(body[0], body[1])
    if tag == "ref" and table is not None and type(body) is int and 0 <= body < len(table):
        return table[body]
    raise ValueError(f"unknown or misplaced value tag {tag!r}")


def pack_message(message: Any) -> bytes:
    """One length-prefixed JSON frame."""
    body = COMPACT_JSON.encode(message).encode()
    if len(body) > MAX_MESSAGE_BYTES:
        raise ValueError("message too large")
    return HEADER.pack(len(body)) + body


def pack_to_child(message: Any) -> bytes:
    """One length-prefixed marshal frame, for the executor's messages to its children.

    Only the executor writes these and only children read them, so marshal (unsafe on hostile
    bytes) is safe here; it is cheaper than JSON in a fresh child. Everything a child sends
    back is JSON, parsed by `FrameBuffer`.
    """
    body = marshal.dumps(message)
    if len(body) > MAX_MESSAGE_BYTES:
        raise ValueError("message too large")
    return HEADER.pack(len(body)) + body


def read_from_parent(fd: int) -> Any:
    """Read one `pack_to_child` frame from a blocking fd."""
    (size,) = HEADER.unpack(read_exact(fd, HEADER.size))
    if size > MAX_MESSAGE_BYTES:
        raise ValueError("message too large")
    return marshal.loads(read_exact(fd, size))


def write_message(fd: int, message: Any) -> None:
    """Write one frame to a blocking fd."""
    data = memoryview(pack_message(message))
    while data:
        written = os.write(fd, data)
        data = data[written:]


def read_exact(fd: int, size: int) -> bytes:
    """Read exactly size bytes from a blocking fd, or raise EOFError."""
    chunks, remaining = [], size
    while remaining:
        chunk = os.read(fd, min(remaining, 1 << 20))
        if not chunk:
            raise EOFError("pipe closed")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def read_message(fd: int) -> Any:
    """Read one frame from a blocking fd."""
    (size,) = HEADER.unpack(read_exact(fd, HEADER.size))
    if size > MAX_MESSAGE_BYTES:
        raise ValueError("message too large")
    return json.loads(read_exact(fd, size))


class FrameBuffer:
    """Accumulates bytes from a non-blocking reader and yields complete frames."""

    def __init__(self, limit: int = MAX_MESSAGE_BYTES) -> None:
        self.data = bytearray()
        self.limit = limit

    def feed(self, chunk: bytes) -> list[Any]:
        self.data += chunk
        frames = []
        while len(self.data) >= HEADER.size:
            (size,) = HEADER.unpack_from(self.data)
            if size > self.limit:
                raise ValueError("frame too large")
            if len(self.data) < HEADER.size + size:
                break
            frames.append(json.loads(bytes(self.data[HEADER.size:HEADER.size + size])))
            del self.data[:HEADER.size + size]
        return frames

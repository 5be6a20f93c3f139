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


class UnsupportedValue(TypeError):
    """A value of a type the codec refuses to carry across the sandbox boundary."""


def encode_value(value: Any, depth: int = 0, budget: list[int] | None = None) -> Any:
    """Turn a builtin value into a JSON-safe tagged tree; raise UnsupportedValue otherwise."""
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
    if kind is list:
        return [encode_value(item, depth + 1, budget) for item in value]
    if kind in (tuple, set, frozenset):
        items = list(value)
        if kind is not tuple:
            items.sort(key=repr)
        return {kind.__name__: [encode_value(item, depth + 1, budget) for item in items]}
    if kind is dict:
        pairs = [[encode_value(k, depth + 1, budget), encode_value(v, depth + 1, budget)]
                 for k, v in value.items()]
        return {"dict": pairs}
    if kind is bytes:
        return {"bytes": value.hex()}
    if kind is complex:
        return {"complex": [value.real, value.imag]}
    raise UnsupportedValue(f"cannot carry a value of type {kind.__name__}")


def decode_value(tree: Any) -> Any:
    """Inverse of encode_value, building exact builtin types."""
    if tree is None or type(tree) in (bool, str, int, float):
        return tree
    if type(tree) is list:
        return [decode_value(item) for item in tree]
    if type(tree) is not dict or len(tree) != 1:
        raise ValueError("malformed encoded value")
    (tag, body), = tree.items()
    if tag == "int":
        return int(body)
    if tag == "float":
        return float(body)
    if tag == "tuple":
        return tuple(decode_value(item) for item in body)
    if tag == "set":
        return {decode_value(item) for item in body}
    if tag == "frozenset":
        return frozenset(decode_value(item) for item in body)
    if tag == "dict":
        return {decode_value(k): decode_value(v) for k, v in body}
    if tag == "bytes":
        return bytes.fromhex(body)
    if tag == "complex":
        return complex(body[0], body[1])
    raise ValueError(f"unknown value tag {tag!r}")


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

"""Whether a cluster address answers, within a bounded time: riskpo-train checks a Ray address
and riskpo-submit a dashboard address before handing them to Ray, whose own clients retry for
minutes (or, for HTTP, without a limit) before saying anything."""

from __future__ import annotations

import socket
import time


def endpoint(address: str) -> tuple[str, int] | None:
    """(host, port) of an address: host:port, ray://host:port, http://host:port[/...]; None
    when it names no port (auto, local, a URL on the scheme's default port)."""
    rest = address.split("://", 1)[-1].split("/", 1)[0]
    if ":" not in rest:
        return None
    host, _, port = rest.rpartition(":")
    return (host.strip("[]"), int(port)) if port.isdigit() else None


def unreachable(address: str, timeout_s: float) -> str | None:
    """None once `address` accepts a TCP connection (tried until timeout_s has passed); else
    why not, in a few words."""
    target = endpoint(address)
    if target is None:
        return None
    deadline = time.monotonic() + timeout_s
    while True:
        remaining = deadline - time.monotonic()
        try:
            socket.create_connection(target, timeout=max(0.1, min(5.0, remaining))).close()
            return None
        except OSError as error:
            reason = error.strerror or str(error) or type(error).__name__
        if remaining <= 0:
            return f"no answer within {timeout_s:g} s: {reason}"
        time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))

"""Parent side of the code sandbox: executor slots, each a zygote plus the clock and the pipes.

The parent owns every deadline: it pumps a child's pipes with select(), caps its output, and
asks the zygote to SIGKILL the child's process group when time is up. Isolation layers are
probed from inside a real child at start-up and reported with every result.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import itertools
import json
import logging
import os
import queue
import select
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from workers.verifier import sandbox
from workers.verifier.wire import (
    REAP,
    ROLES,
    SPAWN,
    ZYGOTE_REPLY,
    ZYGOTE_REQUEST,
    FrameBuffer,
    pack_to_child,
)

LOG = logging.getLogger(__name__)
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BASE_DIR = "/tmp/riskpo-verifier"
FIRST_SLOT_UID = 61000
MAX_SANDBOX_UIDS = 2000
ZYGOTE_START_S = 30.0
ZYGOTE_REPLY_S = 30.0
STDERR_KEEP = 4096
SLOT_SERIAL = itertools.count()


class SandboxUnavailable(RuntimeError):
    """A layer that this machine supports did not hold when probed: refuse to run code."""


@dataclass(frozen=True)
class ExecLimits:
    """Limits of every run in one executor; each run also gets its own wall-clock deadline."""

    max_timeout_s: float = 10.0
    memory_mb: int = 1024
    # cap on each of a run's stdout and stderr (a correct answer may be tens of MB, as real
    # judges allow); the parent holds up to this much per slot while it compares
    output_bytes: int = 64 << 20
    file_size_mb: int = 16
    open_files: int = 64
    threads: int = 128

    def sandbox_limits(self) -> dict[str, int]:
        cpu = int(self.max_timeout_s) + 1
        return asdict(sandbox.SandboxLimits(cpu, self.memory_mb, self.file_size_mb,
                                            self.open_files, self.threads))


@dataclass
class Outcome:
    """What the parent observed of one child: exit, signal, timeout, output, frames."""

    status: int = 0
    timed_out: bool = False
    output_limited: bool = False
    limited_stream: str = ""  # which stream went over the cap: stdout, stderr or reply
    stdout: bytearray = field(default_factory=bytearray)
    stderr: bytearray = field(default_factory=bytearray)
    elapsed_s: float = 0.0

    @property
    def signal(self) -> int:
        return os.WTERMSIG(self.status) if os.WIFSIGNALED(self.status) else 0

    @property
    def returncode(self) -> int:
        return os.WEXITSTATUS(self.status) if os.WIFEXITED(self.status) else -self.signal


class Child:
    """Parent handle on one forked child: non-blocking pipes pumped under a deadline."""

    def __init__(self, slot: Slot, pid: int, fds: list[int], limits: ExecLimits) -> None:
        self.slot, self.pid, self.limits = slot, pid, limits
        self.request_fd, reply_fd, stdout_fd, stderr_fd = fds
        for fd in fds:
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)
        self.readers = {reply_fd: "reply", stdout_fd: "stdout", stderr_fd: "stderr"}
        self.pending = bytearray()
        self.frames: list[Any] = []
        self.buffer = FrameBuffer()
        self.outcome = Outcome()
        self.stderr_total = 0
        self.started = time.monotonic()
        self.reaped = False

    def send(self, message: Any) -> None:
        self.pending += pack_to_child(message)
        self._flush_pending()

    def next_frame(self, deadline: float) -> Any | None:
        """The next framed reply, or None when the child is gone, over its cap, or out of time."""
        while not self.frames and self._alive_for(deadline):
            self._pump(deadline)
        return self.frames.pop(0) if self.frames else None

    def finish(self, deadline: float, grace_s: float = 1.0) -> Outcome:
        """Close its input, drain until it exits or the deadline passes, then reap it."""
        self._close_request()
        while self._alive_for(deadline):
            self._pump(deadline)
        if time.monotonic() >= deadline and self.readers:
            self.outcome.timed_out = True
        self._close_readers()
        self._reap(grace_s if not (self.outcome.timed_out or self.outcome.output_limited) else 0)
        return self.outcome

    def kill(self) -> Outcome:
        self._close_request()
        self._close_readers()
        self._reap(0.0)
        return self.outcome

    def _alive_for(self, deadline: float) -> bool:
        if self.outcome.output_limited or not self.readers:
            return False
        if time.monotonic() >= deadline:
            self.outcome.timed_out = True
            return False
        return True

    def _pump(self, deadline: float) -> None:
        timeout = max(deadline - time.monotonic(), 0.0)
        writers = [self.request_fd] if self.pending and self.request_fd >= 0 else []
        readable, writable, _ = select.select(list(self.readers), writers, [], timeout)
        if writable:
            self._flush_pending()
        for fd in readable:
            self._read(fd)

    def _read(self, fd: int) -> None:
        try:
            chunk = os.read(fd, 1 << 16)
        except BlockingIOError:
            return
        if not chunk:
            os.close(fd)
            del self.readers[fd]
            return
        role = self.readers[fd]
        if role == "reply":
            try:
                self.frames.extend(self.buffer.feed(chunk))
            except ValueError:
                self._over_cap("reply")
        elif role == "stdout":
            self.outcome.stdout += chunk
            if len(self.outcome.stdout) > self.limits.output_bytes:
                self._over_cap("stdout")
        else:
            self.stderr_total += len(chunk)
            if len(self.outcome.stderr) < STDERR_KEEP:
                self.outcome.stderr += chunk[: STDERR_KEEP - len(self.outcome.stderr)]
            if self.stderr_total > self.limits.output_bytes:
                self._over_cap("stderr")

    def _over_cap(self, stream: str) -> None:
        self.outcome.output_limited = True
        self.outcome.limited_stream = stream

    def _flush_pending(self) -> None:
        try:
            while self.pending:
                written = os.write(self.request_fd, self.pending)
                del self.pending[:written]
        except BlockingIOError:
            return
        except (BrokenPipeError, OSError):
            self.pending.clear()

    def _close_request(self) -> None:
        if self.request_fd >= 0:
            os.close(self.request_fd)
            self.request_fd = -1

    def _close_readers(self) -> None:
        for fd in list(self.readers):
            os.close(fd)
        self.readers.clear()

    def _reap(self, grace_s: float) -> None:
        if self.reaped:
            return
        self.reaped = True
        status, _ = self.slot.reap(self.pid, grace_s)
        self.outcome.status = status
        self.outcome.elapsed_s = time.monotonic() - self.started


class Slot:
    """One executor slot: a zygote process, its socket, and a dedicated sandbox uid."""

    def __init__(self, index: int, config: dict[str, Any], limits: ExecLimits) -> None:
        self.index = index
        self.limits = limits
        # unique in this process (two executors in one process must not share a directory)
        base_dir = os.path.join(BASE_DIR, f"{os.getpid()}-slot{next(SLOT_SERIAL)}")
        self.config = dict(config, limits=limits.sandbox_limits(), base_dir=base_dir)
        self.uid = config["uid"]
        self.process: subprocess.Popen | None = None
        self.sock: socket.socket | None = None
        self.start()

    def start(self) -> None:
        shutil.rmtree(self.config["base_dir"], ignore_errors=True)
        os.makedirs(self.config["base_dir"], mode=0o711)
        os.chmod(self.config["base_dir"], 0o711)
        parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONPATH": REPO_ROOT,
               "PYTHONDONTWRITEBYTECODE": "1"}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "workers.verifier.zygote", str(child_sock.fileno())],
            pass_fds=[child_sock.fileno()], env=env, cwd=REPO_ROOT, stdin=subprocess.DEVNULL,
        )
        child_sock.close()
        self.sock = parent_sock
        self.sock.settimeout(ZYGOTE_START_S)
        self.sock.send(json.dumps(self.config).encode())
        if json.loads(self.sock.recv(1 << 16)) != {"ready": True}:
            raise SandboxUnavailable("zygote did not start")
        self.sock.settimeout(ZYGOTE_REPLY_S)  # a hung zygote becomes an error, then a restart

    def spawn(self, role: str) -> Child:
        """A fresh child ('sandbox' has every layer, 'trusted' only rlimits and a clean env)."""
        self.sock.send(ZYGOTE_REQUEST.pack(SPAWN, ROLES.index(role), 0.0))
        payload, fds, _, _ = socket.recv_fds(self.sock, ZYGOTE_REPLY.size, 4)
        if len(fds) != 4:
            raise OSError(errno.EPROTO, "zygote sent no pipes")
        pid, _ = self._unpack_reply(payload)
        return Child(self, pid, fds, self.limits)

    def reap(self, pid: int, grace_s: float) -> tuple[int, bool]:
        """Wait up to grace_s for pid to exit, else kill its group; its status and whether
        the zygote had to kill it. The zygote also removes the child's job directory."""
        self.sock.send(ZYGOTE_REQUEST.pack(REAP, pid, max(grace_s, 0.0)))
        return self._unpack_reply(self.sock.recv(ZYGOTE_REPLY.size))

    @staticmethod
    def _unpack_reply(payload: bytes) -> tuple[int, bool]:
        if len(payload) != ZYGOTE_REPLY.size:  # b"" when the zygote died
            raise OSError(errno.EPROTO, f"zygote sent {len(payload)} bytes, not a reply")
        return ZYGOTE_REPLY.unpack(payload)

    def restart(self) -> None:
        self.close()
        self.start()

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGKILL)
            self.process.wait()
            self.process = None
        shutil.rmtree(self.config["base_dir"], ignore_errors=True)


def _remove_stale_slot_dirs() -> None:
    """Slot directories of executors whose process is gone (killed actors leave them)."""
    for entry in os.listdir(BASE_DIR):
        owner = entry.split("-slot")[0]
        if "-slot" in entry and owner.isdigit() and not os.path.exists(f"/proc/{owner}"):
            shutil.rmtree(os.path.join(BASE_DIR, entry), ignore_errors=True)


def _world_readable(path: str) -> bool:
    """Whether an unprivileged uid can reach path (every parent o+x, the file o+r)."""
    path = os.path.realpath(path)
    parts = path.split(os.sep)
    for depth in range(2, len(parts)):
        if not os.stat(os.sep.join(parts[:depth])).st_mode & stat.S_IXOTH:
            return False
    return bool(os.stat(path).st_mode & stat.S_IROTH)


def _seccomp_program() -> str | None:
    """The seccomp deny-list as hex BPF, compiled here so that the zygote never imports
    pyseccomp (which loads threading and random, whose fork hooks would run in every child);
    None where libseccomp is unavailable."""
    try:
        return sandbox.compile_seccomp_filter().hex()
    except (ImportError, OSError):
        return None


class CodeExecutor:
    """A fixed set of slots; `slot()` lends one to a thread for the span of a request."""

    def __init__(self, num_slots: int = 2, limits: ExecLimits | None = None,
                 strict: bool = False) -> None:
        self.limits = limits or ExecLimits()
        os.makedirs(BASE_DIR, mode=0o711, exist_ok=True)
        os.chmod(BASE_DIR, 0o711)
        _remove_stale_slot_dirs()
        is_root = os.geteuid() == 0
        abi = sandbox.landlock_abi()
        config = {
            "landlock_abi": abi,
            "seccomp": _seccomp_program(),
            "keep_read_cap": not _world_readable(os.__file__),
            "uid": None,
        }
        self.expected = {"rlimits": True, "landlock": abi > 0, "seccomp": config["seccomp"] is not None,
                         "uid": is_root}
        self.slots: list[Slot] = []
        self.free: queue.Queue[Slot] = queue.Queue()
        self.uid_locks: list[int] = []
        for index in range(num_slots):
            slot_config = dict(config, uid=self._claim_uid() if is_root else None)
            slot = Slot(index, slot_config, self.limits)
            self.slots.append(slot)
            self.free.put(slot)
        self.layers = self._probe_all(strict)

    @contextlib.contextmanager
    def slot(self) -> Iterator[Slot]:
        slot = self.free.get()
        try:
            yield slot
        except (OSError, ValueError):  # zygote died, hung or spoke nonsense: a fresh one
            slot.restart()
            raise
        finally:
            self.free.put(slot)

    def close(self) -> None:
        for slot in self.slots:
            slot.close()
        for fd in self.uid_locks:
            os.close(fd)
        self.uid_locks = []

    def _claim_uid(self) -> int:
        """A sandbox uid no other executor on this machine holds (an flock per uid)."""
        for uid in range(FIRST_SLOT_UID, FIRST_SLOT_UID + MAX_SANDBOX_UIDS):
            fd = os.open(os.path.join(BASE_DIR, f"uid-{uid}.lock"), os.O_CREAT | os.O_RDWR, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            self.uid_locks.append(fd)
            return uid
        raise SandboxUnavailable(f"all {MAX_SANDBOX_UIDS} sandbox uids are taken")

    def _probe_all(self, strict: bool) -> dict[str, Any]:
        reports = [self._probe(slot) for slot in self.slots]
        layers = dict(reports[0], uid=[report["uid"] for report in reports])
        failed = [name for name, expected in self.expected.items()
                  if expected and any(not report[name] for report in reports)]
        if failed:
            self.close()
            raise SandboxUnavailable(f"layers this machine supports failed their probe: {failed} "
                                     f"(reports: {reports})")
        unsupported = [name for name, expected in self.expected.items() if not expected]
        if unsupported:
            if strict:
                self.close()
                raise SandboxUnavailable(f"layers unavailable on this machine: {unsupported}")
            LOG.warning("code sandbox DEGRADED: layers unavailable here: %s", unsupported)
        layers["degraded"] = unsupported
        return layers

    def _probe(self, slot: Slot) -> dict[str, Any]:
        outside = os.path.join(BASE_DIR, "probe-" + os.path.basename(slot.config["base_dir"]))
        os.makedirs(outside, exist_ok=True)
        os.chmod(outside, 0o777)
        try:
            child = slot.spawn("sandbox")
            child.send({"program": "probe", "outside_dir": outside,
                        "root_only_file": "/etc/shadow"})
            report = child.next_frame(time.monotonic() + 10) or {}
            child.finish(time.monotonic() + 10)
        finally:
            shutil.rmtree(outside, ignore_errors=True)
        if report.get("write_jobdir") != "allowed":
            raise SandboxUnavailable(f"a sandboxed child cannot even use its job dir: {report}")
        eperm, eacces = f"denied:{errno.EPERM}", f"denied:{errno.EACCES}"
        return {
            "rlimits": report.get("raise_rlimit", "").startswith("denied"),
            "landlock": sandbox.landlock_abi() if report.get("write_outside") == eacces else 0,
            "seccomp": report.get("socket") == eperm and report.get("fork") == eperm,
            "uid": report.get("uid") if report.get("uid") not in (None, 0) else None,
            "secret_file_unreadable": report.get("read_root_only", "").startswith("denied"),
            "clean_env": True,
            "namespaces": False,
        }

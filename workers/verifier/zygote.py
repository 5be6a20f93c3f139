"""Pre-forked zygote: a small clean interpreter that forks one sandboxed child per test run.

It never sees a solution, a stdin or an expected value: the executor asks it over a
SOCK_SEQPACKET socket to fork a child and receives the child's pipe ends (SCM_RIGHTS); job data
then flows straight between executor and child. So no child can find another job's data, or
any test, in memory it inherited. Run as `python -m workers.verifier.zygote SOCKET_FD`.
"""

from __future__ import annotations

import gc
import importlib
import json
import os
import select
import shutil
import signal
import socket
import sys
from typing import Any

from workers.verifier import child, sandbox
from workers.verifier.wire import REAP, ROLES, SPAWN, ZYGOTE_REPLY, ZYGOTE_REQUEST

PR_SET_CHILD_SUBREAPER = 36
PACKET_BYTES = 1 << 16
# Imported once here so that solutions find them loaded. Modules that register fork hooks
# (threading, queue, concurrent.futures and logging; random, tempfile and statistics through
# random) are left out on purpose: their hooks run in every child and cost more per fork
# (about 0.8 ms CPU, measured) than importing them in the few children that use them.
PRELOADED_MODULES = [
    "abc", "array", "ast", "base64", "bisect", "calendar", "cmath", "collections",
    "collections.abc", "contextlib", "copy", "csv", "dataclasses", "datetime", "decimal", "enum",
    "fractions", "functools", "hashlib", "heapq", "io", "itertools", "json", "math", "numbers",
    "operator", "re", "string", "struct", "sys", "textwrap", "time", "typing", "unicodedata",
    "uuid", "weakref", "pathlib", "pprint", "difflib", "shutil", "glob", "traceback", "resource",
    "socket",
]
FORK_HOOK_MODULES = ("threading", "random", "logging")


class Zygote:
    """Fork server state: configuration, the prebuilt seccomp filter, live children."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.uid: int | None = config["uid"]
        self.landlock_abi: int = config["landlock_abi"]
        self.keep_read_cap: bool = config["keep_read_cap"]
        self.base_dir: str = config["base_dir"]
        read_fds = sandbox.open_rule_paths(sandbox.interpreter_read_paths())
        self.landlock = (sandbox.LandlockPolicy(self.landlock_abi, read_fds)
                         if self.landlock_abi else None)
        self.seccomp_filter = (sandbox.SeccompProgram(bytes.fromhex(config["seccomp"]))
                               if config["seccomp"] else None)
        limits = sandbox.SandboxLimits(**config["limits"])
        self.rlimits = {as_root: sandbox.rlimit_plan(limits, as_root) for as_root in (False, True)}
        self.job_dirs: dict[int, str] = {}
        self.ready: dict[str, tuple[int, list[int]]] = {}
        self.counter = 0
        self.pid = os.getpid()

    def spawn(self, role: str, sock: socket.socket) -> None:
        """Hand over a pre-forked child of the asked role, then fork its replacement."""
        if role not in self.ready:
            self.ready[role] = self._fork_child(role)
        pid, parent_ends = self.ready.pop(role)
        socket.send_fds(sock, [ZYGOTE_REPLY.pack(pid, False)], parent_ends)
        for fd in parent_ends:
            os.close(fd)
        self.ready[role] = self._fork_child(role)

    def _fork_child(self, role: str) -> tuple[int, list[int]]:
        self.counter += 1
        job_dir = os.path.join(self.base_dir, f"job{self.counter}")
        os.mkdir(job_dir, 0o700)
        if self.uid is not None:
            os.chown(job_dir, self.uid, self.uid)
        pipes = [os.pipe() for _ in range(4)]  # requests in, replies out, stdout, stderr
        pid = os.fork()
        if pid == 0:
            try:
                self._enter_child(role, job_dir, pipes)
                child.run_child_job()
            finally:
                os._exit(1)
        for fd in (pipes[0][0], pipes[1][1], pipes[2][1], pipes[3][1]):
            os.close(fd)
        self.job_dirs[pid] = job_dir
        return pid, [pipes[0][1], pipes[1][0], pipes[2][0], pipes[3][0]]

    def _enter_child(self, role: str, job_dir: str, pipes: list) -> None:
        """Layers, in order, before the child reads anything. Signal dispositions and the
        environment were made clean once in the zygote (`prepare_process`) and are inherited."""
        os.setsid()
        sandbox.LIBC.prctl(sandbox.PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        devnull = os.open("/dev/null", os.O_RDONLY)
        targets = {devnull: 0, pipes[2][1]: 1, pipes[3][1]: 2, pipes[0][0]: 3, pipes[1][1]: 4}
        for source, target in targets.items():
            os.dup2(source, target + 100)
        for target in targets.values():
            os.dup2(target + 100, target)
        if self.landlock is not None and role == "sandbox":
            self.landlock.apply(job_dir)
        os.closerange(5, 1 << 16)
        os.chdir(job_dir)
        os.environ["HOME"] = os.environ["TMPDIR"] = job_dir
        trusted = role == "trusted" or self.uid is None
        sandbox.apply_rlimits(self.rlimits[trusted])
        if role == "trusted":
            return
        if self.uid is not None:
            sandbox.drop_to_uid(self.uid, self.keep_read_cap and bool(self.landlock_abi))
            # A uid change clears the parent-death signal: set it again, then make sure the
            # zygote did not die in between (we would have been re-parented already).
            sandbox.LIBC.prctl(sandbox.PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            if os.getppid() != self.pid:
                os._exit(1)
        sandbox.set_no_new_privs()
        if self.seccomp_filter is not None:
            self.seccomp_filter.load()

    def reap(self, pid: int, grace_s: float, sock: socket.socket) -> None:
        pidfd = os.pidfd_open(pid)
        try:
            killed = not select.select([pidfd], [], [], grace_s)[0]
        finally:
            os.close(pidfd)
        # Kill before the wait, never after: until it is reaped, pid names this child and its
        # group alone; once reaped, the number may already belong to another process.
        self._kill_group(pid, leader_too=killed)
        _, status = os.waitpid(pid, 0)
        if self.seccomp_filter is None and self.uid is not None:
            self._kill_uid()
        self._reap_orphans()
        _remove_job_dir(self.job_dirs.pop(pid))
        sock.send(ZYGOTE_REPLY.pack(status, killed))

    def kill_all(self) -> None:
        """The executor is gone: no child of ours may outlive this zygote."""
        for pid in list(self.job_dirs):
            self._kill_group(pid)
            _remove_job_dir(self.job_dirs.pop(pid))
        if self.seccomp_filter is None and self.uid is not None:
            self._kill_uid()
        self._reap_orphans()

    @staticmethod
    def _kill_group(pid: int, leader_too: bool = True) -> None:
        """SIGKILL an unreaped child's process group (strays), and the child itself, which may
        not have reached its setsid yet; leader_too=False when it has already exited."""
        kills = (os.killpg, os.kill) if leader_too else (os.killpg,)
        for kill in kills:
            try:
                kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                continue

    def _kill_uid(self) -> None:
        """Without seccomp a child could fork: kill everything the slot uid owns."""
        helper = os.fork()
        if helper == 0:
            try:
                os.setresuid(self.uid, self.uid, self.uid)
                os.kill(-1, signal.SIGKILL)
            finally:
                os._exit(0)
        os.waitpid(helper, 0)

    @staticmethod
    def _reap_orphans() -> None:
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return


def _remove_job_dir(path: str) -> None:
    """Most runs leave their job directory empty: one rmdir, and a full rmtree only if not."""
    try:
        os.rmdir(path)
    except OSError:
        shutil.rmtree(path, ignore_errors=True)


def prepare_process() -> None:
    """Once, in the zygote: what every child would otherwise set up after fork. Default
    dispositions for the signals a child may receive, an environment holding only PATH and
    LANG (each child adds its own HOME and TMPDIR), and the children's text streams."""
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD):
        signal.signal(signum, signal.SIG_DFL)
    os.environ.clear()
    os.environ.update(PATH="/usr/bin:/bin", LANG="C.UTF-8")
    for fd in (0, 1, 2):  # the streams need open fds to be built on (children dup2 theirs)
        try:
            os.fstat(fd)
        except OSError:
            null = os.open("/dev/null", os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
    child.prepare_streams()


def preload() -> None:
    for name in PRELOADED_MODULES:
        importlib.import_module(name)


def check_no_fork_hooks() -> None:
    loaded = [name for name in FORK_HOOK_MODULES if name in sys.modules]
    if loaded:
        raise RuntimeError(f"zygote imported modules with fork hooks: {loaded}")


def main() -> None:
    sock = socket.socket(fileno=int(sys.argv[1]))
    config = json.loads(sock.recv(PACKET_BYTES))
    preload()
    zygote = Zygote(config)
    prepare_process()
    check_no_fork_hooks()
    gc.freeze()  # objects made so far stay out of every child's collections (and copies)
    sandbox.LIBC.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    # No parent-death signal here: it follows the executor *thread* that started us, which may
    # be a short-lived pool thread. The executor's death closes our socket instead.
    sock.send(b'{"ready": true}')
    while True:
        packet = sock.recv(PACKET_BYTES)
        if not packet:
            zygote.kill_all()
            return
        op, argument, grace_s = ZYGOTE_REQUEST.unpack(packet)
        if op == SPAWN:
            zygote.spawn(ROLES[argument], sock)
        elif op == REAP:
            zygote.reap(argument, grace_s, sock)
        else:
            raise ValueError(f"unknown zygote request {op!r}")


if __name__ == "__main__":
    main()

"""Programs run inside a forked child once its isolation layers are in place.

fd 0/1/2 are the child's stdin/stdout/stderr, fd 3 carries the executor's framed requests in
(marshal: only the executor writes them), fd 4 framed JSON replies out. Exit codes: 0 normal, SystemExit codes as given, 1 uncaught exception,
EXIT_MEMORY for MemoryError, EXIT_COMPILE for a program that does not compile.
"""

from __future__ import annotations

import builtins
import contextlib
import io
import os
import sys
import traceback
from typing import Any

from workers.verifier.wire import (
    UnsupportedValue,
    decode_value,
    encode_value,
    read_from_parent,
    write_message,
)

REQUEST_FD, REPLY_FD = 3, 4
EXIT_MEMORY = 120
EXIT_COMPILE = 121


def _flush_and_exit(code: int) -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # the program may have closed or broken it
            stream.flush()
    os._exit(code)


def _exit_code_of(exc: BaseException) -> int:
    if isinstance(exc, SystemExit):
        if exc.code is None:
            return 0
        if isinstance(exc.code, int):
            return exc.code & 0xFF
        print(exc.code, file=sys.stderr)
        return 1
    if isinstance(exc, MemoryError):
        return EXIT_MEMORY
    traceback.print_exception(exc, limit=5)
    return 1


CHILD_STREAMS: list[io.TextIOWrapper] = []


def prepare_streams() -> None:
    """Once, in the zygote: text streams over fds 0, 1 and 2 for the children, never used by
    the zygote itself (so they hold no buffered byte). They name fd numbers, so in each child
    they reach that child's own stdin and pipes; building them here saves every child the
    codec and io set-up (and the pages it would copy)."""
    if not CHILD_STREAMS:
        CHILD_STREAMS.extend([
            io.TextIOWrapper(io.BufferedReader(io.FileIO(0, "r", closefd=False)),
                             encoding="utf-8", errors="replace"),
            io.TextIOWrapper(io.BufferedWriter(io.FileIO(1, "w", closefd=False)),
                             encoding="utf-8", errors="replace"),
            io.TextIOWrapper(io.BufferedWriter(io.FileIO(2, "w", closefd=False)),
                             encoding="utf-8", errors="replace"),
        ])


def _fresh_streams() -> None:
    if not CHILD_STREAMS:
        raise RuntimeError("the zygote did not prepare the child streams")
    sys.stdin, sys.stdout, sys.stderr = CHILD_STREAMS


def _compile(code: str) -> Any:
    try:
        return compile(code, "<solution>", "exec")
    except (SyntaxError, ValueError, MemoryError, RecursionError) as exc:
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        _flush_and_exit(EXIT_COMPILE)


def _stdin_from_file(text: str) -> None:
    with open(".stdin", "w", encoding="utf-8") as handle:
        handle.write(text)
    fd = os.open(".stdin", os.O_RDONLY)
    os.dup2(fd, 0)
    os.close(fd)
    os.unlink(".stdin")


def run_program(job: dict) -> None:
    """stdio style: run the solution as __main__ on the prepared stdin."""
    if job.get("stdin"):
        _stdin_from_file(job["stdin"])
    _fresh_streams()
    program = _compile(job["code"])
    namespace = {"__name__": "__main__", "__builtins__": builtins}
    try:
        exec(program, namespace)
        code = 0
    except BaseException as exc:  # noqa: BLE001 - every outcome becomes an exit code
        code = _exit_code_of(exc)
    _flush_and_exit(code)


def _resolve(namespace: dict, name: str) -> Any:
    if callable(namespace.get(name)):
        return namespace[name]
    solution_class = namespace.get("Solution")
    if isinstance(solution_class, type) and hasattr(solution_class, name):
        return getattr(solution_class(), name)
    raise NameError(f"the solution defines no function {name!r}")


def _answer_call(function: Any, request: dict) -> dict:
    try:
        args = decode_value(request["args"])
        value = function(*args)
    except MemoryError:
        return {"raised": "MemoryError", "message": ""}
    except Exception as exc:  # noqa: BLE001 - the candidate's exception is the answer
        return {"raised": type(exc).__name__, "message": str(exc)[:300]}
    try:
        return {"value": encode_value(value)}
    except UnsupportedValue as exc:
        return {"raised": "UnsupportedValue", "message": str(exc)}


def serve_calls(job: dict) -> None:
    """call/assert style: load the solution, then answer {"args"} requests until EOF."""
    _fresh_streams()
    program = _compile(job["code"])
    namespace = {"__name__": "solution", "__builtins__": builtins}
    try:
        exec(program, namespace)
        function = _resolve(namespace, job["entry_point"])
    except BaseException as exc:  # noqa: BLE001
        _flush_and_exit(_exit_code_of(exc))
    write_message(REPLY_FD, {"ready": True})
    while True:
        try:
            request = read_from_parent(REQUEST_FD)
        except EOFError:
            _flush_and_exit(0)
        try:
            reply = _answer_call(function, request)
        except BaseException as exc:  # noqa: BLE001 - SystemExit etc. inside a call
            _flush_and_exit(_exit_code_of(exc))
        write_message(REPLY_FD, reply)


class CandidateRaised(Exception):
    """The sandboxed candidate raised; the judge sees an ordinary exception, as in HumanEval."""


class CandidateGone(BaseException):
    """The sandboxed candidate died or timed out; a check cannot catch this as an Exception."""


class UnsendableArguments(BaseException):
    """The check passed arguments the codec cannot carry: the test, not the solution, is at fault."""


CALLS_MADE = [0]


def _remote_candidate(*args: Any) -> Any:
    try:
        request = {"call": encode_value(list(args))}
    except UnsupportedValue as exc:
        raise UnsendableArguments(str(exc)) from None
    CALLS_MADE[0] += 1
    write_message(REPLY_FD, request)
    reply = read_from_parent(REQUEST_FD)
    if "value" in reply:
        return decode_value(reply["value"])
    if "raised" in reply:
        raise CandidateRaised(f"{reply['raised']}: {reply.get('message', '')}")
    raise CandidateGone(reply.get("gone", "candidate gone"))


def judge(job: dict) -> None:
    """assert style, trusted side: run the dataset's check with a stub that calls the sandbox.

    A check that never reaches the candidate proves nothing: it is reported as a bad test.
    """
    namespace: dict[str, Any] = {"__name__": "judge", "__builtins__": builtins}
    verdict: dict[str, Any]
    try:
        exec(compile(job.get("prompt") or "", "<prompt>", "exec"), namespace)
        namespace[job["entry_point"]] = _remote_candidate
        exec(compile(job["test"], "<test>", "exec"), namespace)
        if callable(namespace.get("check")):
            namespace["check"](_remote_candidate)
        verdict = {"verdict": "pass"}
    except CandidateGone as exc:
        verdict = {"verdict": "gone", "message": str(exc)}
    except UnsendableArguments as exc:
        verdict = {"verdict": "bad_test", "message": f"check passed unsendable arguments: {exc}"}
    except BaseException as exc:  # noqa: BLE001 - any failure of the check is a failed check
        verdict = {"verdict": "fail", "message": f"{type(exc).__name__}: {exc}"[:300]}
    if CALLS_MADE[0] == 0 and verdict["verdict"] != "bad_test":
        verdict = {"verdict": "bad_test", "message": "the check never called the candidate "
                   f"({verdict.get('message', 'passed vacuously')})"[:300]}
    write_message(REPLY_FD, verdict)
    os._exit(0)


def probe(job: dict) -> None:
    """Report what the layers allow from inside: the zygote compares with what it expected."""
    report: dict[str, Any] = {"uid": os.getuid()}
    for name, attempt in _probe_attempts(job).items():
        try:
            attempt()
            report[name] = "allowed"
        except OSError as exc:
            report[name] = f"denied:{exc.errno}"
        except ValueError:
            report[name] = "denied:value"
    write_message(REPLY_FD, report)
    os._exit(0)


def _probe_attempts(job: dict) -> dict[str, Any]:
    import resource
    import socket

    def write_outside() -> None:
        with open(os.path.join(job["outside_dir"], "probe"), "w") as handle:
            handle.write("x")

    def raise_memory_limit() -> None:
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        resource.setrlimit(resource.RLIMIT_AS, (hard, hard + (1 << 20)))

    return {
        "write_outside": write_outside,
        "read_root_only": lambda: open(job["root_only_file"], "rb").close(),
        "socket": lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM).close(),
        "fork": lambda: os._exit(0) if os.fork() == 0 else None,
        "raise_rlimit": raise_memory_limit,
        "write_jobdir": lambda: open("probe_ok", "w").close(),
    }


PROGRAMS = {"stdio": run_program, "calls": serve_calls, "judge": judge, "probe": probe}


def run_child_job() -> None:
    """Entry point after the layers: read one job and run the program it names."""
    try:
        job = read_from_parent(REQUEST_FD)
        PROGRAMS[job["program"]](job)
    except BaseException:  # noqa: BLE001 - never return into the zygote's loop
        traceback.print_exc()
    os._exit(1)

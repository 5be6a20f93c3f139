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
    decode_contents,
    decode_value,
    encode_contents,
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


def _raised(exc: BaseException) -> dict:
    """How a call ended in an exception: its type, the names of its classes (builtin or not)
    so the judge can raise the same type, and its arguments when they can be carried."""
    try:
        arguments = encode_value(list(exc.args))
    except UnsupportedValue:
        arguments = None
    mro = [[cls.__name__, cls.__module__ == "builtins"] for cls in type(exc).__mro__][:16]
    return {"raised": type(exc).__name__, "message": str(exc)[:300], "mro": mro,
            "args": arguments}


def _answer_call(function: Any, request: dict) -> dict:
    """Call the solution. An assert-style request ("sync" present) keeps identities: its
    arguments may hold references, the value may refer to them, and with sync true the new
    contents of every list, dict and set it was given go back (in-place changes show)."""
    table: list | None = [] if "sync" in request else None
    reply: dict[str, Any] = {}
    value = None
    try:
        args = decode_value(request["args"], table)
        value = function(*args)
    except MemoryError:
        reply = {"raised": "MemoryError", "message": "", "mro": [["MemoryError", True]]}
    except Exception as exc:  # noqa: BLE001 - the candidate's exception is the answer
        reply = _raised(exc)
    memo = None if table is None else {id(item): (index, item) for index, item in enumerate(table)}
    try:
        if request.get("sync"):
            reply["state"] = [encode_contents(item, 0, None, memo) for item in table]
        if "raised" not in reply:
            reply["value"] = encode_value(value, 0, None, memo)
    except UnsupportedValue as exc:
        return {"raised": "UnsupportedValue", "message": str(exc), "unsendable": True}
    return reply


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


class CandidateGone(BaseException):
    """The sandboxed candidate died, timed out or answered nonsense; a check cannot catch this
    as an Exception."""


class UnsendableArguments(BaseException):
    """The check passed arguments the codec cannot carry: the test, not the solution, is at fault."""


CALLS_MADE = [0]
JUDGE_NAMESPACE: dict[str, Any] = {}
CANDIDATE_RAISED: list[BaseException] = []  # exceptions the check got from the candidate
MALFORMED = (ValueError, TypeError, KeyError, IndexError, AttributeError, RecursionError)


def _remote_candidate(*args: Any) -> Any:
    """The check's `candidate`: the call runs in the sandbox with plain Python semantics as
    the check sees them: in-place changes to its arguments show, the value may be one of them,
    and an exception arrives as the type the candidate raised."""
    memo: dict[int, tuple[int, Any]] = {}
    try:
        request = {"call": encode_value(list(args), 0, None, memo)}
    except UnsupportedValue as exc:
        raise UnsendableArguments(str(exc)) from None
    held = [item for _, item in memo.values()]
    request["sync"] = len(held) > 1  # the argument list itself is held[0]
    CALLS_MADE[0] += 1
    write_message(REPLY_FD, request)
    reply = read_from_parent(REQUEST_FD)
    try:
        outcome = _apply_reply(reply, held)
    except MALFORMED as exc:
        raise CandidateGone(f"malformed reply from the candidate ({type(exc).__name__})") from None
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome


def _apply_reply(reply: dict, held: list) -> Any:
    """The value (or exception) of a reply, after the held containers take their new contents."""
    if reply.get("unsendable"):
        raise CandidateGone(f"the candidate returned {reply.get('message', '')}"[:300])
    table = list(held)
    states = reply.get("state")
    contents = []
    if states is not None:
        if type(states) is not list or len(states) != len(held):
            raise ValueError("state does not match the arguments")
        contents = [decode_contents(state, type(item), table)
                    for state, item in zip(states, held, strict=True)]
    if "value" in reply:
        outcome = decode_value(reply["value"], table)
    elif "raised" in reply:
        outcome = _rebuild_exception(reply)
    else:
        raise CandidateGone(reply.get("gone", "candidate gone"))
    for item, new in zip(held, contents, strict=False):  # no state: nothing to update
        if type(item) is list:
            item[:] = new
        else:
            item.clear()
            item.update(new)
    return outcome


def _rebuild_exception(reply: dict) -> BaseException:
    """An exception of the type the candidate raised: its first class that is a builtin or is
    defined by the prompt or the test, built from the same arguments. Only an Exception: a
    reply naming SystemExit or another BaseException ends the check as the candidate's end."""
    kind: type[Exception] = Exception
    for name, builtin in reply.get("mro") or [[reply["raised"], True]]:
        found = getattr(builtins, name, None) if builtin else JUDGE_NAMESPACE.get(name)
        if isinstance(found, type) and issubclass(found, Exception):
            kind = found
            break
        if isinstance(found, type) and issubclass(found, BaseException):
            raise CandidateGone(f"the candidate ended with {name}")  # as SystemExit would
    message = str(reply.get("message", ""))
    arguments = [message] if reply.get("args") is None else decode_value(reply["args"])
    if type(arguments) is not list:
        raise ValueError("exception arguments are not a list")
    exc: BaseException | None = None
    for attempt in (arguments, [message]):
        try:
            exc = kind(*attempt)
            break
        except Exception:  # noqa: BLE001 - a constructor that wants other arguments
            continue
    exc = exc or Exception(f"{reply['raised']}: {message}")
    CANDIDATE_RAISED.append(exc)
    return exc


def judge(job: dict) -> None:
    """assert style, trusted side: run the dataset's check with a stub that calls the sandbox.

    A check that never reaches the candidate proves nothing: it is reported as a bad test.
    """
    namespace = JUDGE_NAMESPACE
    namespace.update({"__name__": "judge", "__builtins__": builtins})
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
    except Exception as exc:  # noqa: BLE001 - raised by the candidate or by the check itself
        raised = any(exc is candidate_exc for candidate_exc in CANDIDATE_RAISED)
        verdict = {"verdict": "raised" if raised else "fail", "type": type(exc).__name__,
                   "message": f"{type(exc).__name__}: {exc}"[:300]}
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

"""Hostile programs end with reward 0 inside their deadline and leave nothing behind; honest
controls still pass (a sandbox that fails everything is broken too)."""

from __future__ import annotations

import os
import socket
import sys
import time

import pytest

from workers.verifier import results as R

TEST_TIMEOUT_S = 3.0
SLACK_S = 3.0
UNREACHABLE = "unreachable-7f3a"
SITE_DIR = os.path.dirname(os.__file__)
SENTINELS = ["/pwned", "/tmp/pwned-verifier", os.path.join(SITE_DIR, "pwned_verifier.py"),
             "/dev/shm/pwned-verifier", os.path.join(os.getcwd(), "pwned-verifier")]
ERR = {R.RUNTIME_ERROR}

HOSTILE_STDIO = {
    "busy_loop": ("while True: pass", {R.TIMEOUT}),
    "sleep_forever": ("import time\ntime.sleep(10**6)", {R.TIMEOUT}),
    "huge_sum": ("print(sum(range(10**12)))", {R.TIMEOUT}),
    "fork_bomb": ("import os\nwhile True:\n    os.fork()", ERR),
    "subprocess_shell": ("import subprocess\nprint(subprocess.run(['sh','-c','id'],"
                         "capture_output=True).stdout)", ERR),
    "os_system": ("import os\nprint(os.system('touch /tmp/pwned-verifier'))",
                  {R.WRONG_ANSWER, R.RUNTIME_ERROR}),
    "huge_allocation": ("x = bytearray(64 << 30)", {R.MEMORY}),
    "endless_stdout": ("while True:\n    print('x' * 1000)", {R.OUTPUT_LIMIT}),
    "endless_stderr": ("import sys\nwhile True:\n    sys.stderr.write('y' * 1000)",
                       {R.OUTPUT_LIMIT}),
    "fill_a_file": ("with open('big', 'wb') as h:\n    while True:\n        h.write(b'x' * (1 << 20))",
                    {R.OUTPUT_LIMIT, R.RUNTIME_ERROR}),
    "million_files": ("fs = [open(f'f{i}', 'w') for i in range(10**6)]", ERR),
    "write_root": ("open('/pwned', 'w').write('x')", ERR),
    "write_tmp": ("open('/tmp/pwned-verifier', 'w').write('x')", ERR),
    "write_dev_shm": ("open('/dev/shm/pwned-verifier', 'w').write('x')", ERR),
    "write_site_packages": (f"open({SENTINELS[2]!r}, 'w').write('import os')", ERR),
    "write_repo": (f"open({SENTINELS[4]!r}, 'w').write('x')", ERR),
    "read_shadow": ("print(open('/etc/shadow').read())", ERR),
    "symlink_to_shadow": ("import os\nos.symlink('/etc/shadow', 's')\nprint(open('s').read())",
                          ERR),
    "kill_parent": ("import os\nos.kill(os.getppid(), 9)", ERR),
    "kill_everyone": ("import os\nos.kill(-1, 9)", ERR),
    "ignore_sigterm_spin": ("import signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                            "while True: pass", {R.TIMEOUT}),
    "double_fork_daemon": ("import os, time\nif os.fork() == 0:\n    os.setsid()\n"
                           "    if os.fork() == 0:\n        time.sleep(100)", ERR),
    "exit_zero_before_output": ("import sys\nsys.exit(0)\nprint('x')", {R.WRONG_ANSWER}),
    "atexit_exit_zero": ("import atexit, os\natexit.register(os._exit, 0)\nraise ValueError",
                         ERR),
    "os_exit_zero": ("import os\nos._exit(0)", {R.WRONG_ANSWER}),
    "claims_success": ("print('ALL TESTS PASSED')", {R.WRONG_ANSWER}),
    "echo_stdin": ("import sys\nprint(sys.stdin.read())", {R.WRONG_ANSWER}),
    "null_pointer": ("import ctypes\nctypes.string_at(0)", {R.CRASH}),
    "unbounded_recursion": ("import sys\nsys.setrecursionlimit(10**7)\ndef f(n): return f(n+1)\n"
                            "f(0)", {R.CRASH, R.RUNTIME_ERROR, R.MEMORY, R.TIMEOUT}),
    "giant_int_str": ("print(str(7 ** (10 ** 7)))", {R.RUNTIME_ERROR, R.TIMEOUT}),
    "busy_threads": ("import threading\ndef spin():\n    while True: pass\n"
                     "for _ in range(64): threading.Thread(target=spin).start()",
                     {R.TIMEOUT, R.RUNTIME_ERROR}),
    "raise_rlimit": ("import resource\nresource.setrlimit(resource.RLIMIT_AS, (-1, -1))", ERR),
    "new_session": ("import os\nos.setsid()", ERR),
    "ptrace_parent": ("import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
                      "assert libc.ptrace(16, os.getppid(), 0, 0) == 0", ERR),
    "udp_socket": ("import socket\nsocket.socket(socket.AF_INET, socket.SOCK_DGRAM)", ERR),
    "unix_socket": ("import socket\nsocket.socket(socket.AF_UNIX).connect('/run/x')", ERR),
    "setuid_root": ("import os\nos.setuid(0)", ERR),
    "syntax_error": ("def f(:\n  pass", {R.COMPILE_ERROR}),
    "null_bytes_in_source": ("print(1)\x00", {R.COMPILE_ERROR}),
}

NEEDS_LANDLOCK = {"write_tmp", "write_dev_shm"}  # world-writable: only Landlock stops these

HONEST_STDIO = {
    "stdlib_imports": (
        "import collections, itertools, heapq, json, re, math, fractions, decimal, datetime\n"
        "import functools, bisect, statistics, string, random, typing, dataclasses, enum\n"
        "import zlib, gzip, colorsys, graphlib, xml.etree.ElementTree, csv, array\n"
        "print(math.comb(10, 3), json.dumps([1]), zlib.crc32(b'a') > 0)",
        "120 [1] True"),
    "threads": ("from concurrent.futures import ThreadPoolExecutor\n"
                "with ThreadPoolExecutor(8) as pool:\n"
                "    print(sum(pool.map(lambda x: x * x, range(100))))", "328350"),
    "recursion_3000": ("import sys\nsys.setrecursionlimit(10000)\n"
                       "def depth(n): return 0 if n == 0 else 1 + depth(n - 1)\n"
                       "print(depth(3000))", "3000"),
    "temp_file_in_cwd": ("import tempfile\nopen('scratch.txt', 'w').write('hello')\n"
                         "with tempfile.TemporaryFile() as t:\n    t.write(b'x')\n"
                         "print(open('scratch.txt').read())", "hello"),
    "half_second_compute": ("import time\nt = time.time()\nn = 0\n"
                            "while time.time() - t < 0.5: n += 1\nprint('done')", "done"),
    "reads_stdin": ("import sys\nprint(sum(map(int, sys.stdin.read().split())))", "6"),
}


def stdio_row(code: str, expected: str = UNREACHABLE, stdin: str = "1 2 3\n") -> dict:
    return {"id": "x", "code": code,
            "tests": {"style": "stdio", "cases": [{"stdin": stdin, "stdout": expected}]}}


def sandbox_processes(uids: list[int]) -> list[tuple[int, int, int]]:
    """(pid, uid, parent pid) of every process running under a sandbox uid."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/status") as status:
                    fields = dict(line.split(":", 1) for line in status)
            except (OSError, ValueError):
                continue
            uid = int(fields["Uid"].split()[1])
            if fields["State"].strip().startswith("Z"):
                continue  # already dead; only an init that never reaps (some containers) keeps it
            if uid in uids:
                found.append((int(entry), uid, int(fields["PPid"])))
    return found


def assert_only_idle_children(code_executor) -> None:
    """Each slot may hold exactly one pre-forked child, idle under its zygote; nothing else."""
    zygotes = {slot.uid: slot.process.pid for slot in code_executor.slots}
    processes = sandbox_processes(list(zygotes))
    uids = [uid for _, uid, _ in processes]
    assert len(uids) == len(set(uids)), f"process left behind: {processes}"
    assert all(parent == zygotes[uid] for _, uid, parent in processes), processes


@pytest.fixture(scope="module")
def listener():
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.setblocking(False)
    yield server
    server.close()


def assert_nothing_escaped(code_executor, listener) -> None:
    for path in SENTINELS:
        assert not os.path.exists(path), f"sandbox wrote {path}"
    assert_only_idle_children(code_executor)
    with pytest.raises(BlockingIOError):
        listener.accept()


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(HOSTILE_STDIO))
def test_hostile_program_scores_zero(name, code_verifier, code_executor, listener):
    if name in NEEDS_LANDLOCK and not code_executor.layers["landlock"]:
        pytest.skip("Landlock unavailable: the sandbox runs DEGRADED, world-writable dirs are open")
    code, statuses = HOSTILE_STDIO[name]
    start = time.monotonic()
    result = code_verifier.verify(stdio_row(code))
    assert time.monotonic() - start < TEST_TIMEOUT_S + SLACK_S
    assert result["reward"] == 0.0
    assert result["status"] in statuses, result
    assert_nothing_escaped(code_executor, listener)
    assert code_verifier.verify(stdio_row("print(6)", "6"))["reward"] == 1.0


@pytest.mark.slow
def test_loopback_connection_is_refused(code_verifier, code_executor, listener):
    port = listener.getsockname()[1]
    code = f"import socket\ns = socket.create_connection(('127.0.0.1', {port}))\nprint('in')"
    result = code_verifier.verify(stdio_row(code, "in"))
    assert result["status"] == R.RUNTIME_ERROR
    assert_nothing_escaped(code_executor, listener)


@pytest.mark.parametrize("name", sorted(HONEST_STDIO))
def test_honest_control_passes(name, code_verifier):
    code, expected = HONEST_STDIO[name]
    result = code_verifier.verify(stdio_row(code, expected))
    assert result["status"] == R.OK, result
    assert result["reward"] == 1.0


def test_no_secret_is_readable_from_the_sandbox(code_executor):
    code = (
        "import os\nprint(dict(os.environ))\n"
        "for path in ['/proc/self/environ', '/proc/1/environ', f'/proc/{os.getppid()}/environ',"
        " '/proc/self/cmdline']:\n"
        "    try:\n        print(open(path, 'rb').read())\n"
        "    except OSError as exc:\n        print('denied', path, exc.errno)\n"
    )
    with code_executor.slot() as slot:
        child = slot.spawn("sandbox")
        child.send({"program": "stdio", "code": code, "stdin": ""})
        outcome = child.finish(time.monotonic() + 5)
    text = bytes(outcome.stdout).decode()
    assert "denied /proc/self/environ" in text
    assert os.environ["VERIFIER_TEST_SECRET"] not in text
    assert "VERIFIER_TEST_SECRET" not in text


CALL_TESTS = {"style": "call", "fn_name": "f",
              "cases": [{"args": [2], "expected": 4}, {"args": [5], "expected": 10}]}
HOSTILE_CALL = {
    "eq_always_true": "class Yes:\n    def __eq__(self, other): return True\n"
                      "def f(x): return Yes()",
    "int_subclass": "class I(int):\n    def __eq__(self, other): return True\n"
                    "def f(x): return I(0)",
    "frame_walk": "import sys\ndef f(x):\n    frame = sys._getframe(1)\n"
                  "    return frame.f_locals.get('expected') or frame.f_globals.get('expected')",
    "heap_scan": "import gc\ndef f(x):\n    for o in gc.get_objects():\n"
                 "        if isinstance(o, dict) and 'expected' in o: return o['expected']",
    "exit_at_import": "import sys\nsys.exit(0)",
    "exit_inside_call": "import os\ndef f(x): os._exit(0)",
    "bool_for_int": "def f(x): return True",
    "float_for_int": "def f(x): return float(x * 2)",
    "string_for_int": "def f(x): return str(x * 2)",
    "spins_in_call": "def f(x):\n    while True: pass",
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(HOSTILE_CALL))
def test_hostile_call_solution_scores_zero(name, code_verifier, code_executor, listener):
    start = time.monotonic()
    result = code_verifier.verify({"id": name, "code": HOSTILE_CALL[name], "tests": CALL_TESTS})
    assert time.monotonic() - start < 2 * TEST_TIMEOUT_S + SLACK_S
    assert result["reward"] == 0.0, result
    assert_nothing_escaped(code_executor, listener)


ASSERT_TESTS = {"style": "assert", "entry_point": "add",
                "test": "def check(candidate):\n    assert candidate(1, 2) == 3\n"
                        "    assert candidate(10, -1) == 9\n"}
HOSTILE_ASSERT = {
    "eq_always_true": "class Yes:\n    def __eq__(self, other): return True\n"
                      "def add(a, b): return Yes()",
    "find_check_in_memory": "import gc\ndef add(a, b):\n    for o in gc.get_objects():\n"
                            "        if isinstance(o, str) and 'candidate' in o: return o\n",
    "frame_walk": "import sys\ndef add(a, b):\n    f = sys._getframe(1)\n"
                  "    while f.f_back: f = f.f_back\n    return f.f_globals.get('check')",
    "exit_inside_call": "def add(a, b): raise SystemExit(0)",
    "atexit_exit_zero": "import atexit, os\natexit.register(os._exit, 0)\ndef add(a, b): return 0",
    "prints_success": "def add(a, b):\n    print('ALL TESTS PASSED')\n    return 0",
    "wrong_answer": "def add(a, b): return a - b",
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(HOSTILE_ASSERT))
def test_hostile_assert_solution_scores_zero(name, code_verifier, code_executor, listener):
    result = code_verifier.verify({"id": name, "code": HOSTILE_ASSERT[name],
                                   "tests": ASSERT_TESTS})
    assert result["reward"] == 0.0, result
    assert_nothing_escaped(code_executor, listener)


def test_honest_assert_and_call_solutions_pass(code_verifier):
    add = code_verifier.verify({"id": 1, "code": "def add(a, b): return a + b",
                                "tests": ASSERT_TESTS})
    double = code_verifier.verify({"id": 2, "code": "def f(x): return 2 * x",
                                   "tests": CALL_TESTS})
    assert (add["status"], double["status"]) == (R.OK, R.OK)
    assert add["reward"] == double["reward"] == 1.0


def test_layers_are_reported(code_verifier):
    layers = code_verifier.verify(stdio_row("print(6)", "6"))["layers"]
    assert layers["rlimits"] is True
    if os.geteuid() == 0:
        assert layers["uid"] and all(uid >= 1000 for uid in layers["uid"])
    assert "degraded" in layers
    print(f"\nisolation layers on this machine ({sys.platform}): {layers}")


@pytest.mark.slow
def test_dead_zygote_is_an_infra_error_then_replaced(code_verifier, code_executor):
    import signal

    for slot in code_executor.slots:
        os.kill(slot.process.pid, signal.SIGKILL)
    statuses = [code_verifier.verify(stdio_row("print(6)", "6"))["status"] for _ in range(4)]
    assert R.INFRA_ERROR in statuses
    assert statuses[-1] == R.OK
    assert all(slot.process.poll() is None for slot in code_executor.slots)


@pytest.mark.parametrize("test_source", [
    "def check(candidate):\n    pass\n",
    "def check(candidate):\n    assert undefined_helper(1) == 2\n",
    "def check(candidate):\n    assert candidate(lambda: 1) == 2\n",
])
def test_checks_that_never_reach_the_candidate_are_bad_input(test_source, code_verifier):
    result = code_verifier.verify({"id": 1, "code": "def add(a, b): return a + b", "tests": {
        "style": "assert", "entry_point": "add", "test": test_source}})
    assert result["status"] == R.BAD_INPUT and R.is_masked(result)


def test_each_child_has_its_own_random_stream(code_executor):
    """The zygote preloads no `random` (its fork hook costs every child): each child that
    imports it must still seed its own generator, so two runs never share a stream."""
    draws = []
    for _ in range(2):
        with code_executor.slot() as slot:
            child = slot.spawn("sandbox")
            child.send({"program": "stdio", "code": "import random\nprint(random.getrandbits(64))",
                        "stdin": ""})
            outcome = child.finish(time.monotonic() + 5)
        assert outcome.returncode == 0, bytes(outcome.stderr)
        draws.append(bytes(outcome.stdout))
    assert draws[0] != draws[1]

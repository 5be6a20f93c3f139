"""Math verifier: extraction and fast paths in-process, Math-Verify in a pool of killable workers.

Workers are plain subprocesses (Math-Verify runs in their main thread); the parent holds a hard
deadline per answer, SIGKILLs and respawns a worker that overruns or dies, and recycles
workers after a number of jobs. Safe to call from any thread, including Ray actor threads.
"""

from __future__ import annotations

import contextlib
import os
import select
import subprocess
import sys
import tempfile
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from workers.verifier import math_extract as X
from workers.verifier import math_forms as F
from workers.verifier import results as R
from workers.verifier.executor import REPO_ROOT
from workers.verifier.wire import FrameBuffer, pack_message

SPAWN_TIMEOUT_S = 60.0
MAX_START_FAILURES = 3
OUT_OF_MEMORY = ("MemoryError", "Cannot allocate memory", "failed to map segment")
CACHE_ENTRIES = 8192


@dataclass(frozen=True)
class MathLimits:
    """Math-Verify's own timeout per step, the parent's hard deadline per answer, worker memory
    cap, pool size and recycling period."""

    timeout_s: int = 3
    hard_timeout_s: float = 10.0
    memory_mb: int = 2048
    workers: int = 2
    recycle_after: int = 2000


class MathWorker:
    """One worker subprocess and what it is working on."""

    def __init__(self, limits: MathLimits) -> None:
        # read only to say why a worker did not start; closed by kill()
        self.stderr = tempfile.TemporaryFile()  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, "-m", "workers.verifier.math_worker", str(limits.memory_mb),
             str(max(1, int(limits.timeout_s)))],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr,
            cwd=REPO_ROOT, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": REPO_ROOT,
                                "LANG": "C.UTF-8"},
        )
        self.fd = self.process.stdout.fileno()
        os.set_blocking(self.fd, False)
        self.buffer = FrameBuffer()
        self.ready = False
        self.started = time.monotonic()
        self.jobs = 0
        self.task: int | None = None
        self.task_deadline = 0.0

    def send(self, task: int, gold: str, answer: str, deadline: float) -> None:
        self.task, self.task_deadline = task, deadline
        self.jobs += 1
        self.process.stdin.write(pack_message({"gold": gold, "answer": answer}))
        self.process.stdin.flush()

    def read_frames(self) -> list[Any] | None:
        """Frames available now; None when the worker's stdout closed (it died)."""
        try:
            chunk = os.read(self.fd, 1 << 16)
        except BlockingIOError:
            return []
        return None if not chunk else self.buffer.feed(chunk)

    def start_failure(self) -> str:
        """Why a worker that closed its output before it was ready died: how it ended and the
        last line it wrote to stderr (a traceback's last line names the exception)."""
        try:
            status = self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.kill()
            status = self.process.returncode
        self.stderr.seek(0, os.SEEK_END)
        self.stderr.seek(max(0, self.stderr.tell() - 4096))
        lines = self.stderr.read().decode("utf-8", errors="replace").strip().splitlines()
        how = f"killed by signal {-status}" if status < 0 else f"exit status {status}"
        return f"{how}: {lines[-1].strip() if lines else 'nothing on stderr'}"

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()
        self.process.wait()
        for stream in (self.process.stdin, self.process.stdout, self.stderr):
            with contextlib.suppress(OSError):
                stream.close()


class MathWorkerPool:
    """Dispatches (gold, answer) pairs to workers, one at a time each, under hard deadlines."""

    def __init__(self, limits: MathLimits) -> None:
        self.limits = limits
        self.lock = threading.Lock()
        self.workers = [MathWorker(limits) for _ in range(limits.workers)]
        self.start_failures = 0  # workers in a row that died before they were ready

    def compare_many(self, pairs: list[tuple[str, str]], deadline: float) -> list[dict]:
        """One verdict per pair: {"equal", "reason"} or {"status": timeout|crash|infra_error}."""
        with self.lock:
            verdicts: list[dict | None] = [None] * len(pairs)
            waiting = deque(range(len(pairs)))
            while waiting or any(worker.task is not None for worker in self.workers):
                if time.monotonic() >= deadline:
                    self._abandon(verdicts, waiting)
                    break
                self._dispatch(pairs, waiting)
                self._collect(verdicts, deadline)
            return verdicts  # type: ignore[return-value]

    def close(self) -> None:
        for worker in self.workers:
            worker.kill()

    def _dispatch(self, pairs: list[tuple[str, str]], waiting: deque) -> None:
        for worker in self.workers:
            if waiting and worker.ready and worker.task is None:
                task = waiting.popleft()
                worker.send(task, *pairs[task], time.monotonic() + self.limits.hard_timeout_s)

    def _collect(self, verdicts: list, deadline: float) -> None:
        wake = min([deadline] + [w.task_deadline for w in self.workers if w.task is not None]
                   + [w.started + SPAWN_TIMEOUT_S for w in self.workers if not w.ready])
        by_fd = {worker.fd: worker for worker in self.workers}
        readable, _, _ = select.select(list(by_fd), [], [], max(wake - time.monotonic(), 0))
        for fd in readable:
            self._read(by_fd[fd], verdicts)
        now = time.monotonic()
        for worker in list(self.workers):
            if worker.task is not None and now >= worker.task_deadline:
                verdicts[worker.task] = {"status": R.TIMEOUT, "reason": "comparison timed out"}
                self._replace(worker)
            elif not worker.ready and now >= worker.started + SPAWN_TIMEOUT_S:
                raise RuntimeError(f"math worker did not start within {SPAWN_TIMEOUT_S:.0f} s")

    def _read(self, worker: MathWorker, verdicts: list) -> None:
        frames = worker.read_frames()
        if frames is None and not worker.ready:
            self._start_failed(worker)
            return
        if frames is None:
            if worker.task is not None:
                verdicts[worker.task] = {"status": R.CRASH, "reason": "comparison killed its worker"}
            self._replace(worker)
            return
        for frame in frames:
            if frame.get("ready"):
                worker.ready = True
                self.start_failures = 0
            elif worker.task is not None:
                verdicts[worker.task] = frame
                worker.task = None
        if worker.task is None and worker.jobs >= self.limits.recycle_after:
            self._replace(worker)

    def _start_failed(self, worker: MathWorker) -> None:
        """Replace a worker that died while starting; after MAX_START_FAILURES in a row (a
        memory cap too small, an interpreter without math_verify), stop and say why instead of
        respawning until the batch deadline."""
        cause = worker.start_failure()
        self.start_failures += 1
        self._replace(worker)
        if self.start_failures >= MAX_START_FAILURES:
            hint = f" (memory_mb={self.limits.memory_mb} is too small?)" \
                if any(mark in cause for mark in OUT_OF_MEMORY) else ""
            raise RuntimeError(f"math worker did not start: {cause}{hint}")

    def _replace(self, worker: MathWorker) -> None:
        worker.kill()
        self.workers[self.workers.index(worker)] = MathWorker(self.limits)

    def _abandon(self, verdicts: list, waiting: deque) -> None:
        for worker in self.workers:
            if worker.task is not None:
                verdicts[worker.task] = {"status": R.INFRA_ERROR, "reason": "batch deadline"}
                self._replace(worker)
        for task in waiting:
            verdicts[task] = {"status": R.INFRA_ERROR, "reason": "batch deadline"}
        waiting.clear()


def gold_text(ground_truth: Any) -> str:
    """The reference as canonical text: a number by its exact decimal text (never 1e-05), a
    boxed or GSM8K-style (`... #### 72`) solution by its final answer. A blank reference is no
    reference: ValueError (the row is bad_input, never rewarded)."""
    if isinstance(ground_truth, str):
        text = ground_truth
    elif isinstance(ground_truth, int | float | Decimal) and not isinstance(ground_truth, bool):
        text = F.number_text(ground_truth)
    else:
        raise ValueError("ground_truth must be a string or a number")
    if "\\boxed" in text or "\\fbox" in text:
        boxed = X.last_boxed(text)
        text = boxed if boxed is not None else text
    elif X.GSM8K_MARK in text:
        text = X.gsm8k_answer(text) or ""
    text = F.canonical(text)
    if not F.normalize(text):
        raise ValueError("ground_truth is blank: no usable reference")
    return text


class MathVerifier:
    """Scores math rows {"id", "response", "ground_truth", "data_source"?, "answer_format"?}
    (answer_format: boxed (default) | gsm8k | final_number, see math_extract.extract_answer)."""

    def __init__(self, limits: MathLimits | None = None) -> None:
        self.limits = limits or MathLimits()
        self.pool = MathWorkerPool(self.limits)
        self.cache: OrderedDict[tuple[str, str], dict] = OrderedDict()
        self.layers = {"worker_processes": self.limits.workers,
                       "rlimit_as_mb": self.limits.memory_mb,
                       "hard_timeout_s": self.limits.hard_timeout_s,
                       "main_thread_timeouts": True}

    def verify(self, row: dict[str, Any], deadline: float | None = None) -> dict[str, Any]:
        return self.verify_many([row], deadline)[0]

    def verify_many(self, rows: list[dict[str, Any]], deadline: float | None = None) -> list[dict]:
        """Results in input order; only rows that need Math-Verify reach the worker pool."""
        deadline = deadline or time.monotonic() + self.limits.hard_timeout_s * (len(rows) + 2)
        results: list[dict | None] = []
        pending: list[tuple[int, str, str]] = []
        for index, row in enumerate(rows):
            result, pair = self._prepare(row)
            if result is not None:
                result["layers"] = self.layers
            results.append(result)
            if pair:
                pending.append((index, *pair))
        pairs = list(dict.fromkeys((gold, answer) for _, gold, answer in pending
                                   if (gold, answer) not in self.cache))
        if pairs:
            try:
                verdicts = self.pool.compare_many(pairs, deadline)
            except Exception as exc:  # noqa: BLE001 - the pool failed, not the answers
                verdicts = [{"status": R.INFRA_ERROR, "reason": str(exc)}] * len(pairs)
            fresh = dict(zip(pairs, verdicts, strict=True))
        else:
            fresh = {}
        for index, gold, answer in pending:
            verdict = fresh.get((gold, answer)) or self.cache[(gold, answer)]
            results[index] = self._verdict_result(rows[index].get("id"), verdict)
            results[index]["layers"] = self.layers
        self._remember(fresh)
        return results  # type: ignore[return-value]

    def _remember(self, verdicts: dict[tuple[str, str], dict]) -> None:
        """Keep definite verdicts (not timeouts or crashes) in a bounded LRU cache."""
        for pair, verdict in verdicts.items():
            if "status" not in verdict:
                self.cache[pair] = verdict
                self.cache.move_to_end(pair)
        while len(self.cache) > CACHE_ENTRIES:
            self.cache.popitem(last=False)

    def close(self) -> None:
        self.pool.close()

    def _prepare(self, row: Any) -> tuple[dict | None, tuple[str, str] | None]:
        """A final result when no worker is needed, else the (gold, answer) pair to compare."""
        row_id = row.get("id") if isinstance(row, dict) else None
        try:
            response = row["response"]
            if not isinstance(response, str):
                raise ValueError("response must be a string")
            gold = gold_text(row["ground_truth"])
            data_source = str(row.get("data_source") or "")
            answer_format = str(row.get("answer_format") or "boxed")
            if answer_format not in X.ANSWER_FORMATS:
                raise ValueError(f"answer_format {answer_format!r} not in {X.ANSWER_FORMATS}")
        except (KeyError, TypeError, ValueError) as exc:
            return R.make_result(row_id, R.BAD_INPUT, message=f"bad math row: {exc}"), None
        try:
            extracted = X.extract_answer(response, data_source, answer_format)
            answer = F.canonical(X.sanitize(extracted)) if extracted is not None else ""
        except X.AnswerRejected as exc:
            return R.make_result(row_id, R.INVALID_ANSWER, message=str(exc)), None
        if not F.normalize(answer):
            return R.make_result(row_id, R.NO_ANSWER, message="no final answer found"), None
        return self._fast_path(row_id, gold, answer)

    @staticmethod
    def _fast_path(row_id: Any, gold: str, answer: str) -> tuple[dict | None, tuple | None]:
        """Hedges, then exact decisions (same text, plain numbers, lists item by item)."""
        if X.is_hedged(answer, gold):
            return R.make_result(row_id, R.WRONG_ANSWER, message="hedged answer"), None
        if F.has_digit_gap(answer) and not F.has_digit_gap(gold):
            return R.make_result(row_id, R.WRONG_ANSWER,
                                 message="digits separated by a space (neither a mixed number "
                                 "nor a thousands group)"), None
        verdict = F.structured_verdict(gold, answer, F.fast_leaf)
        if verdict is F.NOT_A_LIST:
            verdict = F.fast_leaf(gold, answer)
        if verdict is None:
            return None, (gold, answer)
        status = R.OK if verdict else R.WRONG_ANSWER
        return R.make_result(row_id, status, passed=int(verdict),
                             message="exact comparison"), None

    @staticmethod
    def _verdict_result(row_id: Any, verdict: dict) -> dict:
        if "status" in verdict:
            return R.make_result(row_id, verdict["status"], message=verdict.get("reason", ""))
        if verdict.get("memory"):
            return R.make_result(row_id, R.MEMORY, message="comparison ran out of memory")
        if verdict.get("equal"):
            return R.make_result(row_id, R.OK, passed=1, message=verdict.get("reason", ""))
        return R.make_result(row_id, R.WRONG_ANSWER, message=verdict.get("reason", ""))

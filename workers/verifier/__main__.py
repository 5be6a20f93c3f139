"""Command line: `python -m workers.verifier code|math --input X.jsonl --output Y.jsonl`.

Each input line gives one output line, in order; a malformed line becomes a bad_input row.
Runs on local processes unless --ray is given.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any

from workers.verifier import results as R
from workers.verifier.code import CodeLimits, CodeVerifier
from workers.verifier.executor import CodeExecutor, ExecLimits
from workers.verifier.math_verifier import MathLimits, MathVerifier


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m workers.verifier", description=__doc__)
    parser.add_argument("kind", choices=("code", "math"))
    parser.add_argument("--input", required=True, help="JSONL file of rows")
    parser.add_argument("--output", required=True, help="JSONL file of results")
    parser.add_argument("--timeout", type=float, default=None,
                        help="seconds per test (code, default 5) or per answer (math, default 10)")
    parser.add_argument("--memory-mb", type=int, default=None,
                        help="memory cap per sandboxed run (default 1024) or math worker (2048)")
    parser.add_argument("--output-limit-mb", type=float, default=None,
                        help="cap on a code run's stdout and on its stderr, in MiB "
                        f"(default {ExecLimits.output_bytes >> 20})")
    parser.add_argument("--workers", type=int, default=2, help="sandbox slots / math workers")
    parser.add_argument("--sandbox", choices=("auto", "strict"), default="auto",
                        help="code: auto runs with the strongest isolation this machine has "
                        "(a warning names missing layers); strict refuses to start without all")
    parser.add_argument("--ray", action="store_true", help="use a Ray cluster (address=auto "
                        "if one runs, else a local one)")
    parser.add_argument("--batch-deadline", type=float, default=3600.0)
    return parser.parse_args(argv)


def read_rows(path: str) -> list[Any]:
    """Parsed rows; a line that is not a JSON object becomes a string describing the fault.
    A row's numeric ground_truth keeps its exact decimal text (0.00001 stays 0.00001, never
    the float 1e-05); every other number is an ordinary int or float."""
    rows: list[Any] = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line, parse_float=Decimal)
            except json.JSONDecodeError as exc:
                row = f"line {number}: not JSON ({exc.msg})"
            if isinstance(row, dict):
                row = {key: value if key == "ground_truth" else _floats(value)
                       for key, value in row.items()}
            rows.append(row if isinstance(row, dict | str) else f"line {number}: not an object")
    return rows


def _floats(value: Any) -> Any:
    """Decimals (how the reader keeps a JSON number's text) back to floats."""
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, list):
        return [_floats(item) for item in value]
    if isinstance(value, dict):
        return {key: _floats(item) for key, item in value.items()}
    return value


def limits_from(args: argparse.Namespace) -> dict[str, Any]:
    code_timeout = args.timeout or 5.0
    output_bytes = ExecLimits.output_bytes if args.output_limit_mb is None \
        else max(1, int(args.output_limit_mb * (1 << 20)))
    return {
        "code": CodeLimits(test_timeout_s=code_timeout),
        "sandbox": ExecLimits(max_timeout_s=max(code_timeout, 1.0),
                              memory_mb=args.memory_mb or 1024, output_bytes=output_bytes),
        "math": MathLimits(hard_timeout_s=args.timeout or 10.0, memory_mb=args.memory_mb or 2048,
                           workers=args.workers),
    }


def verify_local(kind: str, rows: list[dict], args: argparse.Namespace) -> list[dict]:
    limits = limits_from(args)
    if kind == "math":
        verifier = MathVerifier(limits["math"])
        try:
            return verifier.verify_many(rows, time.monotonic() + args.batch_deadline)
        finally:
            verifier.close()
    executor = CodeExecutor(args.workers, limits["sandbox"], strict=args.sandbox == "strict")
    try:
        verifier = CodeVerifier(executor, limits["code"])
        with ThreadPoolExecutor(max_workers=args.workers) as threads:
            return list(threads.map(verifier.verify, rows))
    finally:
        executor.close()


def verify_ray(kind: str, rows: list[dict], args: argparse.Namespace) -> list[dict]:
    import ray

    from workers.verifier.ray_pool import VerifierLimits, VerifierPool

    _ray_init(ray)
    pool = VerifierPool({kind: 1}, VerifierLimits(**limits_from(args), code_slots_per_actor=args.workers,
                                                  strict_sandbox=args.sandbox == "strict"))
    try:
        return pool.verify_batch([dict(row, kind=kind) for row in rows], args.batch_deadline)
    finally:
        pool.shutdown()
        ray.shutdown()


def _ray_init(ray: Any) -> None:
    try:
        ray.init(address="auto", include_dashboard=False, log_to_driver=False)
    except (ConnectionError, RuntimeError):
        ray.init(include_dashboard=False, log_to_driver=False)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rows = read_rows(args.input)
    good = [row for row in rows if isinstance(row, dict)]
    verify = verify_ray if args.ray else verify_local
    verified = iter(verify(args.kind, good, args) if good else [])
    with open(args.output, "w", encoding="utf-8") as out:
        for row in rows:
            result = next(verified) if isinstance(row, dict) else R.make_result(
                None, R.BAD_INPUT, message=row)
            out.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

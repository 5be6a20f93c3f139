"""Which dtype the CPU learner should compute in on this machine: a learner step of the SmolLM2
pilot's shape (2 micro-batches of 11 rows x 92 tokens, 1,024-token budget, ZeRO 0, AdamW)
through the learner's own code (launch/rehearse/probe.py), in float32 and in bfloat16
(DeepSpeed's bf16), each in a fresh process, alternating for --rounds rounds; beside it a
576 x 1536 matmul (the model's MLP shape at 1,012 tokens) timed in each dtype, and the CPU's
bf16 flags and vendor. riskpo/models/precision.py's `auto` follows what this prints.

    .venv/bin/python bench/learner_precision.py                    # the converted pilot model
    .venv/bin/python bench/learner_precision.py --threads 2 --rounds 2

Prints one JSON line per process, then the medians and the bf16/fp32 ratios (above 1: bf16
slower). The machine is shared: compare within one run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DTYPES = ("float32", "bfloat16")


def parse_args() -> argparse.Namespace:
    from launch.prepare_pilot import prepare_model
    from riskpo.models.warmstart import cache_root

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="a HF model directory (default: the converted pilot model, converted if absent)")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3, help="updates timed per process (first dropped)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--one", choices=DTYPES, help=argparse.SUPPRESS)  # a child process
    args = parser.parse_args()
    args.model = args.model or str(prepare_model(cache_root(None)))
    return args


def matmul_ms(dtype_name: str, reps: int = 10) -> float:
    import torch

    dtype = getattr(torch, dtype_name)
    a, b = torch.randn(1012, 576, dtype=dtype), torch.randn(576, 1536, dtype=dtype)
    a @ b
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    return (time.perf_counter() - start) / reps * 1e3


def one(args: argparse.Namespace) -> dict:
    """This process: the learner step in args.one, and the matmul in the same dtype."""
    import torch

    from launch.rehearse import probe

    torch.set_num_threads(args.threads)
    learner = {"zero_stage": 0, "dtype": args.one, "lr": 1e-5, "micro_batch_token_budget": 1024}
    request = probe.ProbeRequest(model_path=args.model, learner=learner, prompt_tokens=30,
                                 response_tokens=62, micro_batches=2)
    backend = probe.start_learner(request)

    untracked = SimpleNamespace(phase=lambda name: contextlib.nullcontext())  # time only, no memory
    cpu = time.process_time()
    result = probe.train_steps(backend, request, untracked, steps=args.steps)
    return {"dtype": args.one, "threads": args.threads, "tokens": result["tokens"],
            "step_s": [round(s, 2) for s in result["seconds"]], "cpu_s": round(time.process_time() - cpu, 1),
            "matmul_ms": round(matmul_ms(args.one), 1)}


def main() -> int:
    args = parse_args()
    if args.one:
        print(json.dumps(one(args)), flush=True)
        return 0
    from riskpo.models.precision import cpu_flags, cpu_vendor, resolve_dtype

    flags = sorted(flag for flag in cpu_flags() if "bf16" in flag or flag.startswith("amx"))
    print(f"CPU {cpu_vendor() or 'vendor unknown'}, bf16 flags: {flags or 'none'} (learner.dtype=auto "
          f"resolves to {resolve_dtype('auto', False, 'learner')} here); {args.threads} thread(s)")
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    runs: dict[str, list[dict]] = {dtype: [] for dtype in DTYPES}
    for _ in range(args.rounds):
        for dtype in DTYPES:
            out = subprocess.run([sys.executable, __file__, "--one", dtype, "--model", args.model,
                                  "--steps", str(args.steps), "--threads", str(args.threads)],
                                 env=env, capture_output=True, text=True, check=False)
            lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
            if out.returncode or not lines:
                raise SystemExit(f"the {dtype} learner failed:\n{out.stderr[-3000:]}")
            print(lines[-1], flush=True)
            runs[dtype].append(json.loads(lines[-1]))
    step = {d: statistics.median(s for run in runs[d] for s in run["step_s"][1:]) for d in DTYPES}
    mm = {d: statistics.median(run["matmul_ms"] for run in runs[d]) for d in DTYPES}
    print("\n| dtype | learner step s (median, first dropped) | matmul ms |\n| --- | --- | --- |")
    for dtype in DTYPES:
        print(f"| {dtype} | {step[dtype]:.2f} | {mm[dtype]:.1f} |")
    print(f"bf16 / fp32: learner step {step['bfloat16'] / step['float32']:.2f}x, "
          f"matmul {mm['bfloat16'] / mm['float32']:.2f}x (above 1: bf16 slower)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

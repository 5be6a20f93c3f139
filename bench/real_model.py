"""The SmolLM2 pilot at this machine's limit (issue 25): a pilot step's phases, one evaluation,
the workers' start and the whole run's peak memory, with today's settings and the new ones
alternating in one run, and the learner's achieved FLOP/s against a bf16 matrix multiply
measured in the same run.

    flock /work/bench.lock .venv-vllm/bin/python bench/real_model.py            # 2 rounds, 6 steps
    flock /work/bench.lock .venv-vllm/bin/python bench/real_model.py --rounds 1 --steps 4

Every run is `riskpo-train experiment=smollm2-pilot algorithm=grpo` for --steps steps (an
evaluation before training: the one measured; the last step's is not), a fresh process tree,
with one of the settings below on top; each round runs every setting once, in turn (the
machine is shared and noisy: compare within a round, as the printed ratios do).

    today    float32 engines and learner, one thread per rollout actor and learner rank
    new      the defaults: dtype auto (precision.py: the engines bf16 with AMX or AVX512-BF16,
             the learner with AMX or AMD's AVX512-BF16), thread shares auto
    stage1   new, with a bf16 learner at ZeRO stage 1 (DeepSpeed's BF16_Optimizer, float32
             gradient sums; the pilot's stage 0 sums them in bf16)
    overlap  new, with trainer.off_policy_steps=1 (generation overlaps training)

Per run, medians over the steps after the first: the step, generation (and its tokens/s), the
old-log-prob pass, training, weight sync; the initial evaluation; "workers ready" (engines
started, learner loaded: events.jsonl); the peak Pss summed over the run's process tree
(sampled every 0.5 s), and the learner rank's and the rollout actor's own peaks (--json: the
eight largest processes' peaks). The learner's FLOP/s counts 6 x parameters (the tied embedding once) x
the tokens its training forwards ran on (actor/sequence_tokens), over its log-prob and train
phases together; the bf16 (and float32) rate of a 2048 x 2048 matmul on the node's cores is
measured before each round. Prints a table; --json writes every run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from peak_memory import measured_train  # noqa: E402

SETTINGS = {
    "today": ["model.dtype=float32", "learner.dtype=float32",
              "cluster.rollout_threads_per_actor=1", "cluster.learner_threads_per_rank=1"],
    "stage1": ["learner.zero_stage=1", "learner.dtype=bfloat16"],
    "new": [],
    "overlap": ["trainer.off_policy_steps=1"],
}
PHASES = ("step", "generate", "logprobs", "train", "sync")
MATMUL_SIZE = 2048


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    parser.add_argument("--riskpo-train", default=str(Path(sys.executable).parent / "riskpo-train"))
    parser.add_argument("--json", help="write every run's figures here")
    return parser.parse_args()


def matmul_gflops(dtype: torch.dtype, threads: int, size: int = MATMUL_SIZE, reps: int = 10) -> float:
    """The best rate of a size x size matmul on `threads` threads: this machine's practical limit."""
    torch.set_num_threads(threads)
    a, b = torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype)
    for _ in range(3):
        a @ b
    seconds = []
    for _ in range(reps):
        started = time.perf_counter()
        a @ b
        seconds.append(time.perf_counter() - started)
    return 2 * size**3 / min(seconds) / 1e9


def policy_parameters(model_path: str) -> int:
    """The pilot model's parameters, each counted once (the tied embedding and output layer once)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_path))
    return sum(parameter.numel() for parameter in model.parameters())


def run_pilot(setting: str, steps: int, riskpo_train: str) -> dict:
    """One pilot run of the setting; its figures (see the module docstring)."""
    run_dir = Path(tempfile.mkdtemp(prefix=f"real-model-{setting}-"))
    command = [riskpo_train, "experiment=smollm2-pilot", "algorithm=grpo", f"trainer.total_steps={steps}",
               "trainer.eval_before_training=true", "trainer.eval_every=0", "trainer.save_every=0",
               "logger.backend=none", "logger.plots=false", "logger.progress=none", "seed=0",
               f"run_dir={run_dir}", *SETTINGS[setting]]
    rows, memory, _ = measured_train(command, run_dir, ROOT, setting)
    peak = memory.stop()
    later = rows[1:] or rows

    def median(key: str) -> float:
        return statistics.median(row.get(key, 0.0) for row in later)

    figures = {phase: median(f"time/{phase}") for phase in PHASES}
    figures["tokens_per_s"] = median("rollout/tokens_per_s")
    figures["sequence_tokens"] = median("actor/sequence_tokens")
    figures["logprob_gap"] = median("actor/rollout_learner_logprob_gap")
    figures["eval"] = json.loads((run_dir / "summary.json").read_text())["initial"]["time/eval"]
    figures["workers_ready"] = _workers_ready(run_dir)
    figures["peak_pss_gib"] = peak
    figures["learner_pss_gib"] = memory.peak_of("ray::LearnerWorker")
    figures["engine_pss_gib"] = memory.peak_of("ray::RolloutActor")
    figures["pss_by_process_gib"] = {name: round(size / 1024**3, 2) for name, size in
                                     sorted(memory.by_name.items(), key=lambda item: -item[1])[:8]}
    config = (run_dir / "config.yaml").read_text()
    figures["model_path"] = next(line.split(":", 1)[1].strip() for line in config.splitlines()
                                 if line.strip().startswith("path:"))
    return figures


def _workers_ready(run_dir: Path) -> float:
    for line in (run_dir / "events.jsonl").read_text().splitlines():
        event = json.loads(line)
        if event.get("kind") == "startup":
            return float(event["message"].split(" in ")[1].rstrip("s"))
    return float("nan")


def learner_gflops(figures: dict, parameters: int) -> float:
    """6 x parameters x tokens over the learner's log-prob and train phases, in GFLOP/s."""
    return 6 * parameters * figures["sequence_tokens"] / (figures["logprobs"] + figures["train"]) / 1e9


def print_table(runs: list[dict], parameters: int) -> None:
    settings = list(dict.fromkeys(run["setting"] for run in runs))
    columns = ("step", "generate", "tokens_per_s", "logprobs", "train", "sync", "eval",
               "workers_ready", "peak_pss_gib", "learner_pss_gib", "engine_pss_gib",
               "learner_gflops", "of_bf16_matmul")
    print("\n| setting | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for setting in settings:
        mine = [run for run in runs if run["setting"] == setting]
        values = [statistics.median(run[column] for run in mine) for column in columns]
        print(f"| {setting} | " + " | ".join(f"{value:.3g}" for value in values) + " |")
    for setting in settings[1:]:
        ratios = [today["step"] / run["step"] for today, run in _pairs(runs, settings[0], setting)]
        memory = [run["peak_pss_gib"] / today["peak_pss_gib"] for today, run in _pairs(runs, settings[0], setting)]
        print(f"{setting} vs {settings[0]}, per round: step speed-up "
              f"{', '.join(f'{r:.2f}x' for r in ratios)}; peak memory {', '.join(f'{m:.2f}x' for m in memory)}")
    rates = ", ".join(f"{run['bf16_matmul_gflops']:.0f}" for run in runs if run["setting"] == settings[0])
    print(f"learner FLOP/s = 6 x {parameters / 1e6:.1f}M parameters (tied embedding once) x tokens "
          "trained per step / (logprobs + train seconds); of_bf16_matmul: that over the bf16 "
          f"{MATMUL_SIZE}^2 matmul rate measured before each round ({rates} GFLOP/s)")


def _pairs(runs: list[dict], first: str, second: str) -> list[tuple[dict, dict]]:
    by_round = {}
    for run in runs:
        by_round.setdefault(run["round"], {})[run["setting"]] = run
    return [(found[first], found[second]) for found in by_round.values() if first in found and second in found]


def main() -> int:
    args = parse_args()
    threads = len(os.sched_getaffinity(0))
    runs: list[dict] = []
    parameters = 0
    for round_index in range(args.rounds):
        bf16 = matmul_gflops(torch.bfloat16, threads)
        fp32 = matmul_gflops(torch.float32, threads)
        print(f"round {round_index + 1}: {MATMUL_SIZE}^2 matmul on {threads} threads: bf16 "
              f"{bf16:.0f} GFLOP/s, float32 {fp32:.0f} GFLOP/s", flush=True)
        for setting in args.settings:
            figures = run_pilot(setting, args.steps, args.riskpo_train)
            parameters = parameters or policy_parameters(figures["model_path"])
            figures.update(setting=setting, round=round_index + 1, bf16_matmul_gflops=bf16,
                           fp32_matmul_gflops=fp32, learner_gflops=learner_gflops(figures, parameters))
            figures["of_bf16_matmul"] = figures["learner_gflops"] / bf16
            runs.append(figures)
            print(json.dumps(figures), flush=True)
    print_table(runs, parameters)
    if args.json:
        Path(args.json).write_text(json.dumps(runs, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""TRL's GRPOTrainer and `riskpo-train algorithm=grpo` side by side on the SmolLM2 pilot's work
(issue 25 item 8): the same converted SmolLM2-135M-Instruct, the pilot's training rows and
instruction, 5 prompts x 4 samples a step, 64 new tokens, temperature 0.7, constant lr 1e-5,
AdamW (weight decay 0.01, gradient clip 1.0), no KL, the loss averaged over the step's tokens
(TRL's dapo = our token_mean with one micro-batch), graded by our math verifier.

    .venv/bin/python bench/trl_side_by_side.py                  # 8 steps each, one round
    .venv/bin/python bench/trl_side_by_side.py --steps 8 --rounds 2

Runs, one after the other and alternating TRL and ours (the machine is shared: compare within
a round): TRL three ways -- fp32 (`bf16=False`), its `bf16=True` flag (autocast over fp32
weights), bf16 weights (the model loaded with dtype=torch.bfloat16, TRL's defaults otherwise:
what a TRL user on this CPU would do) -- and ours in the synchronous loop and with
trainer.off_policy_steps=1 (the pilot's settings otherwise: bf16 where the CPU has it). TRL
runs in this interpreter's environment (.venv: trl==1.16.0 from the dev extra; `use_vllm=False`,
transformers' generation, one process on all cores); ours with .venv-vllm's riskpo-train.
Memory is one measure for both: the peak over the run of the Pss summed over the process tree
(the TRL process; riskpo-train's driver, Ray and actors), sampled every 0.5 s
(bench/peak_memory.py). Seconds per step are the median over the steps after the first; TRL's
phases: generation (its _generate_and_score_completions: sampling, rewards, advantages) and
the rest of the step (loss, backward, optimizer); ours: the time/* metrics. Prints every run's
figures and rewards per step, and the ratios against the fastest TRL setting.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from peak_memory import descendants, pss_bytes  # noqa: E402

TRL_MODES = ("trl_fp32", "trl_bf16_flag", "trl_bf16_weights")
OUR_MODES = ("ours_sync", "ours_off_policy_1")
OUR_OVERRIDES = {"ours_sync": [], "ours_off_policy_1": ["trainer.off_policy_steps=1"]}
STEP_LINE = "trl-step "  # the TRL child's lines (TRL prints its own logs as dicts)
PROMPTS, SAMPLES, NEW_TOKENS, TEMPERATURE, LR, WEIGHT_DECAY = 5, 4, 64, 0.7, 1e-5, 0.01


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=8, help="training steps of every run (>= 6)")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--modes", nargs="+", choices=TRL_MODES + OUR_MODES,
                        default=list(TRL_MODES + OUR_MODES))
    parser.add_argument("--riskpo-train", default=str(ROOT / ".venv-vllm/bin/riskpo-train"))
    parser.add_argument("--output", help="also write the results as JSON here")
    parser.add_argument("--trl-child", choices=TRL_MODES, help=argparse.SUPPRESS)
    return parser.parse_args()


# ---- TRL, in a child process --------------------------------------------------------------

def trl_child(mode: str, steps: int) -> None:
    """TRL's GRPOTrainer on the pilot's work; one STEP_LINE + JSON line per step on stdout."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from launch.config import compose_config, validate
    from riskpo.data.loaders import load_train_and_eval
    from riskpo.data.registry import verification_request
    from riskpo.data.templates import chat_messages
    from workers.verifier.math_verifier import MathVerifier

    run = validate(compose_config(["experiment=smollm2-pilot", "algorithm=grpo"]))
    rows, _ = load_train_and_eval(run.data)
    verifier = MathVerifier()

    def reward(completions: list, row: list[int], **_: object) -> list[float]:
        requests = [verification_request(rows[index], completion[0]["content"])
                    for index, completion in zip(row, completions, strict=True)]
        return [float(result["reward"]) for result in verifier.verify_many(requests)]

    dataset = Dataset.from_dict({
        "prompt": [chat_messages(r, run.data.system_prompt, run.data.instruction) for r in rows],
        "row": list(range(len(rows)))})
    dtype = torch.bfloat16 if mode == "trl_bf16_weights" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(run.model.path, dtype=dtype)
    precision = {"trl_fp32": {"bf16": False}, "trl_bf16_flag": {"bf16": True}, "trl_bf16_weights": {}}[mode]
    args = GRPOConfig(
        output_dir=tempfile.mkdtemp(prefix="trl-"), max_steps=steps, learning_rate=LR,
        lr_scheduler_type="constant", warmup_steps=0, weight_decay=WEIGHT_DECAY, max_grad_norm=1.0,
        per_device_train_batch_size=PROMPTS * SAMPLES, gradient_accumulation_steps=1,
        num_generations=SAMPLES, max_completion_length=NEW_TOKENS, temperature=TEMPERATURE,
        beta=0.0, loss_type="dapo", use_vllm=False, use_cpu=True, report_to=[], logging_steps=1,
        save_strategy="no", seed=0, **precision)
    phases: dict[str, float] = {}

    class TimedGRPOTrainer(GRPOTrainer):
        """GRPOTrainer, its generation phase timed (nothing else changed)."""

        def _generate_and_score_completions(self, inputs):  # noqa: ANN001, ANN202
            started = time.perf_counter()
            result = super()._generate_and_score_completions(inputs)
            phases["generation"] = phases.get("generation", 0.0) + time.perf_counter() - started
            return result

    class StepRecorder(TrainerCallback):
        def on_step_begin(self, *_: object, **__: object) -> None:
            phases.clear()
            self.started = time.perf_counter()

        def on_step_end(self, *_: object, **__: object) -> None:
            self.seconds = time.perf_counter() - self.started

        def on_log(self, _args: object, state, _control: object, logs=None, **__: object) -> None:  # noqa: ANN001
            if logs and "reward" in logs:
                generation = phases.get("generation", 0.0)
                print(STEP_LINE + json.dumps({"step": state.global_step, "seconds": self.seconds,
                                  "generation_s": generation, "rest_s": self.seconds - generation,
                                  "reward": logs["reward"]}), flush=True)

    trainer = TimedGRPOTrainer(model=model, reward_funcs=[reward], args=args, train_dataset=dataset,
                               processing_class=AutoTokenizer.from_pretrained(run.model.path),
                               callbacks=[StepRecorder()])
    trainer.train()
    verifier.close()


# ---- the parent: runs, memory, table -----------------------------------------------------

class TreePss:
    """The peak, over time, of the Pss summed over a process and its descendants."""

    def __init__(self, pid: int, interval_s: float = 0.5):
        self.peak, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._sample, args=(pid, interval_s), daemon=True)
        self._thread.start()

    def _sample(self, pid: int, interval_s: float) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, sum(pss_bytes(p) or 0 for p in descendants(pid)))
            self._stop.wait(interval_s)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak / 1024**3


def run_measured(command: list[str], env: dict[str, str]) -> tuple[str, float, float]:
    """stdout, wall seconds and peak tree Pss (GiB) of a command."""
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    memory = TreePss(process.pid)
    stdout, stderr = process.communicate()
    peak = memory.stop()
    if process.returncode != 0:
        raise RuntimeError(f"{command[:3]} failed ({process.returncode}):\n{stderr[-4000:]}")
    return stdout, time.perf_counter() - started, peak


def run_trl(mode: str, steps: int) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    stdout, wall, peak = run_measured([sys.executable, __file__, "--steps", str(steps),
                                       "--trl-child", mode], env)
    records = [json.loads(line.removeprefix(STEP_LINE)) for line in stdout.splitlines()
               if line.startswith(STEP_LINE)]
    return summary(mode, records, wall, peak, {"generation": "generation_s", "loss+optimizer": "rest_s"})


def run_ours(mode: str, steps: int, riskpo_train: str) -> dict:
    run_dir = Path(tempfile.mkdtemp(prefix="ours-"))
    command = [riskpo_train, "experiment=smollm2-pilot", "algorithm=grpo", f"trainer.total_steps={steps}",
               "trainer.eval_before_training=false", "trainer.eval_every=0", "trainer.save_every=0",
               "logger.backend=none", "logger.plots=false", "seed=0", f"run_dir={run_dir}",
               *OUR_OVERRIDES[mode]]
    # Ray starts its workers at niceness 15 (TRL's one process runs at 0): on a machine shared
    # with other jobs that alone starves ours, so both run at 0
    _, wall, peak = run_measured(command, {**os.environ, "RAY_USAGE_STATS_ENABLED": "0",
                                           "RAY_worker_niceness": "0"})
    records = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        metrics = json.loads(line)
        if "train/reward_mean" in metrics:
            records.append({"seconds": metrics["time/step"], "reward": metrics["train/reward_mean"],
                            **{key: value for key, value in metrics.items() if key.startswith("time/")}})
    phases = {"generate": "time/generate", "logprobs": "time/logprobs", "train": "time/train",
              "sync": "time/sync"}
    return summary(mode, records, wall, peak, phases)


def summary(mode: str, records: list[dict], wall: float, peak_gib: float, phases: dict[str, str]) -> dict:
    later = records[1:] or records
    return {"mode": mode, "steps": len(records), "wall_s": round(wall, 1),
            "s_per_step": round(statistics.median(r["seconds"] for r in later), 2),
            "phases": {name: round(statistics.median(r.get(key, 0.0) for r in later), 2)
                       for name, key in phases.items()},
            "peak_pss_gib": round(peak_gib, 2), "rewards": [round(r["reward"], 3) for r in records]}


def print_table(results: list[dict]) -> None:
    trl = [r for r in results if r["mode"].startswith("trl")]
    fastest = min(trl, key=lambda r: r["s_per_step"]) if trl else None
    print("\n| run | round | s/step (median, steps 2+) | phases, s | peak Pss GiB | wall s | "
          "steps/s vs fastest TRL | memory vs it | reward per step |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        phases = ", ".join(f"{name} {seconds}" for name, seconds in r["phases"].items())
        speed = f"{fastest['s_per_step'] / r['s_per_step']:.2f}x" if fastest else "-"
        memory = f"{r['peak_pss_gib'] / fastest['peak_pss_gib']:.2f}x" if fastest else "-"
        print(f"| {r['mode']} | {r['round']} | {r['s_per_step']} | {phases} | {r['peak_pss_gib']} | "
              f"{r['wall_s']} | {speed} | {memory} | {' '.join(map(str, r['rewards']))} |")


def main() -> None:
    args = parse_args()
    if args.trl_child:
        trl_child(args.trl_child, args.steps)
        return
    if args.steps < 6:
        raise SystemExit("--steps: 6 or more")
    trl_modes = [m for m in TRL_MODES if m in args.modes]
    our_modes = [m for m in OUR_MODES if m in args.modes]
    order = []  # alternating: trl, ours, trl, ours, ..., the rest of the longer list
    for index in range(max(len(trl_modes), len(our_modes))):
        order += trl_modes[index:index + 1] + our_modes[index:index + 1]
    results = []
    for round_number in range(args.rounds):
        for mode in order if round_number % 2 == 0 else list(reversed(order)):
            result = (run_trl(mode, args.steps) if mode in TRL_MODES
                      else run_ours(mode, args.steps, args.riskpo_train))
            result["round"] = round_number
            print(json.dumps(result), flush=True)
            results.append(result)
    if args.output:
        Path(args.output).write_text(json.dumps(results, indent=1) + "\n")
    print_table(results)


if __name__ == "__main__":
    main()

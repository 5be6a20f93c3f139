"""The GPU check: run it whenever a GPU is at hand (README, docs/cluster.md). One command, a few
minutes on one H100, needing only torch, transformers and DeepSpeed (no Ray, no vLLM: it imports
nothing that pulls them in), on a randomly initialised Qwen2.5-0.5B-shaped model built here:

- a bf16 learner update through the learner's code (DeepSpeed ZeRO, the GPU preset
  conf/learner/gpu.yaml: its micro-batch token budget, gradient checkpointing) on one rank:
  tokens/s, MFU against the card's dense bf16 peak, and peak memory against launch/memory.py;
- the first mini-batch's importance ratios under CUDA bf16 with the paper preset's loss (the
  loss RiskPO registers: sequence-level ratio clipped to [1 - 3e-4, 1 + 4e-4]): an
  on-policy mini-batch whose ratios are 1 but for numerics, so every clipped token is the
  numerics' doing;
- the transformers engine on the same GPU: its log-probs' gap to the learner's on what it
  sampled, and its memory awake, asleep and woken.

It prints one table.

    PYTHONPATH=. python bench/gpu_check.py           # on a GPU
    PYTHONPATH=. python bench/gpu_check.py --cpu     # a dry run at a tiny scale on CPU (CI)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from launch.memory import LearnerShape, ModelShape, micro_batch_terms, state_terms  # noqa: E402
from launch.rehearse.data import corpus  # noqa: E402
from launch.rehearse.models import ModelScale, build_model, model_facts  # noqa: E402
from launch.rehearse.probe import (  # noqa: E402
    CpuTracker,
    CudaTracker,
    ProbeRequest,
    start_learner,
    train_steps,
)

MODEL = "Qwen/Qwen2.5-0.5B-Instruct"
# Dense bf16 peaks (no sparsity), by a substring of torch.cuda.get_device_name().
BF16_PEAK_FLOPS = {"H200": 989e12, "H100 PCIe": 756e12, "H100 NVL": 835e12, "H100": 989e12,
                   "A100": 312e12, "L40S": 362e12}
CLIP_CONCERN = 1e-3  # a clipped share of an on-policy mini-batch above this is the numerics' doing
GIB = 2**30


@dataclasses.dataclass
class CheckShape:
    """What the check runs: the GPU scale, or the --cpu dry run's."""

    scale: ModelScale | None
    budget: int | None  # None: the GPU preset's micro_batch_token_budget
    prompt_tokens: int
    response_tokens: int
    engine_prompts: int
    new_tokens: int
    steps: int


GPU_SHAPE = CheckShape(None, None, 256, 768, 32, 128, 3)
CPU_SHAPE = CheckShape(ModelScale(), 2048, 48, 16, 4, 8, 2)


def presets() -> tuple[dict[str, Any], dict[str, Any]]:
    """The GPU learner preset (conf/learner/gpu.yaml, one rank) and the loss of the paper
    preset (the one riskpo/algo/estimators/riskpo.py registers for `riskpo`)."""
    from riskpo.algo.registry import get_advantage_estimator

    learner = yaml.safe_load((REPO / "conf/learner/gpu.yaml").read_text())
    return {**learner, "num_ranks": 1}, dict(get_advantage_estimator("riskpo").loss)


def engine_check(model_dir: Path, backend: Any, shape: CheckShape, device: str) -> dict[str, float]:
    """The transformers engine beside the learner: memory after loading, asleep and woken (GPU),
    and the mean |engine - learner| log-prob of the tokens it sampled."""
    from riskpo.batch import TrainBatch
    from riskpo.messages import Prompt, SamplingParams
    from workers.rollout.hf_engine import HFEngine

    def allocated() -> float:
        return torch.cuda.memory_allocated() / GIB if device == "gpu" else float("nan")

    before = allocated()
    engine = HFEngine(model_dir, device="cuda" if device == "gpu" else "cpu", dtype="bfloat16")
    vocab = backend.tokenizer.vocab_size
    prompts = [Prompt(token_ids=[3 + (7 * i + j) % (vocab - 3) for j in range(32)]) for i in range(shape.engine_prompts)]
    samples = engine.generate(prompts, SamplingParams(n=4, max_new_tokens=shape.new_tokens, seed=0))
    awake = allocated() - before
    rows = [c for per_prompt in samples for c in per_prompt]
    batch = TrainBatch([c.prompt_token_ids for c in rows], [c.token_ids for c in rows], [c.logprobs for c in rows],
                       torch.zeros(len(rows)), torch.ones(len(rows), dtype=torch.bool))
    gap = backend.prepare(batch, [list(range(len(rows)))], backend.spec.loss.needs)
    engine.sleep()
    asleep = allocated() - before
    engine.wake_up()
    woken = allocated() - before
    engine.generate(prompts[:1], SamplingParams(n=1, max_new_tokens=4, seed=1))
    return {"gap": gap["gap_sum"] / max(gap["gap_tokens"], 1.0), "gap_tokens": gap["gap_tokens"],
            "awake_gib": awake, "asleep_gib": asleep, "woken_gib": woken}


def run_check(device: str, shape: CheckShape, work: Path) -> dict[str, Any]:
    learner, loss = presets()
    if shape.budget is not None:
        learner["micro_batch_token_budget"] = shape.budget
    facts = model_facts(MODEL)
    model_dir = build_model(facts, shape.scale, corpus(), work / "model")
    request = ProbeRequest(model_path=str(model_dir), learner=learner, loss=loss, device=device,
                           prompt_tokens=shape.prompt_tokens, response_tokens=shape.response_tokens)
    tracker: CpuTracker | CudaTracker = CudaTracker() if device == "gpu" else CpuTracker()
    with tracker.session():
        with tracker.phase("init"):
            backend = start_learner(request)
        engine = engine_check(model_dir, backend, shape, device)
        if device == "gpu":
            torch.cuda.empty_cache()
        step = train_steps(backend, request, tracker, steps=shape.steps)
    config = json.loads((model_dir / "config.json").read_text())
    return {"phases": {name: dataclasses.asdict(p) for name, p in tracker.phases.items()}, "engine": engine,
            "step": step, "config": config, "request": request}


def formula_rows(result: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Measured memory beside launch/memory.py's projection for the same shape."""
    request, phases = result["request"], result["phases"]
    model = ModelShape.from_config(result["config"])
    from workers.learner.config import LearnerConfig

    learner = dataclasses.replace(LearnerShape.from_config(LearnerConfig(**request.learner)),
                                  micro_batch_tokens=request.micro_batch_tokens)
    state = sum(t.bytes for t in state_terms(model, learner, after_step=False))
    step = sum(t.bytes for t in micro_batch_terms(model, learner))
    train = phases["train_step"]
    return [
        ("learner state after init (GiB)", f"{phases['init']['end'] / GIB:.3f}", f"formula {state / GIB:.3f}"),
        ("train step peak above state (GiB)", f"{(train['peak'] - train['before']) / GIB:.3f}",
         f"formula {step / GIB:.3f} ({', '.join(t.name for t in micro_batch_terms(model, learner))})"),
        ("peak allocated in the step (GiB)", f"{train['peak'] / GIB:.3f}",
         f"formula {(train['before'] + step) / GIB:.3f}"),
    ]


def speed_rows(result: dict[str, Any], device_name: str) -> list[tuple[str, str, str]]:
    step, config = result["step"], result["config"]
    seconds = min(step["seconds"][1:] or step["seconds"])
    parameters = ModelShape.from_config(config).parameters
    seq = result["request"].prompt_tokens + result["request"].response_tokens
    flops = 6 * parameters + 12 * config["num_hidden_layers"] * config["hidden_size"] * seq
    achieved = step["tokens"] / seconds * flops
    peak = next((p for key, p in BF16_PEAK_FLOPS.items() if key in device_name), None)
    mfu = f"{achieved / peak:.1%} of {peak / 1e12:.0f} TFLOP/s" if peak else "peak unknown here"
    return [
        ("model", f"{parameters / 1e6:.0f}M parameters", f"{MODEL}-shaped, random, bf16"),
        ("learner update", f"{step['tokens']} tokens in {seconds:.3f} s",
         f"best of {len(step['seconds'])}: {', '.join(f'{s:.2f}' for s in step['seconds'])}"),
        ("tokens/s", f"{step['tokens'] / seconds:,.0f}", f"{achieved / 1e12:.2f} TFLOP/s (6N + 12 L d T a token)"),
        ("MFU", mfu, "dense bf16 peak"),
    ]


def ratio_rows(result: dict[str, Any]) -> list[tuple[str, str, str]]:
    metrics, loss = result["step"]["metrics"], result["request"].loss
    tokens = max(metrics["tokens"], 1.0)
    clipped = metrics["clip_fraction"] / tokens
    rows = [("first mini-batch clipped", f"{clipped:.4%}",
             f"{loss['ratio']}-level ratio, clip [{1 - loss['clip_low']:.4f}, {1 + loss['clip_high']:.4f}]"),
            ("first mini-batch approx KL", f"{metrics['approx_kl'] / tokens:.2e}", "0 if the passes agree exactly")]
    if clipped > CLIP_CONCERN:
        rows.append(("verdict", "numerics clip an on-policy batch",
                     "the preset should take its old log-probs from the training forward (one forward "
                     "less, where the update is on-policy) or widen clip_low/clip_high past this noise"))
    return rows


def engine_rows(engine: dict[str, float]) -> list[tuple[str, str, str]]:
    memory = ("n/a on a CPU" if engine["awake_gib"] != engine["awake_gib"] else
              f"{engine['awake_gib']:.3f} / {engine['asleep_gib']:.3f} / {engine['woken_gib']:.3f}")
    return [("engine-learner log-prob gap", f"{engine['gap']:.2e}",
             f"mean |difference| over {engine['gap_tokens']:.0f} sampled tokens"),
            ("engine memory awake / asleep / woken (GiB)", memory, "torch.cuda.memory_allocated above the learner's")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu", action="store_true", help="a dry run at a tiny scale on CPU")
    args = parser.parse_args(argv)
    if not args.cpu and not torch.cuda.is_available():
        raise SystemExit("bench/gpu_check.py needs a CUDA GPU (or --cpu for the dry run)")
    device = "cpu" if args.cpu else "gpu"
    device_name = "CPU (dry run)" if args.cpu else torch.cuda.get_device_name()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as work:
        result = run_check(device, CPU_SHAPE if args.cpu else GPU_SHAPE, Path(work))
    rows = [("device", device_name, f"torch {torch.__version__}"), *speed_rows(result, device_name),
            *formula_rows(result), *ratio_rows(result), *engine_rows(result["engine"]),
            ("check time", f"{time.perf_counter() - start:.0f} s", "after imports")]
    width = max(len(row[0]) for row in rows)
    print("| what | value | note |\n|---|---|---|")
    for what, value, note in rows:
        print(f"| {what:<{width}} | {value} | {note} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

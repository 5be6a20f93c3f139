"""`riskpo-eval`: evaluates a model on a dataset's held-out rows: avg@k, unbiased pass@k for
k = 1, 2, 4, ... n, and greedy accuracy, with the sampling settings printed beside them.

    riskpo-eval runs/my-run                         # the newest checkpoint of a run directory
    riskpo-eval runs/my-run/checkpoints/step_000100 # one checkpoint
    riskpo-eval /models/qwen2.5-1.5b data=gsm8k_math data.eval_samples=32 --output eval.json

Trailing arguments are Hydra overrides of the run config (the same as `riskpo-train` takes):
they pick the data, the sampling settings and the cluster.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from rich.console import Console

from riskpo.run.record import message_console


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="riskpo-eval", description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="HF model directory, checkpoint directory or run directory")
    parser.add_argument("--output", help="write the metrics as JSON to this file")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. data.eval_samples=16")
    return parser.parse_intermixed_args(argv)


def resolve_model_dir(path: str) -> Path:
    """An HF directory from a HF directory, a checkpoint, or a run directory's newest checkpoint."""
    from riskpo.run.checkpoints import HF_EXPORT_SUBDIR, complete_checkpoints

    candidate = Path(path).expanduser()
    if (candidate / "config.json").is_file():
        return candidate
    if (candidate / HF_EXPORT_SUBDIR / "config.json").is_file():
        return candidate / HF_EXPORT_SUBDIR
    checkpoints = complete_checkpoints(candidate)
    if checkpoints and (checkpoints[-1] / HF_EXPORT_SUBDIR / "config.json").is_file():
        return checkpoints[-1] / HF_EXPORT_SUBDIR
    raise SystemExit(f"riskpo-eval: {path} is not a HF model directory, a checkpoint, or a run "
                     "directory with checkpoints")


def evaluate_model(model_dir: Path, overrides: list[str], console: Console) -> dict[str, Any]:
    import ray

    from launch.config import compose_config, validate
    from launch.factory import connect_ray, verifier_limits
    from riskpo.data.loaders import load_held_out
    from riskpo.loop.evaluation import evaluate
    from workers.rollout.group import RolloutGroup
    from workers.verifier.ray_pool import VerifierPool

    run = validate(compose_config(overrides))
    eval_rows = load_held_out(run.data)[run.data.eval_on]  # the training rows are not needed
    d, r = run.data, run.rollout
    params = r.params(d.eval_samples, run.seed, evaluation=True)
    started = connect_ray(run, console)
    try:
        rollout = RolloutGroup(num_actors=r.num_actors, engine_kind=r.engine,
                               model_path=str(model_dir), engine_kwargs={"dtype": run.model.dtype},
                               num_cpus_per_actor=run.cluster.rollout_cpus_per_actor,
                               num_gpus_per_actor=run.cluster.rollout_gpus_per_actor,
                               wait=False)  # the engines load while the verifiers start
        verifiers = VerifierPool(run.verifier.actor_counts, verifier_limits(run))
        rollout.wait_ready()
        console.print(f"evaluating {model_dir} on {len(eval_rows)} {d.eval.source} rows, "
                      f"{params.n} samples each (temperature {params.temperature}, "
                      f"top_p {params.top_p}, max {params.max_new_tokens} new tokens)")
        metrics = evaluate(rollout, verifiers, eval_rows, d, r, seed=run.seed)
        rollout.shutdown()
        verifiers.shutdown()
    finally:
        if started:
            ray.shutdown()
    return {"model": str(model_dir), "rows": len(eval_rows), "source": d.eval.source,
            "sampling": {"samples": params.n, "temperature": params.temperature,
                         "top_p": params.top_p, "max_new_tokens": params.max_new_tokens},
            "metrics": metrics}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console = message_console()
    report = evaluate_model(resolve_model_dir(args.model), args.overrides, console)
    text = json.dumps(report, indent=2)
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

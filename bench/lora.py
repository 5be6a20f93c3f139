"""Full fine-tuning against LoRA adapters (issue 27), alternating in one run: per run the step and
its phases, generation tokens/s, the weight sync's bytes and time, the learner rank's peak
memory (Pss, sampled every 0.5 s) and the whole tree's, and held-out avg@k before and after.

    flock /work/bench.lock .venv/bin/python bench/lora.py --setup embedded --steps 20 --seeds 0 1
    flock /work/bench.lock .venv-vllm/bin/python bench/lora.py --setup pilot --steps 30 --seeds 0

Settings, each at its own learning rates (--full-lr, --lora-lr; several values make a sweep:
every setting runs at each of its rates, and the table marks each setting's best by held-out avg):

    full      the whole model trains (model.lora.rank null)
    merged    model.lora.rank=--rank, learner.lora_sync=merged (base + B A merged, every engine)
    adapter   the same adapters, learner.lora_sync=adapter (the adapter alone, applied by the engine)

Every run is `riskpo-train experiment=<setup>` (setup embedded: the default) for --steps steps,
a fresh process tree, an evaluation before and after; each seed runs every setting in turn. The
learner's gradient and optimizer-state bytes are proportional to the parameters it trains
(fp32 master, Adam m and v, the gradients): printed as the adapters' share of the model's
(launch/memory.py AdapterShape on the run's config.json). Prints a table; --json writes every run.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))

from peak_memory import measured_train  # noqa: E402

PHASES = ("step", "generate", "logprobs", "train", "sync")
SETUPS = {"embedded": [], "pilot": ["experiment=smollm2-pilot", "algorithm=grpo"]}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--setup", choices=sorted(SETUPS), default="embedded")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--full-lr", type=float, nargs="+", default=[2e-5])
    parser.add_argument("--lora-lr", type=float, nargs="+", default=[1e-4])
    parser.add_argument("--settings", nargs="+", default=["full", "merged", "adapter"])
    parser.add_argument("--json", type=Path)
    parser.add_argument("--include", type=Path, nargs="*", default=[],
                        help="earlier runs' --json files, joined to this table (and its sweep)")
    return parser.parse_args()


def rates(setting: str, args: argparse.Namespace) -> list[float]:
    return args.full_lr if setting == "full" else args.lora_lr


def overrides(setting: str, lr: float, args: argparse.Namespace) -> list[str]:
    if setting == "full":
        return [f"learner.lr={lr}"]
    lora = [f"model.lora.rank={args.rank}", f"model.lora.alpha={2.0 * args.rank}", f"learner.lr={lr}"]
    if setting == "merged":
        return [*lora, "learner.lora_sync=merged"]
    return [*lora, "learner.lora_sync=adapter"]


def run(setting: str, lr: float, seed: int, args: argparse.Namespace) -> dict:
    """One riskpo-train run; its figures (medians over the steps after the first)."""
    run_dir = Path(tempfile.mkdtemp(prefix=f"lora-bench-{setting}-"))
    riskpo_train = str(Path(sys.executable).parent / "riskpo-train")
    command = [riskpo_train, *SETUPS[args.setup], f"trainer.total_steps={args.steps}", f"seed={seed}",
               "trainer.eval_before_training=true", "trainer.eval_every=0", "trainer.save_every=0",
               "logger.backend=none", "logger.plots=false", "logger.progress=none",
               f"run_dir={run_dir}", *overrides(setting, lr, args)]
    rows, memory, stderr = measured_train(command, run_dir, ROOT, setting)
    peak = memory.stop()
    later = rows[1:] or rows

    def median(key: str) -> float:
        return statistics.median(row.get(key, float("nan")) for row in later)

    summary = json.loads((run_dir / "summary.json").read_text())
    avg = next(key for key in summary["final"] if key.startswith("eval/avg@"))
    figures = {"setting": setting, "lr": lr, "seed": seed, **{phase: median(f"time/{phase}") for phase in PHASES},
               "tokens_per_s": median("rollout/tokens_per_s"), "sync_bytes": median("sync/bytes"),
               "sync_s": median("sync/time_s"), "peak_pss_gib": peak,
               "learner_pss_gib": memory.peak_of("ray::LearnerWorker"), "metric": avg,
               "before": summary["initial"][avg], "after": summary["final"][avg]}
    figures["trained_share"] = trained_share(run_dir, stderr, args.rank) if setting != "full" else 1.0
    return figures


def trained_share(run_dir: Path, stderr: str, rank: int) -> float:
    """The adapters' parameters over the model's (launch/memory.py, the run's model: model.path,
    or the tiny model's warm start, whose directory the run names)."""
    from launch.memory import AdapterShape, ModelShape
    from riskpo.models.config import LoraConfig

    config_yaml = (run_dir / "config.yaml").read_text()
    model_dir = next(line.split(":", 1)[1].strip() for line in config_yaml.splitlines()
                     if line.strip().startswith("path:"))
    if model_dir == "tiny":
        model_dir = re.search(r"(/\S+/warmstart/[0-9a-f]+)", stderr).group(1)
    config = json.loads((Path(model_dir) / "config.json").read_text())
    adapters = AdapterShape.from_config(config, LoraConfig(rank=rank))
    return adapters.parameters / ModelShape.from_config(config).parameters


def best_rates(runs: list[dict]) -> dict[str, float]:
    """Each setting's rate with the highest held-out avg after training, averaged over seeds."""
    after: dict[tuple[str, float], list[float]] = {}
    for r in runs:
        after.setdefault((r["setting"], r["lr"]), []).append(r["after"])
    best: dict[str, float] = {}
    for (setting, lr), values in after.items():
        if setting not in best or statistics.mean(values) > statistics.mean(after[setting, best[setting]]):
            best[setting] = lr
    return best


def print_table(runs: list[dict]) -> None:
    best = best_rates(runs)
    print("| setting | lr | seed | s/step | generate | logprobs | train | sync s | sync bytes | gen tok/s "
          "| learner peak GiB | tree peak GiB | trained share | avg before -> after |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in runs:
        mark = " (best)" if len(set(rates_of(runs, r["setting"]))) > 1 and best[r["setting"]] == r["lr"] else ""
        print(f"| {r['setting']} | {r['lr']:g}{mark} | {r['seed']} | {r['step']:.2f} | {r['generate']:.2f} | {r['logprobs']:.2f} | "
              f"{r['train']:.2f} | {r['sync_s']:.3f} | {r['sync_bytes'] / 1e6:.2f} MB | {r['tokens_per_s']:.0f} | "
              f"{r['learner_pss_gib']:.2f} | {r['peak_pss_gib']:.2f} | {r['trained_share']:.1%} | "
              f"{r['before']:.3f} -> {r['after']:.3f} |")


def rates_of(runs: list[dict], setting: str) -> list[float]:
    return [r["lr"] for r in runs if r["setting"] == setting]


def main() -> int:
    args = parse_args()
    earlier = [{"lr": None, **r} for path in args.include for r in json.loads(path.read_text())]
    if any(r["lr"] is None for r in earlier):
        raise SystemExit("--include: a file without learning rates (written before --json had them)")
    runs = []
    for seed in args.seeds:
        for setting in args.settings:
            for lr in rates(setting, args):
                runs.append(run(setting, lr, seed, args))
                print(json.dumps(runs[-1]), flush=True)
    print_table(earlier + runs)
    if args.json:
        args.json.write_text(json.dumps(runs, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

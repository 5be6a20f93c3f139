"""Supervised warm start of the tiny model on a synthetic task, so that RL starts from a model
that is sometimes right; the result is cached under a hash of every setting that shapes it.

    path = ensure_warm_start(cfg.model, cfg.data)   # an HF directory: model + tokenizer

Training stops when held-out sampled accuracy (temperature 1) reaches the target, or at the
time or step cap. Accuracy here is an exact match with the reference response: the math
verifier's criterion for arithmetic, a lower bound for the code task.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from riskpo.data.loaders import DataConfig, load_dataset
from riskpo.data.synthetic import SYNTHETIC_SOURCES, SyntheticProblem, problem_maker
from riskpo.modeling import TINY_MODEL, ModelConfig, build_tiny_model, build_tokenizer

CACHE_FORMAT_VERSION = 1  # bump when the training procedure changes meaning
REPORT_FILE = "warmstart.json"
IGNORE_INDEX = -100


@dataclass
class WarmstartReport:
    accuracy: float  # held-out sampled accuracy when training stopped
    steps: int
    seconds: float  # wall clock
    cpu_seconds: float  # CPU time of this process (comparable across loaded machines)
    reached_target: bool
    stop_reason: str  # target | time | steps | disabled


def cache_root(configured: str | None = None) -> Path:
    """Where warm starts are cached: the configured dir, $RISKPO_CACHE, or ~/.cache/riskpo-rl."""
    root = configured or os.environ.get("RISKPO_CACHE") or "~/.cache/riskpo-rl"
    return Path(root).expanduser()


def settings_key(model: ModelConfig, data: DataConfig) -> str:
    """A short hash of every setting that shapes the warm-started weights."""
    warmstart = {k: v for k, v in asdict(model.warmstart).items() if k != "cache_dir"}
    payload = {
        "version": CACHE_FORMAT_VERSION,
        "tiny": asdict(model.tiny),
        "warmstart": warmstart,
        "train": _task_settings(data.train),
        "eval": _task_settings(data.eval),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _task_settings(dataset: Any) -> dict[str, Any]:
    settings = asdict(dataset)
    settings.pop("files", None)
    return settings


def warm_start_dir(model: ModelConfig, data: DataConfig) -> Path:
    return cache_root(model.warmstart.cache_dir) / "warmstart" / settings_key(model, data)


def ensure_warm_start(model: ModelConfig, data: DataConfig, console: Console | None = None) -> Path:
    """The warm-started tiny model's directory: from the cache, or trained now and cached."""
    if model.path != TINY_MODEL:
        raise ValueError(f"model.path={model.path!r}: a warm start is built only for `tiny`")
    if data.train.source not in SYNTHETIC_SOURCES:
        raise ValueError(
            f"data.train.source={data.train.source!r}: the tiny model's warm start needs a "
            f"synthetic task ({', '.join(SYNTHETIC_SOURCES)})"
        )
    console = console or Console(stderr=True)
    target = warm_start_dir(model, data)
    if (target / REPORT_FILE).is_file():
        report = json.loads((target / REPORT_FILE).read_text())
        console.print(
            f"[bold]Warm start[/]: cached at {target} (held-out accuracy "
            f"{report['accuracy']:.2f} after {report['steps']} steps); skipping training."
        )
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        report = train_warm_start(model, data, staging, console)
        (staging / REPORT_FILE).write_text(json.dumps(asdict(report), indent=2))
        if target.exists():  # another process finished first: keep theirs
            shutil.rmtree(staging)
        else:
            staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def train_warm_start(
    model_config: ModelConfig, data: DataConfig, out_dir: Path, console: Console
) -> WarmstartReport:
    """Builds the tiny model in out_dir, trains it on data.train's synthetic task (never on
    an eval prompt) and saves it there; returns what happened."""
    from transformers import AutoModelForCausalLM

    settings = model_config.warmstart
    tokenizer = build_tokenizer()
    build_tiny_model(out_dir, **model_config.tiny.build_kwargs(), tokenizer=tokenizer)
    if not settings.enabled:
        console.print("[bold]Warm start[/]: disabled; the tiny model stays randomly initialised.")
        return WarmstartReport(0.0, 0, 0.0, 0.0, False, "disabled")
    model = AutoModelForCausalLM.from_pretrained(out_dir, dtype=torch.float32)
    make = problem_maker(data.train.source, data.train.arithmetic, data.train.code)
    eval_prompts = {row.prompt_key for row in load_dataset(data.eval)}
    held_out = _held_out_problems(make, settings.eval_problems, settings.seed + 1, eval_prompts)
    # training never sees the run's eval prompts nor the ones that decide when to stop
    excluded = eval_prompts | {problem.row.prompt_key for problem in held_out}
    console.print(
        f"[bold]Warm start[/]: supervised training of the tiny model on {data.train.source} "
        f"until held-out sampled accuracy >= {settings.target_accuracy:.2f} (usually 3-5 minutes "
        f"on 2 CPU cores; at most {settings.max_seconds:.0f} s or {settings.max_steps} steps). "
        "Done once: the result is cached."
    )
    report = _train_loop(model, tokenizer, make, excluded, held_out, settings, console)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    verdict = "reached" if report.reached_target else "did NOT reach"
    console.print(
        f"[bold]Warm start[/]: {verdict} the target: accuracy {report.accuracy:.2f} after "
        f"{report.steps} steps in {report.seconds:.0f} s ({report.cpu_seconds:.0f} CPU-s; "
        f"stopped: {report.stop_reason})."
    )
    return report


def _held_out_problems(
    make: Callable[[random.Random], SyntheticProblem], count: int, seed: int, excluded: set[str]
) -> list[SyntheticProblem]:
    rng, problems = random.Random(seed), []
    while len(problems) < count:
        problem = make(rng)
        if problem.row.prompt_key not in excluded:
            problems.append(problem)
    return problems


def _train_loop(model, tokenizer, make, excluded, held_out, settings, console) -> WarmstartReport:
    torch.manual_seed(settings.seed)
    rng = random.Random(settings.seed)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay
    )
    started, cpu_started = time.monotonic(), time.process_time()
    step, accuracy, stop_reason = 0, 0.0, "steps"
    with _WarmstartProgress(console, settings.target_accuracy) as progress:
        while step < settings.max_steps:
            loss = _train_step(model, tokenizer, optimizer,
                               _training_batch(make, rng, excluded, settings.batch_size))
            step += 1
            out_of_time = time.monotonic() - started > settings.max_seconds
            if step % settings.eval_every == 0 or step == settings.max_steps or out_of_time:
                accuracy = sampled_accuracy(model, tokenizer, held_out)
                progress.show(step, loss, accuracy, time.monotonic() - started)
                if accuracy >= settings.target_accuracy:
                    stop_reason = "target"
                    break
            if out_of_time:
                stop_reason = "time"
                break
    return WarmstartReport(
        accuracy, step, time.monotonic() - started, time.process_time() - cpu_started,
        accuracy >= settings.target_accuracy, stop_reason,
    )


class _WarmstartProgress:
    """A rich bar of accuracy towards the target on a terminal; a printed line every
    PLAIN_EVERY_S seconds otherwise (logs, CI)."""

    PLAIN_EVERY_S = 15.0

    def __init__(self, console: Console, target: float) -> None:
        self.console, self.target, self._last_print = console, target, -float("inf")
        self._bar = None
        if console.is_terminal:
            self._bar = Progress(TextColumn("warm start"), BarColumn(),
                                 TextColumn("{task.fields[status]}"), TimeElapsedColumn(),
                                 console=console)
            self._task = self._bar.add_task("warm start", total=target, status="")

    def __enter__(self) -> _WarmstartProgress:
        if self._bar is not None:
            self._bar.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._bar is not None:
            self._bar.stop()

    def show(self, step: int, loss: float, accuracy: float, elapsed: float) -> None:
        status = f"step {step}  loss {loss:.3f}  held-out accuracy {accuracy:.2f}/{self.target:.2f}"
        if self._bar is not None:
            self._bar.update(self._task, completed=min(accuracy, self.target), status=status)
        elif elapsed - self._last_print >= self.PLAIN_EVERY_S:
            self._last_print = elapsed
            self.console.print(f"warm start: {status}  ({elapsed:.0f} s)", highlight=False)


def _training_batch(make, rng: random.Random, excluded: set[str], size: int) -> list[SyntheticProblem]:
    batch = []
    while len(batch) < size:
        problem = make(rng)
        if problem.row.prompt_key not in excluded:
            batch.append(problem)
    return batch


def _train_step(model, tokenizer, optimizer, batch: Sequence[SyntheticProblem]) -> float:
    """One AdamW step on prompt + reference response + EOS; the loss covers response tokens."""
    sequences, labels = [], []
    for problem in batch:
        prompt_ids = tokenizer.encode(problem.row.prompt, add_special_tokens=False)
        response_ids = tokenizer.encode(problem.reference_response, add_special_tokens=False)
        response_ids.append(tokenizer.eos_token_id)
        sequences.append(prompt_ids + response_ids)
        labels.append([IGNORE_INDEX] * len(prompt_ids) + response_ids)
    width = max(map(len, sequences))
    pad = tokenizer.pad_token_id
    input_ids = torch.tensor([s + [pad] * (width - len(s)) for s in sequences])
    attention = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in sequences])
    targets = torch.tensor([t + [IGNORE_INDEX] * (width - len(t)) for t in labels])
    model.train()
    loss = model(input_ids=input_ids, attention_mask=attention, labels=targets).loss
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    return float(loss.detach())


@torch.no_grad()
def sampled_accuracy(model, tokenizer, problems: Sequence[SyntheticProblem]) -> float:
    """Fraction of problems whose one sampled response (temperature 1) equals the reference."""
    model.eval()
    prompts = [problem.row.prompt for problem in problems]
    encoded = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    longest = max(len(problem.reference_response) for problem in problems)
    output = model.generate(
        **encoded, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
        max_new_tokens=longest + 2, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    responses = tokenizer.batch_decode(output[:, encoded["input_ids"].shape[1]:], skip_special_tokens=True)
    correct = sum(r == p.reference_response for r, p in zip(responses, problems, strict=True))
    return correct / len(problems)

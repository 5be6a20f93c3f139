"""Supervised warm start of the tiny model on a task that declares one (its problems with
reference responses: riskpo.data.registry.Task.warmstart_problems), so that RL starts from a
model that is sometimes right; the result is cached under a hash of every setting that shapes it.

    path = ensure_warm_start(cfg.model, cfg.data)   # an HF directory: model + tokenizer

Training stops when held-out sampled accuracy (temperature 1) reaches the target, or at the
time or step cap. Accuracy here is an exact match with the reference response: the math
verifier's criterion for arithmetic, a lower bound for the code task.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import random
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from riskpo.data.loaders import DataConfig, DatasetConfig, held_out_prompts, load_held_out
from riskpo.data.registry import ProblemMaker, tiny_model_tasks
from riskpo.data.synthetic import SyntheticProblem
from riskpo.messages import Prompt
from riskpo.models.config import TINY_MODEL, ModelConfig
from riskpo.models.loading import load_policy
from riskpo.models.tiny import build_tiny_model, build_tiny_processor, build_tokenizer
from riskpo.models.vlm import generation_inputs, is_processor, text_tokenizer, training_inputs
from riskpo.run.record import message_console

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
        "tiny": _model_settings(model),
        "warmstart": warmstart,
        "train": _task_settings(data.train, "train"),
        "eval": _task_settings(data.eval, "eval"),
    }
    if data.validation is not None:  # (absent otherwise: the key stays what it was before)
        payload["validation"] = _task_settings(data.validation, "validation")
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _model_settings(model: ModelConfig) -> dict[str, Any]:
    """The tiny model's architecture; the vision tower's only for a vision-language model (so
    the text model's cache key is what it was before the VLM existed)."""
    settings = asdict(model.tiny)
    if not model.tiny.is_vision:
        settings.pop("vision")
    return settings


def _task_settings(dataset: DatasetConfig, split: str) -> dict[str, Any]:
    """What of a split shapes the warm start: its source, size, seed and what its task says of
    its options (Task.warmstart_settings)."""
    settings = {"source": dataset.source, "size": dataset.size, "seed": dataset.seed}
    settings.update(dataset.task.warmstart_settings(dataset.task_options(f"data.{split}"), split))
    return settings


def warm_start_dir(model: ModelConfig, data: DataConfig) -> Path:
    return cache_root(model.warmstart.cache_dir) / "warmstart" / settings_key(model, data)


def ensure_warm_start(model: ModelConfig, data: DataConfig, console: Console | None = None) -> Path:
    """The warm-started tiny model's directory: from the cache, or trained now and cached."""
    if model.path != TINY_MODEL:
        raise ValueError(f"model.path={model.path!r}: a warm start is built only for `tiny`")
    learnable = tiny_model_tasks("vision" if model.tiny.is_vision else "text")
    if data.train.source not in learnable:
        raise ValueError(
            f"data.train.source={data.train.source!r}: the tiny {model.tiny.arch} model's warm "
            f"start needs a task it can learn ({', '.join(learnable)})"
        )
    console = console or message_console()
    target = warm_start_dir(model, data)
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        if not (target / REPORT_FILE).is_file():
            try:  # one process trains a given warm start; the others wait for it, then load it
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                console.print(f"[bold]Warm start[/]: another process is training {target}; "
                              "waiting for it.")
                fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / REPORT_FILE).is_file():
            report = json.loads((target / REPORT_FILE).read_text())
            console.print(
                f"[bold]Warm start[/]: cached at {target} (held-out accuracy "
                f"{report['accuracy']:.2f} after {report['steps']} steps); skipping training."
            )
            return target
        return _train_into(target, model, data, console)


def _train_into(target: Path, model: ModelConfig, data: DataConfig, console: Console) -> Path:
    """Trains the warm start in a staging directory beside target, then renames it into place."""
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
    settings, tiny = model_config.warmstart, model_config.tiny
    # the tiny VLM's "tokenizer" is its processor (images in, image tokens expanded)
    tokenizer = build_tiny_processor(tiny.vision) if tiny.is_vision else build_tokenizer()
    build_tiny_model(out_dir, **tiny.build_kwargs(), tokenizer=text_tokenizer(tokenizer))
    if not settings.enabled:
        console.print("[bold]Warm start[/]: disabled; the tiny model stays randomly initialised.")
        return WarmstartReport(0.0, 0, 0.0, 0.0, False, "disabled")
    model = load_policy(out_dir, torch.float32)
    eval_prompts = _evaluation_prompts(data)
    task, options = data.train.task, data.train.task_options("data.train")
    problems = task.warmstart_problems(options, eval_prompts)
    held_out = _held_out_problems(problems, settings.eval_problems, settings.seed + 1, eval_prompts)
    # training never sees the run's eval prompts nor the ones that decide when to stop
    excluded = eval_prompts | {problem.row.prompt_key for problem in held_out}
    make = task.warmstart_training(options, excluded, problems)
    console.print(
        f"[bold]Warm start[/]: supervised training of the tiny model on {data.train.source} "
        f"until held-out sampled accuracy >= {settings.target_accuracy:.2f} (usually 2-4 minutes "
        f"on one CPU core; at most {settings.max_cpu_seconds:.0f} CPU-s or {settings.max_steps} "
        "steps). Done once: the result is cached."
    )
    threads = torch.get_num_threads()
    # many small ops: one thread is about as fast alone, far faster on a busy machine, and
    # makes the CPU-time limit (and so the result) the same however busy the machine is
    torch.set_num_threads(1)
    try:
        report = _train_loop(model, tokenizer, make, excluded, held_out, settings, console)
    finally:
        torch.set_num_threads(threads)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    verdict = "reached" if report.reached_target else "did NOT reach"
    console.print(
        f"[bold]Warm start[/]: {verdict} the target: accuracy {report.accuracy:.2f} after "
        f"{report.steps} steps in {report.seconds:.0f} s ({report.cpu_seconds:.0f} CPU-s; "
        f"stopped: {report.stop_reason})."
    )
    return report


def _evaluation_prompts(data: DataConfig) -> set[str]:
    """Prompts the warm start must never train on: the held-out rows and the validation split
    (which chooses learning rates), whichever of them the run evaluates on, so a run that
    chooses settings and one that reports starts from the same model; and whatever the task
    keeps from it besides (Countdown: both of its held-out parts, always)."""
    train = data.train
    return held_out_prompts(load_held_out(data)) | train.task.warmstart_exclusions(
        train.task_options("data.train"))


def _held_out_problems(make: ProblemMaker, count: int, seed: int,
                       excluded: set[str]) -> list[SyntheticProblem]:
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
            out_of_time = time.process_time() - cpu_started > settings.max_cpu_seconds
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
    model.train()
    if is_processor(tokenizer):  # image prompts, through the VLM's processor
        inputs = training_inputs(tokenizer, [_image_prompt(p) for p in batch],
                                 [p.reference_response for p in batch], IGNORE_INDEX)
        return _optimizer_step(model, optimizer, model(**inputs).loss)
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
    loss = model(input_ids=input_ids, attention_mask=attention, labels=targets).loss
    return _optimizer_step(model, optimizer, loss)


def _optimizer_step(model, optimizer, loss: torch.Tensor) -> float:
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    return float(loss.detach())


@torch.no_grad()
def sampled_accuracy(model, tokenizer, problems: Sequence[SyntheticProblem]) -> float:
    """Fraction of problems that one sampled response (temperature 1) solves: equals the
    reference, or is accepted where several responses solve a problem (Countdown)."""
    model.eval()
    if is_processor(tokenizer):
        encoded = generation_inputs(tokenizer, [_image_prompt(problem) for problem in problems])
        tokenizer = text_tokenizer(tokenizer)
    else:
        prompts = [problem.row.prompt for problem in problems]
        encoded = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    longest = max(len(problem.reference_response) for problem in problems)
    slack = 2 if all(problem.accepts is None for problem in problems) else 8  # other solutions
    output = model.generate(
        **encoded, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
        max_new_tokens=longest + slack, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    responses = tokenizer.batch_decode(output[:, encoded["input_ids"].shape[1]:], skip_special_tokens=True)
    correct = sum(p.solved_by(r) for r, p in zip(responses, problems, strict=True))
    return correct / len(problems)


def _image_prompt(problem: SyntheticProblem) -> Prompt:
    """A multimodal problem's prompt as the plain template gives it to the engines."""
    return Prompt(text=problem.row.prompt, images=list(problem.row.images))

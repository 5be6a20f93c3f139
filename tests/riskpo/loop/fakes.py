"""In-process fakes behind the loop's Protocols (riskpo/loop/contracts.py): rollout engines,
verifiers, a learner and the weight-sync object, for loop tests that run in milliseconds a
step with no Ray and no model. tests/riskpo/loop/test_trainer.py and tests/riskpo/run/
test_stops.py import them by name (pytest puts each test's directory on sys.path)."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from launch.config import compose_config, validate
from riskpo.batch import TrainBatch
from riskpo.data.loaders import load_train_and_eval
from riskpo.loop.contracts import Workers
from riskpo.loop.trainer import Trainer
from riskpo.messages import Completion, NonFiniteSampling, SamplingParams
from riskpo.run.record import RunLogger

QUIET = ["logger.backend=none", "logger.progress=none", "logger.plots=false",
         "model.warmstart.enabled=false", "data.train.size=200", "data.eval.size=6",
         "data.eval_samples=4", "trainer.samples_per_prompt=4"]


def draw(*key: object) -> float:
    """A deterministic number in [0, 1) from a key (the fake policy's coin)."""
    digest = hashlib.sha256(repr(key).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


class FakeRollout:
    """Answers "a+b=" right with a per-prompt skill: prompts ending in 0-2 are always right,
    3-5 always wrong, the rest right half of the time (so some groups carry no signal). Like a
    real engine it stamps the weight version, refuses to work asleep, can take a while, reports
    the figures of its last generate call, and samples from non-finite probabilities (raising
    NonFiniteSampling) once it holds weights of version `broken_from` or later."""

    def __init__(self, seconds: float = 0.0, broken_from: int | None = None) -> None:
        self.version: int | None = None
        self.calls: list[tuple[int, SamplingParams]] = []
        self.log: list[tuple[str, int | None]] = []
        self.asleep, self.seconds, self.broken_from = False, seconds, broken_from
        self.figures: list[dict[str, float]] = []  # rollout/* of each generate call

    def generate(self, prompts: list[Any], params: SamplingParams) -> list[list[Completion]]:
        if self.asleep:
            raise RuntimeError("generate called while asleep")
        if self.broken_from is not None and (self.version or 0) >= self.broken_from:
            raise NonFiniteSampling("probability tensor contains either `inf`, `nan` or element < 0",
                                    weight_version=self.version)
        self.calls.append((len(prompts), params))
        self.log.append(("generate", self.version))
        time.sleep(self.seconds)
        out = [[self._answer(prompt.text, j, params.seed) for j in range(params.n)] for prompt in prompts]
        tokens = sum(len(c.token_ids) for samples in out for c in samples)
        self.figures.append({"rollout/seconds": 0.5, "rollout/response_tokens": float(tokens),
                             "rollout/tokens_per_s": tokens / 0.5, "rollout/actor_failures": 1.0,
                             "rollout/calls": float(len(self.calls))})
        return out

    def _answer(self, text: str, sample: int, seed: int | None) -> Completion:
        a, b = text.rstrip("=").split("+")
        truth, last = int(a) + int(b), int(b) % 10
        right = last <= 2 or (last > 5 and draw(text, sample, seed) < 0.5)
        answer = str(truth if right else truth + 1)
        return Completion([5] * len(answer), [-0.5] * len(answer), "stop", answer, [1, 2], self.version)

    def weight_versions(self) -> list[int | None]:
        return [self.version]

    def sleep(self) -> None:
        self.log.append(("sleep", self.version))
        self.asleep = True

    def wake_up(self) -> None:
        self.log.append(("wake", self.version))
        self.asleep = False

    def metrics(self) -> dict[str, float]:
        return dict(self.figures[-1]) if self.figures else {}

    def drain_events(self) -> list[dict[str, Any]]:
        return []


class FakeVerifiers:
    def verify_batch(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{"reward": float(r["response"] == r["ground_truth"]),
                 "status": "ok" if r["response"] == r["ground_truth"] else "wrong_answer"}
                for r in rows]

    def drain_events(self) -> list[dict[str, Any]]:
        return []


class FakeLearner:
    """Keeps the batches it was given; its weight version counts its updates. The updates of
    the steps in `bad_steps` are skipped as non-finite. A checkpoint is the driver's `extra`,
    pickled, beside a padding file of `checkpoint_bytes`; `fail_save` is raised by the save."""

    def __init__(self, rollout: FakeRollout, seconds: float = 0.0,
                 bad_steps: set[int] = frozenset()) -> None:
        self.rollout, self.seconds, self.bad_steps = rollout, seconds, set(bad_steps)
        self.batches: list[TrainBatch] = []
        self.weight_version, self.saves = 0, []
        self.checkpoint_bytes: int = 1000
        self.fail_save: BaseException | None = None

    def compute_logprobs(self, batch: TrainBatch) -> dict[str, float]:
        self.rollout.log.append(("logprobs", self.weight_version))
        return {"rollout_learner_logprob_gap": 0.0}

    def train_step(self, batch: TrainBatch) -> dict[str, float]:
        self.rollout.log.append(("train", self.weight_version))
        time.sleep(self.seconds)
        self.batches.append(batch)
        self.weight_version += 1
        bad = self.weight_version in self.bad_steps
        return {"loss": float("nan") if bad else float(batch.advantages.abs().mean()),
                "grad_norm": float("inf") if bad else 1.0, "entropy": 0.5, "mini_batches": 1.0,
                "skipped_updates": float(bad), "trailing_skipped_updates": float(bad)}

    def save(self, path: str, extra: dict[str, Any] | None = None) -> None:
        self.saves.append(extra["step"])
        Path(path).mkdir(parents=True, exist_ok=True)
        (Path(path) / "padding.bin").write_bytes(b"x" * self.checkpoint_bytes)
        if self.fail_save is not None:
            raise self.fail_save
        torch.save({"extra": extra, "version": self.weight_version}, Path(path) / "learner.pt")

    def load(self, path: str) -> dict[str, Any]:
        state = torch.load(Path(path) / "learner.pt", weights_only=False)
        self.weight_version = state["version"]
        return state["extra"]

    def export_hf(self, path: str) -> None:
        Path(path).mkdir(parents=True, exist_ok=True)


class FakeWeightSync:
    """Hands the learner's weights to the fake engine: it then holds `version` (and logs the
    sync); weights sent to a sleeping engine are refused, like the real sync."""

    def __init__(self, rollout: FakeRollout) -> None:
        self.rollout = rollout
        self.version: int | None = None

    def sync(self, version: int) -> dict[str, float]:
        if self.rollout.asleep:
            raise RuntimeError("weights sent to a sleeping engine")
        self.version = self.rollout.version = version
        self.rollout.log.append(("sync", version))
        return {"sync/weight_version": float(version)}

    def lagging_engines(self) -> dict[int, int | None]:
        held = self.rollout.weight_versions()
        return {index: version for index, version in enumerate(held) if version != self.version}


def make_trainer(run_dir: Path, overrides: list[str], rollout: FakeRollout | None = None,
                 learner: FakeLearner | None = None, colocate: bool = False,
                 resume_step: int | None = None) -> tuple[Trainer, FakeLearner, RunLogger]:
    """A Trainer over the fakes for the QUIET config with `overrides`, writing to run_dir."""
    run = validate(compose_config([*QUIET, *overrides, f"run_dir={run_dir}"]))
    train_rows, eval_rows = load_train_and_eval(run.data)
    rollout = rollout or (learner.rollout if learner else FakeRollout())
    learner = learner or FakeLearner(rollout)
    logger = RunLogger(run_dir, run.logger, {}, run.trainer.total_steps, "fake",
                       resume_step=resume_step, console=Console(stderr=True, quiet=True))
    workers = Workers(rollout, FakeVerifiers(), learner, FakeWeightSync(rollout))
    trainer = Trainer(run, workers, train_rows, eval_rows, logger, run_dir, colocate=colocate)
    return trainer, learner, logger


def fit(trainer: Trainer, logger: RunLogger) -> dict[str, Any]:
    try:
        return trainer.fit()
    finally:
        logger.close()

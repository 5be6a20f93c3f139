"""Benchmark: every registered advantage estimator, vectorised, against a per-sample Python loop
of the same math (tests/riskpo/algo/reference_impl.py, tests/riskpo/algo/reference_objectives.py), in the same run.

At 512 prompts x 10 samples (bundles of 5, 0/1 rewards with a success rate per prompt, 1% of
rows masked) it prints, for each estimator, the loop and vectorised times (min / median of
repeated calls) and their ratio (the minimums), target >= 100x; then RiskPO's vectorised time
at 1024 x 16 (target < 5 ms). The vectorised side is the estimator's own function (what the
trainer calls, without the per-step diagnostics); the loops read one tensor element per
response, as release-style per-sample code does, and are checked equal to it first.
Run: .venv/bin/python bench/advantages.py
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "riskpo" / "algo"))
from reference_impl import (  # noqa: E402
    reference_f_grpo,
    reference_group_baseline,
    reference_qae,
    reference_riskpo,
)
from reference_objectives import (  # noqa: E402
    loop_pkpo_closed_form,
    reference_nsr,
    reference_rs_grpo,
    reference_w_reinforce,
)

from launch.config import compose_config, validate  # noqa: E402
from riskpo.algo.estimators.riskpo import RiskPOOptions, riskpo_step  # noqa: E402
from riskpo.algo.registry import AdvantageState, estimators  # noqa: E402

BUNDLE = 5
# RiskPO as conf/algorithm/riskpo_release.yaml states the release, with credit std; and the ICLR
# paper's options (RiskPOOptions' defaults) with responses paired in index order, so that the loop
# pairs them alike.
RELEASE = dataclasses.replace(validate(compose_config(["algorithm=riskpo_release"])).algorithm.options,
                              credit="std")
PAPER = dataclasses.replace(RiskPOOptions(), pairing="index")
TRACKED = (1.0, 3.0)  # quantiles as a tracker hands them over


def reference_options(options: RiskPOOptions) -> dict:
    """The loop reference's keyword arguments for these options."""
    keys = ("alpha", "beta", "w_mix", "natural_baseline", "mix_cvar", "risk_seeking",
            "risk_seeking_u", "std_normalize", "credit", "pairing", "advantage_form")
    return {key: getattr(options, key) for key in keys}


def make_batch(prompts: int, samples: int, seed: int = 0):
    """(rewards [N] 0/1 with a success rate per prompt, question_ids [N], valid [N])."""
    generator = torch.Generator().manual_seed(seed)
    success_rate = torch.rand(prompts, generator=generator).repeat_interleave(samples)
    rewards = (torch.rand(prompts * samples, generator=generator) < success_rate).float()
    question_ids = torch.arange(prompts).repeat_interleave(samples)
    valid = torch.rand(prompts * samples, generator=generator) > 0.01
    return rewards, question_ids, valid


def time_call(fn, repeats: int, clock=time.perf_counter) -> tuple[float, float]:
    """(minimum, median) time of `repeats` calls in seconds, after one warm-up call.

    The minimum is the figure least disturbed by other processes on a shared machine.
    """
    fn()
    times = []
    for _ in range(repeats):
        start = clock()
        fn()
        times.append(clock() - start)
    return min(times), statistics.median(times)


def registered(name: str) -> Callable:
    """The estimator's own function with its default options, as the trainer's Estimator calls it."""
    estimator = estimators()[name]

    def run(rewards, question_ids, valid):
        result = estimator.fn(rewards, question_ids, question_ids // BUNDLE, estimator.options(),
                              AdvantageState(), valid)
        return torch.where(valid, result.advantages, 0.0)  # as the Estimator wrapper does

    return run


def cases() -> dict[str, tuple[Callable, Callable]]:
    """name -> (vectorised(rewards, question_ids, valid), loop(...)): every registered estimator."""
    grpo_normalises = estimators()["grpo"].options().std_normalize
    batch_normalises = estimators()["reinforce_baseline"].options().std_normalize
    return {
        "riskpo release (credit std, no mask)": (
            lambda r, q, v: riskpo_step(r, q, q // BUNDLE, RELEASE).advantages,
            lambda r, q, v: reference_riskpo(r, q, q // BUNDLE, **reference_options(RELEASE))),
        "riskpo paper (tracked 1, 3)": (
            lambda r, q, v: riskpo_step(r, q, q // BUNDLE, PAPER, valid=v, quantiles=TRACKED).advantages,
            lambda r, q, v: reference_riskpo(r, q, q // BUNDLE, valid=v, quantiles=TRACKED,
                                             quantile_source="tracked", **reference_options(PAPER))),
        "grpo": (registered("grpo"),
                 lambda r, q, v: reference_group_baseline(r, q, v, "grpo", grpo_normalises)),
        **{name: (registered(name), lambda r, q, v, n=name: reference_group_baseline(r, q, v, n))
           for name in ("dr_grpo", "rloo")},
        "reinforce_baseline": (registered("reinforce_baseline"), lambda r, q, v: reference_group_baseline(
            r, q, v, "reinforce_baseline", batch_normalises)),
        "nsr": (registered("nsr"), reference_nsr),
        "w_reinforce": (registered("w_reinforce"), reference_w_reinforce),
        "pkpo (k 4)": (registered("pkpo"), lambda r, q, v: loop_pkpo_closed_form(r, q, v, k=4)),
        "rs_grpo (beta 2)": (registered("rs_grpo"), reference_rs_grpo),
        "qae (K 0.4)": (registered("qae"), reference_qae),
        "f_grpo (gamma 1)": (registered("f_grpo"), reference_f_grpo),
    }


def main() -> None:
    torch.set_num_threads(1)
    batch = make_batch(512, 10)
    covered = {name.split(" ")[0] for name in cases()}
    missing = set(estimators()) - covered
    if missing:
        raise SystemExit(f"bench/advantages.py: no loop reference for {sorted(missing)}")
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; 512 prompts x 10 "
          f"samples, bundles of {BUNDLE}; times are min / median")
    for name, (vectorised, loop) in cases().items():
        torch.testing.assert_close(vectorised(*batch).double(), loop(*batch), atol=1e-5, rtol=1e-5)
        loop_min, loop_median = time_call(lambda fn=loop: fn(*batch), repeats=3)
        vector_min, vector_median = time_call(lambda fn=vectorised: fn(*batch), repeats=100)
        print(f"{name:28s} loop {loop_min * 1e3:8.1f} / {loop_median * 1e3:8.1f} ms, vectorised "
              f"{vector_min * 1e3:6.3f} / {vector_median * 1e3:6.3f} ms, ratio "
              f"{loop_min / vector_min:6.0f}x (target >= 100x)")
    rewards, question_ids, _ = make_batch(1024, 16)
    for credit in ("uniform", "std", "sum_mean"):
        options = dataclasses.replace(RELEASE, credit=credit)

        def call(options=options):
            return riskpo_step(rewards, question_ids, question_ids // BUNDLE, options).advantages
        low, median = time_call(call, repeats=100)
        cpu, _ = time_call(call, repeats=100, clock=time.thread_time)
        print(f"1024 x 16, bundle {BUNDLE}, credit {credit}: vectorised {low * 1e3:.3f} / "
              f"{median * 1e3:.3f} ms wall, {cpu * 1e3:.3f} ms CPU (min), target < 5 ms")


if __name__ == "__main__":
    main()

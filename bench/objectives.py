"""Benchmark: the competing objectives' advantage functions (riskpo/baselines.py) against
per-sample Python loops of the same math (tests/reference_objectives.py), same run.

At 512 prompts x 10 samples, 0/1 rewards, 1% of rows masked: prints for each function the
vectorised and loop times (min / median of repeated calls; the ratio uses the minimums) and
the ratio, target >= 100x. The loops read one tensor element per response, as the released
per-sample implementations do; PKPO's loop is its closed form per response (math.comb), not
the subset enumeration the tests use.
Run: .venv/bin/python bench/objectives.py
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from advantages import time_call  # noqa: E402  (bench/advantages.py, this script's folder)
from reference_objectives import (  # noqa: E402
    loop_pkpo_closed_form,
    reference_nsr,
    reference_rs_grpo,
    reference_w_reinforce,
)

from riskpo.baselines import (  # noqa: E402
    nsr_advantages,
    pkpo_advantages,
    rs_grpo_advantages,
    w_reinforce_advantages,
)

PKPO_K = 4
CASES = {
    "nsr": (nsr_advantages, reference_nsr),
    "w_reinforce (lambda 0.1)": (w_reinforce_advantages, reference_w_reinforce),
    f"pkpo (k {PKPO_K}, loo_minus_one)": (
        lambda *batch: pkpo_advantages(*batch, k=PKPO_K),
        lambda *batch: loop_pkpo_closed_form(*batch, k=PKPO_K),
    ),
    "rs_grpo (beta 2)": (rs_grpo_advantages, reference_rs_grpo),
}


def make_batch(prompts: int, samples: int, seed: int = 0):
    """(rewards [N] 0/1 with a success rate per prompt, question_index [N], valid [N])."""
    generator = torch.Generator().manual_seed(seed)
    success_rate = torch.rand(prompts, generator=generator).repeat_interleave(samples)
    rewards = (torch.rand(prompts * samples, generator=generator) < success_rate).float()
    question_index = torch.arange(prompts).repeat_interleave(samples)
    valid = torch.rand(prompts * samples, generator=generator) > 0.01
    return rewards, question_index, valid


def main() -> None:
    torch.set_num_threads(1)
    batch = make_batch(512, 10)
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; 512 prompts x 10 samples; "
          "times are min / median")
    for name, (vectorised, loop) in CASES.items():
        torch.testing.assert_close(vectorised(*batch), loop(*batch), rtol=1e-12, atol=1e-12)
        loop_min, loop_median = time_call(lambda fn=loop: fn(*batch), repeats=5)
        vector_min, vector_median = time_call(lambda fn=vectorised: fn(*batch), repeats=200)
        print(f"{name:32s} loop {loop_min * 1e3:7.2f} / {loop_median * 1e3:7.2f} ms, "
              f"vectorised {vector_min * 1e3:6.3f} / {vector_median * 1e3:6.3f} ms, "
              f"ratio {loop_min / vector_min:5.0f}x (target >= 100x)")


if __name__ == "__main__":
    main()

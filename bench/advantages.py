"""Benchmark: vectorised riskpo_advantages against the release-style loop implementation.

Times both at 512 prompts x 10 samples (bundle size 5) in the same run and prints the ratio
(target >= 300x), then the vectorised time at 1024 x 16 (target < 5 ms).
Run: .venv/bin/python bench/advantages.py
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from reference_impl import reference_riskpo  # noqa: E402

from riskpo.advantages import riskpo_advantages  # noqa: E402

OPTIONS = dict(alpha=0.2, beta=0.8, w_mix=1.5, credit="std")


def make_batch(prompts: int, samples: int, bundle_size: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    rewards = torch.randint(0, 2, (prompts * samples,), generator=generator).float()
    question_ids = torch.arange(prompts).repeat_interleave(samples)
    return rewards, question_ids, question_ids // bundle_size


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


def main() -> None:
    torch.set_num_threads(1)
    batch = make_batch(512, 10, 5)
    fast = riskpo_advantages(*batch, **OPTIONS)
    slow = reference_riskpo(*batch, **OPTIONS)
    torch.testing.assert_close(fast.double(), slow, atol=1e-5, rtol=1e-5)

    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; times are min / median")
    loop_min, loop_median = time_call(lambda: reference_riskpo(*batch, **OPTIONS), repeats=3)
    vector_min, vector_median = time_call(lambda: riskpo_advantages(*batch, **OPTIONS), repeats=100)
    print(f"512 x 10, bundle 5, credit std: release-style loops {loop_min * 1e3:.0f} / "
          f"{loop_median * 1e3:.0f} ms, vectorised {vector_min * 1e3:.3f} / {vector_median * 1e3:.3f} ms, "
          f"ratio {loop_min / vector_min:.0f}x (min) / {loop_median / vector_median:.0f}x (median), "
          "target >= 300x")

    large = make_batch(1024, 16, 5)
    for credit in ("uniform", "std", "sum_mean"):
        low, median = time_call(lambda c=credit: riskpo_advantages(*large, credit=c), repeats=100)
        cpu, _ = time_call(lambda c=credit: riskpo_advantages(*large, credit=c), repeats=100,
                           clock=time.thread_time)
        print(f"1024 x 16, bundle 5, credit {credit}: vectorised {low * 1e3:.3f} / {median * 1e3:.3f} ms "
              f"wall, {cpu * 1e3:.3f} ms CPU (min), target < 5 ms")


if __name__ == "__main__":
    main()

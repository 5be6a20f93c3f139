"""GPU memory of a colocated rollout engine: what the transformers engine holds on the GPU before
sleep, asleep, and after wake-up (and that it generates again), for a randomly initialised
Qwen2-0.5B-class model in bf16. Needs a CUDA device; no Ray, no vLLM.

    PYTHONPATH=. python bench/colocate_gpu.py [--tokens 128]

Prints torch.cuda.memory_allocated and memory_reserved at each point and the share sleeping
frees (the learner gets it while it trains: cluster.colocate=true).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from learner_gpu import build_model_dir  # noqa: E402

from riskpo.messages import Prompt, SamplingParams  # noqa: E402
from workers.rollout.hf_engine import HFEngine  # noqa: E402

GIB = 2**30


def memory(label: str) -> tuple[float, float]:
    torch.cuda.synchronize()
    allocated, reserved = torch.cuda.memory_allocated() / GIB, torch.cuda.memory_reserved() / GIB
    print(f"{label:<22} allocated {allocated:7.3f} GiB   reserved {reserved:7.3f} GiB", flush=True)
    return allocated, reserved


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=128, help="new tokens per sample")
    parser.add_argument("--prompts", type=int, default=32)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench/colocate_gpu.py needs a CUDA device (sleep frees GPU memory only)")
    print(f"device: {torch.cuda.get_device_name()}")
    with tempfile.TemporaryDirectory() as tmp:
        model_dir, parameters = build_model_dir(Path(tmp))
        print(f"model: {parameters / 1e6:.0f}M parameters, bf16")
        engine = HFEngine(model_dir, device="cuda", dtype="bfloat16")
        prompts = [Prompt(token_ids=list(range(10 + i, 74 + i))) for i in range(args.prompts)]
        params = SamplingParams(n=4, max_new_tokens=args.tokens, seed=0)
        engine.generate(prompts, params)
        awake, _ = memory("awake, after generate")
        engine.sleep()
        asleep, _ = memory("asleep")
        engine.wake_up()
        woken, _ = memory("after wake_up")
        samples = engine.generate(prompts, params)
        memory("after generate again")
        assert all(len(per_prompt) == 4 for per_prompt in samples)
    print(f"sleeping frees {awake - asleep:.3f} GiB of {awake:.3f} GiB allocated "
          f"({100 * (awake - asleep) / awake:.0f}%); wake-up restores {woken:.3f} GiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())

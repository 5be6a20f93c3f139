"""DeepSpeed learner throughput on one GPU: a ZeRO-2 bf16 PPO train step of a randomly
initialised Qwen2-0.5B-class model through the learner backend (no Ray), reporting
tokens/s, MFU against the card's dense bf16 peak, and peak GPU memory.

    PYTHONPATH=. python bench/learner_gpu.py [--rows 64] [--prompt-len 256] [--response-len 768] [--steps 3]
"""

from __future__ import annotations

import argparse
import os
import socket
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, Qwen2Config

from riskpo.batch import TrainBatch
from riskpo.models.tiny import build_tokenizer
from workers.learner.config import LearnerConfig
from workers.learner.microbatch import plan_micro_batches, row_lengths

# Dense bf16 peaks (no sparsity), by a substring of torch.cuda.get_device_name().
BF16_PEAK_FLOPS = {
    "H200": 989e12,
    "H100 PCIe": 756e12,
    "H100 NVL": 835e12,
    "H100": 989e12,  # SXM (reported as "H100 80GB HBM3")
    "A100": 312e12,
    "L40S": 362e12,
}

QWEN2_0_5B = {
    "hidden_size": 896,
    "intermediate_size": 4864,
    "num_hidden_layers": 24,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
    "vocab_size": 151936,
    "max_position_embeddings": 32768,
    "tie_word_embeddings": True,
}


def bf16_peak(device_name: str) -> float | None:
    for key, peak in BF16_PEAK_FLOPS.items():
        if key in device_name:
            return peak
    return None


def build_model_dir(out_dir: Path) -> tuple[Path, int]:
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(Qwen2Config(**QWEN2_0_5B), dtype=torch.float32)
    model.save_pretrained(out_dir)
    build_tokenizer().save_pretrained(out_dir)  # only its pad id is used; ids below are random
    return out_dir, sum(p.numel() for p in model.parameters())


def random_batch(rows: int, prompt_len: int, response_len: int, vocab: int) -> TrainBatch:
    generator = torch.Generator().manual_seed(0)
    prompts = torch.randint(4, vocab, (rows, prompt_len), generator=generator).tolist()
    responses = torch.randint(4, vocab, (rows, response_len), generator=generator).tolist()
    advantages = torch.randn(rows, generator=generator)
    return TrainBatch(prompts, responses, [[-1.0] * response_len] * rows, advantages, torch.ones(rows, dtype=torch.bool))


def flops_per_token(num_params: int, config: dict, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward): 6N plus attention 12 * layers * d * T (PaLM)."""
    return 6 * num_params + 12 * config["num_hidden_layers"] * config["hidden_size"] * seq_len


def init_single_rank() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    import deepspeed

    deepspeed.init_distributed(dist_backend="nccl")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--prompt-len", type=int, default=256)
    parser.add_argument("--response-len", type=int, default=768)
    parser.add_argument("--token-budget", type=int, default=8192)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench/learner_gpu.py needs a CUDA GPU")
    device_name = torch.cuda.get_device_name()
    init_single_rank()
    from workers.learner.deepspeed_backend import DeepSpeedBackend

    model_dir, num_params = build_model_dir(Path(tempfile.mkdtemp(prefix="learner_gpu_")))
    config = LearnerConfig(
        device="gpu", zero_stage=2, dtype="bfloat16", lr=1e-6, micro_batch_token_budget=args.token_budget,
        gradient_checkpointing=args.gradient_checkpointing,
    )
    backend = DeepSpeedBackend()
    backend.initialize(str(model_dir), config, rank=0, world_size=1)
    batch = random_batch(args.rows, args.prompt_len, args.response_len, QWEN2_0_5B["vocab_size"])
    plan = plan_micro_batches(row_lengths(batch), range(len(batch)), 1, args.token_budget)[0]
    tokens = sum(row_lengths(batch))

    start = time.perf_counter()
    logprobs = backend.logprobs(batch, plan)
    torch.cuda.synchronize()
    logprob_seconds = time.perf_counter() - start
    order = [row for micro in plan for row in micro]
    old = [None] * len(batch)
    for row, values in zip(order, logprobs, strict=True):
        old[row] = values
    batch.old_logprobs = old
    units = float(args.rows * args.response_len)

    backend.train_step(batch, [plan], [units])  # warm-up (allocations, cuBLAS autotuning)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    step_times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        metrics = backend.train_step(batch, [plan], [units])[0]
        torch.cuda.synchronize()
        step_times.append(time.perf_counter() - start)
    seconds = min(step_times)
    tokens_per_s = tokens / seconds
    seq_len = args.prompt_len + args.response_len
    achieved = tokens_per_s * flops_per_token(num_params, QWEN2_0_5B, seq_len)
    peak = bf16_peak(device_name)
    print(f"device: {device_name}; torch {torch.__version__}")
    print(f"model: Qwen2-0.5B-class, {num_params / 1e6:.0f}M parameters, random init, bf16, ZeRO-2, 1 rank")
    print(f"batch: {args.rows} rows x {seq_len} tokens = {tokens} tokens, {len(plan)} micro-batches "
          f"(budget {args.token_budget}), gradient checkpointing {args.gradient_checkpointing}")
    print(f"train step: {seconds:.3f} s (best of {args.steps}: {', '.join(f'{t:.3f}' for t in step_times)})"
          f"  {tokens_per_s:,.0f} tokens/s  loss {metrics['loss']:.4f} grad_norm {metrics['grad_norm']:.3f}")
    print(f"old log-probs (forward only): {logprob_seconds:.3f} s, {tokens / logprob_seconds:,.0f} tokens/s (first call)")
    if peak is None:
        print(f"MFU: unknown bf16 peak for {device_name!r}; achieved {achieved / 1e12:.1f} TFLOP/s")
    else:
        print(f"MFU: {achieved / peak:.1%} ({achieved / 1e12:.1f} of {peak / 1e12:.0f} TFLOP/s dense bf16; "
              "6N + 12*layers*d*T FLOPs per token)")
    print(f"peak GPU memory: {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB allocated, "
          f"{torch.cuda.max_memory_reserved() / 2**30:.1f} GiB reserved")


if __name__ == "__main__":
    main()

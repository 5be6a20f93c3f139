"""Rollout throughput: response tokens/s of each available engine on the same model and
prompts, and the Ray actor path's overhead against calling the engine in-process.

    python bench/rollout.py                                  # CPU: tiny model, hf (+ vllm), actor ratio
    python bench/rollout.py --device cuda --model-size 0.5b  # GPU: hf only, no Ray import

The actor overhead is measured with one actor and one chunk (the whole batch), so the only
difference from the in-process call is the Ray round trip: ratio = actor time / engine time.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from riskpo.messages import Prompt, SamplingParams
from riskpo.models.tiny import build_tokenizer  # noqa: E402
from workers.rollout import make_engine  # noqa: E402

# Qwen2-0.5B-class shapes (hidden 896, 24 layers, 14 heads of 64, 2 KV heads, MLP 4864).
QWEN2_05B = dict(
    hidden_size=896,
    num_hidden_layers=24,
    num_attention_heads=14,
    num_key_value_heads=2,
    head_dim=64,
    intermediate_size=4864,
    max_position_embeddings=4096,
)


def build_model(out_dir: Path, model_size: str, dtype: torch.dtype) -> Path:
    """The tiny character model, or a random Qwen2-0.5B-class model with a 32k vocabulary
    (the character tokenizer padded: speed depends on vocabulary size, not on the tokens)."""
    from riskpo.models.tiny import build_tiny_model

    if model_size == "tiny":
        return build_tiny_model(out_dir)
    from transformers import AutoModelForCausalLM, Qwen2Config

    tokenizer = build_tokenizer()
    config = Qwen2Config(
        vocab_size=32768,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
        **QWEN2_05B,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def make_prompts(count: int, seed: int = 0) -> list[Prompt]:
    generator = torch.Generator().manual_seed(seed)
    prompts = []
    for _ in range(count):
        a, b = torch.randint(0, 1000, (2,), generator=generator).tolist()
        prompts.append(Prompt(text=f"{a}+{b}="))
    return prompts


def time_generate(generate, prompts, params, repeats: int, warm_up: bool = True):
    """(median seconds over `repeats` timed calls, response tokens of the last one)."""
    if warm_up:
        generate(prompts, params)
    seconds, tokens = [], 0
    for _ in range(repeats):
        started = time.perf_counter()
        results = generate(prompts, params)
        seconds.append(time.perf_counter() - started)
        tokens = sum(len(s.token_ids) for samples in results for s in samples)
    return statistics.median(seconds), tokens


def bench_engines(model_path, kinds, engine_kwargs, prompts, params, repeats) -> dict:
    figures = {}
    for kind in kinds:
        engine = make_engine(kind, model_path, **engine_kwargs[kind])
        seconds, tokens = time_generate(engine.generate, prompts, params, repeats)
        figures[kind] = {"seconds": seconds, "tokens": tokens, "tokens_per_s": tokens / seconds}
        print(
            f"{kind:5s} engine in-process: {tokens} tokens in {seconds:.3f} s = "
            f"{tokens / seconds:,.0f} tokens/s",
            flush=True,
        )
        del engine
    return figures


def bench_actor_overhead(model_path, engine_kwargs, prompts, params, repeats) -> dict:
    """The same hf engine in-process and behind a 1-actor RolloutGroup (one chunk), timed in
    alternating pairs so that load from other processes hits both alike."""
    import ray

    from workers.rollout.group import RolloutGroup

    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        object_store_memory=256 * 1024 * 1024,
    )
    try:
        engine = make_engine("hf", model_path, **engine_kwargs["hf"])
        group = RolloutGroup(1, "hf", model_path, engine_kwargs["hf"], num_cpus_per_actor=1)
        via_actor = lambda p, s: group.generate(p, s, chunk_size=len(p))  # noqa: E731
        engine.generate(prompts, params), via_actor(prompts, params)  # warm-up
        pairs = [
            (
                time_generate(engine.generate, prompts, params, 1, warm_up=False)[0],
                time_generate(via_actor, prompts, params, 1, warm_up=False)[0],
            )
            for _ in range(repeats)
        ]
        transport = measure_transport(ray, group, engine.generate(prompts, params))
        group.shutdown()
    finally:
        ray.shutdown()
    ratios = [actor / local for local, actor in pairs]
    ratio = statistics.median(ratios)
    print(
        f"hf in-process vs via Ray actor, {repeats} alternating pairs (s): "
        + ", ".join(f"{local:.2f}/{actor:.2f}" for local, actor in pairs),
        flush=True,
    )
    print(
        f"actor/in-process time ratio: median {ratio:.3f} (overhead {100 * (ratio - 1):+.1f}%, "
        f"target < +10%); per pair {', '.join(f'{r:.3f}' for r in ratios)}",
        flush=True,
    )
    local_median = statistics.median(local for local, _ in pairs)
    transport_share = (transport["results_round_trip_s"] + transport["ping_s"]) / local_median
    print(
        f"transport alone: results through the object store {transport['results_round_trip_s']:.3f} s, "
        f"actor ping {1000 * transport['ping_s']:.1f} ms = {100 * transport_share:.1f}% of the "
        "in-process generate time",
        flush=True,
    )
    return {
        "pairs_seconds": pairs,
        "ratios": ratios,
        "ratio": ratio,
        "transport_share": transport_share,
        **transport,
    }


def measure_transport(ray, group, results) -> dict:
    """What the actor path adds besides generating: the results' serialisation round trip
    and an actor call's latency (medians)."""
    round_trips, pings = [], []
    for _ in range(5):
        started = time.perf_counter()
        ray.get(ray.put(results))
        round_trips.append(time.perf_counter() - started)
    for _ in range(20):
        started = time.perf_counter()
        ray.get(group.actors[0].ping.remote())
        pings.append(time.perf_counter() - started)
    return {
        "results_round_trip_s": statistics.median(round_trips),
        "ping_s": statistics.median(pings),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--model-size", default="tiny", choices=["tiny", "0.5b"])
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-batch-sequences", type=int, default=512)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (hf, CPU)")
    parser.add_argument("--skip-actor", action="store_true", help="no Ray actor comparison")
    parser.add_argument("--json", type=Path, default=None, help="also write figures here")
    args = parser.parse_args()

    dtype = torch.bfloat16 if args.model_size == "0.5b" and args.device == "cuda" else torch.float32
    dtype_name = "bfloat16" if dtype == torch.bfloat16 else "float32"
    on_gpu = args.device == "cuda"
    kinds = ["hf"]
    if importlib.util.find_spec("vllm") is not None:
        kinds.append("vllm")
    engine_kwargs = {
        "hf": {
            "device": args.device,
            "dtype": dtype_name,
            "max_batch_sequences": args.max_batch_sequences,
            "num_threads": args.threads,
        },
        "vllm": {"dtype": dtype_name, "enforce_eager": not on_gpu, "seed": 0},
    }
    prompts = make_prompts(args.prompts)
    # Random weights rarely emit EOS; ignore-EOS is not in the contract, so lengths are
    # reported as measured (tokens/s counts the tokens actually generated).
    params = SamplingParams(n=args.samples, max_new_tokens=args.max_new_tokens, seed=0)
    print(
        f"model {args.model_size} ({dtype_name}) on {args.device}; {args.prompts} prompts x "
        f"{args.samples} samples x {args.max_new_tokens} tokens; engines: {', '.join(kinds)}; "
        f"torch {torch.__version__}",
        flush=True,
    )
    if on_gpu:
        print(f"GPU: {torch.cuda.get_device_name(0)}", flush=True)
    if "vllm" not in kinds:
        print("vllm: not importable here, no figure", flush=True)

    with tempfile.TemporaryDirectory(prefix="bench_rollout_") as tmp:
        model_path = build_model(Path(tmp), args.model_size, dtype)
        figures = {
            "engines": bench_engines(
                model_path, ["hf"], engine_kwargs, prompts, params, args.repeats
            )
        }
        # Before vLLM: its CPU backend pins this process's threads, which would slow the
        # in-process side of the comparison and flatter the actor.
        run_actor = not args.skip_actor and not on_gpu
        if run_actor and importlib.util.find_spec("ray") is not None:
            figures["actor"] = bench_actor_overhead(
                model_path, engine_kwargs, prompts, params, args.repeats
            )
        if "vllm" in kinds:
            figures["engines"].update(
                bench_engines(model_path, ["vllm"], engine_kwargs, prompts, params, args.repeats)
            )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()

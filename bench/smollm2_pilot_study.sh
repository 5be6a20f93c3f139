#!/usr/bin/env bash
# The SmolLM2 pilot's study, one run at a time (README, "A real pretrained model on CPU"):
# a short learning-rate sweep with GRPO (each value a few steps, judged on held-out avg@4 at
# its end), then GRPO and RiskPO (riskpo_paper), one seed each, at the best value, with peak
# memory sampled from /proc (bench/peak_memory.py). Runs go to runs/smollm2-pilot/ (finished
# ones are kept and skipped, so an interrupted study resumes); a summary table is printed.
#
#   bash bench/smollm2_pilot_study.sh            # LRS, SWEEP_STEPS, STEPS override the plan
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv-vllm/bin/python
OUT="${OUT:-runs/smollm2-pilot}"
LRS="${LRS:-3e-6 1e-5 3e-5}"
SWEEP_STEPS="${SWEEP_STEPS:-4}"
STEPS="${STEPS:-20}"  # the recorded study (docs/smollm2-pilot.md); make pilot trains 30
mkdir -p "$OUT"

run() {  # run <dir> <overrides...>: one training run under the memory sampler, unless done
    local dir="$1"; shift
    if [[ -f "$dir/summary.json" ]]; then echo "done already: $dir"; return; fi
    echo "run: $dir $*"
    "$PY" bench/peak_memory.py --output "$dir.memory.json" -- \
        .venv-vllm/bin/riskpo-train experiment=smollm2-pilot logger=none seed=0 \
        run_dir="$dir" run_dir_policy=overwrite "$@"
}

for lr in $LRS; do
    run "$OUT/sweep-grpo-lr$lr" algorithm=grpo learner.lr="$lr" trainer.total_steps="$SWEEP_STEPS" \
        trainer.eval_before_training=false trainer.eval_every=0 trainer.save_every=0
done
BEST_LR="${BEST_LR:-$("$PY" - "$OUT" $LRS <<'PY'
import json, sys
out, lrs = sys.argv[1], sys.argv[2:]
scores = {lr: json.load(open(f"{out}/sweep-grpo-lr{lr}/summary.json"))["final"]["eval/avg@4"]
          for lr in lrs}
print(max(lrs, key=lambda lr: (scores[lr], -float(lr))))  # ties: the smaller rate
PY
)}"
echo "learning rate: $BEST_LR"
for algorithm in grpo riskpo_paper; do
    run "$OUT/$algorithm-lr$BEST_LR" algorithm="$algorithm" learner.lr="$BEST_LR" \
        trainer.total_steps="$STEPS" trainer.eval_every=0
done
"$PY" bench/smollm2_pilot_report.py "$OUT"

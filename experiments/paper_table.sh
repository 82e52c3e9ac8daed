#!/usr/bin/env bash
# The paper's table in miniature (RL4VLM's rows, MAYE's reporting): every method on every card
# task over N seeds, one run after another, then the report (table.md, summary.json, plots).
#
#   bash experiments/paper_table.sh [OUT] [SEEDS]        # defaults: outputs/table, 3
#
# Re-running it skips every seed that already has results.json (and resumes a half-done one), so
# an interrupted table is finished by the same command. The first VLM run builds the shared tiny
# reader (experiments/pretrain_tiny.py) into the cache; every later run reuses it.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-outputs/table}
SEEDS=${2:-3}
export HF_HUB_OFFLINE=1

seeds() { python -m rlvlm_jax.seeds --seeds "$SEEDS" "$@"; }

for task in numberline ezpoints points24 blackjack; do
    seeds --config "experiments/${task}_tiny.py" --workdir "$OUT/${task}_cot"
    seeds --config "experiments/${task}_tiny.py:nocot" --workdir "$OUT/${task}_nocot"
done
for lam in 0.1 0.9; do  # RL4VLM's lambda ablation (NumberLine)
    seeds --config experiments/numberline_tiny.py --workdir "$OUT/numberline_lambda$lam" \
        "--config.ppo.thought_lambda=$lam"
done
for task in NumberLine EZPoints Points24 Blackjack; do
    seeds --program rlvlm_jax.baselines.cnn_ppo --config "experiments/cnn_ppo.py:$task" \
        --workdir "$OUT/cnn_$task"
    for policy in random oracle; do
        for ((seed = 0; seed < SEEDS; seed++)); do
            dir=$OUT/${policy}_$task/seed_$seed
            [[ -f $dir/results.json ]] || python -m rlvlm_jax.baselines.policies \
                --policy "$policy" --task "$task" --seed "$seed" --workdir "$dir"
        done
    done
done
python -m rlvlm_jax.report "$OUT"/*/seed_* --out "$OUT/report" --force

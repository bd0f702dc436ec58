#!/usr/bin/env bash
# Every comparison of the paper's Sec. 3 on the gridworld, 3 seeds per curve, equal step budgets:
#   bash benchmark/grid_figures.sh                 # STEPS=1500000 by default (the default task's budget)
#   STEPS=200000 SEEDS="1 2 3" bash benchmark/grid_figures.sh
#   EXTRA="--num-test-levels 50" bash benchmark/grid_figures.sh   # flags for every run
# Each line trains its runs (two at a time, one torch thread each) and writes docs/grid_<name>.{md,png}.
# Cost on 2 CPU cores, two runs at once (2026-12-07, AMD EPYC): a 1.5M-step run of the default task takes
# 13-16 min (snail), 22-24 (snail-cat), 28-31 (memory-sf-mix), 36-44 (memory-sf), 40-43 (memory --mem-len 80),
# 25-28 (memory; 50-55 on 2026-11-30), 16-40 (ppo-finetune, ppo-finetune-attn, docs/grid_x2_ftfix.md), so Fig. 3's
# 7 agents x 3 seeds are ~4-5.5 hours; Fig. 4a and the mem-update ablation add 3 + 2 curves of 3 seeds.
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${STEPS:-1500000}
SEEDS=${SEEDS:-1 2 3}
EXTRA=${EXTRA:-}
run() { python benchmark/learning.py --env grid --seeds $SEEDS --total-timesteps "$STEPS" "$@" -- $EXTRA; }

# Fig. 3a/b (every agent) and 3c/d (their error modes over training)
run --tag fig3 --agents memory snail snail-cat memory-sf memory-sf-mix ppo-finetune ppo-finetune-attn
# Fig. 4b (memory, snail, snail-cat) and Fig. 6a/c (memory and the success banks): the Fig. 3 runs, plotted apart
run --tag fig3 --name fig4b --plot-only --agents memory snail snail-cat
run --tag fig3 --name fig6 --plot-only --agents memory memory-sf memory-sf-mix
# Fig. 4a: the length L of a stored failure
run --tag fig4a --agents memory --vary mem-len 6 20 80
# our ablation: failures enter the bank at the end of the trial (the paper) or of each episode, SNAIL over the
# whole trial in both, so the bank rule is the one difference (docs/grid_ablations_training-rule.md)
run --tag memupdate --agents memory --vary mem-update trial episode -- --train-history trial

"""The UR reacher's collapse into touching nothing (issue 6), drawn from runs already under runs/:
one line per run of training episode success, policy entropy, PPO's clip fraction and episodes
per trial, and a table of how each run ended.

    python benchmark/reacher_collapse.py

The runs are the reacher's 320,000-step comparisons, `benchmark/learning.py --env reacher --agents
memory snail --seeds 1 --total-timesteps 320000 --tag T -- --obs-size 32 --num-envs 16 --num-workers 0
--num-train-levels 200 --num-test-levels 200 --eval-every 25 --eval-levels 32 --learning-rate 5e-4
--trials-per-minibatch 4 --gamma 0.99 [--norm-adv N]` with (T, N) = (hour, minibatch), (hour-nb, batch),
(hour-off, off), and the seed-2 runs of RUNS: `python reacher_failmem.py --agent A --seed 2 --threads 1
--exp-name E --total-timesteps 320000` with the same flags, `--eval-every 0` and `--norm-adv N` (so the
learning-rate schedule is the same). Some were stopped early to free the 2 cores; the table says where
each ended. Writes docs/reacher_collapse.{png,md}.
"""

import argparse
import glob
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from learning import scalars, smooth, write_doc  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# (exp-name, agent, seed, --norm-adv): the advantage normalisation is what the runs vary
RUNS = [
    ("hour", "memory", 1, "minibatch"),
    ("collapse_seed2", "memory", 2, "minibatch"),
    ("hour", "snail", 1, "minibatch"),
    ("hour-nb", "memory", 1, "batch"),
    ("collapse_nb_seed2", "memory", 2, "batch"),
    ("hour-nb", "snail", 1, "batch"),
    ("collapse_batch_seed2", "snail", 2, "batch"),
    ("hour-off", "memory", 1, "off"),
    ("collapse_off_seed2", "memory", 2, "off"),
    ("hour-off", "snail", 1, "off"),
    ("collapse_off_seed2", "snail", 2, "off"),
]
STYLES = {"minibatch": "tab:red", "batch": "tab:blue", "off": "tab:green"}
# a run has collapsed from the update after which its smoothed training success stays below this: half
# of what the untrained, near-uniform policies reach in their first updates (~0.06)
COLLAPSED = 0.03


def collapse_step(steps, success):
    """The first step from which the 10-update mean of training success stays below COLLAPSED,
    or None; only a run that ends below it counts."""
    if len(success) < 10:
        return None
    smoothed = smooth(success)
    above = np.flatnonzero(smoothed >= COLLAPSED)
    if smoothed[-1] >= COLLAPSED:
        return None
    return int(steps[9:][above[-1] + 1]) if len(above) else int(steps[9])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(ROOT / "docs"))
    args = parser.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("charts/episode_success", "training episode success (mean of 10 updates)"),
              ("losses/entropy", "policy entropy (uniform over 27 moves: 3.30)"),
              ("losses/clipfrac", "PPO: fraction of clipped ratios (mean of 10 updates)"),
              ("charts/episodes_per_trial", "episodes per 80-step trial (1: every one timed out)")]
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.2))
    table = ["| agent | --norm-adv | seed | steps run | training success, last 20 updates | collapsed at step "
             "| entropy at the end | clip fraction, last 20 updates | clip fraction on updates whose rollout touched no ball (how many) "
             "| held-out mean success, last evaluation (no ball touched) |",
             "|" + "---|" * 10]
    for exp, agent, seed, norm in RUNS:
        found = sorted(glob.glob(str(ROOT / "runs" / f"reacher__{exp}__{agent}__{seed}__*")))
        if not found:
            print(f"no run reacher__{exp}__{agent}__{seed}")
            continue
        run = found[-1]
        style = "-" if agent == "memory" else ":"
        label = f"{agent} --norm-adv {norm}, seed {seed}"
        for ax, (tag, title) in zip(axes, panels):
            steps, values = scalars(run, tag)
            if tag != "losses/entropy" and len(values) >= 10:
                steps, values = steps[9:], smooth(values)
            ax.plot(steps, values, style, color=STYLES[norm], alpha=1.0 if seed == 1 else 0.5, label=label)
            ax.set_title(title, fontsize=10)
        steps, success = scalars(run, "charts/episode_success")
        collapsed = collapse_step(steps, success)
        entropy = scalars(run, "losses/entropy")[1]
        clipfrac = scalars(run, "losses/clipfrac")[1]
        # a rollout with no success and a zero return touched no ball: every reward in it was 0
        untouched = (success == 0) & (scalars(run, "charts/trial_return")[1] == 0)
        blind = f"{clipfrac[untouched].mean():.3f} ({untouched.sum()})" if untouched.any() else "- (0)"
        held_out = scalars(run, "eval/mean_success")
        no_hit = scalars(run, "eval/no_hit")[1]
        last_eval = (f"{held_out[1][-1]:.3f} at {int(held_out[0][-1]):,} ({no_hit[-1]:.2f})" if len(held_out[1])
                     else "not evaluated")
        table.append(f"| {agent} | {norm} | {seed} | {int(steps[-1]):,} | {success[-20:].mean():.3f} | "
                     f"{f'{collapsed:,}' if collapsed else 'no'} | {entropy[-1]:.2f} | {clipfrac[-20:].mean():.3f} | {blind} | {last_eval} |")
    for ax in axes:
        ax.set_xlabel("env steps")
        ax.grid(alpha=0.3)
        ax.ticklabel_format(axis="x", style="sci", scilimits=(0, 0))
    axes[0].legend(fontsize=7)
    fig.suptitle("UR reacher, 32 px, 200 training levels: memory (solid) and SNAIL (dotted) by advantage normalisation")
    fig.tight_layout()
    fig.savefig(Path(args.out) / "reacher_collapse.png", dpi=90)

    text = ["# UR reacher: the collapse into touching nothing, by advantage normalisation", "",
            "Made by `python benchmark/reacher_collapse.py` from the runs its docstring names. Held-out success: the",
            "last evaluation (periodic ones cover 32 held-out levels, the final one 200); in brackets the share of",
            f"levels where no ball was touched. A run has collapsed from the step after which its 10-update mean",
            f"training success stays below {COLLAPSED}, half the ~0.06 of the untrained policies.", "", *table, "", "![collapse](reacher_collapse.png)", ""]
    write_doc(Path(args.out) / "reacher_collapse.md", "\n".join(text))
    print("\n".join(text))


if __name__ == "__main__":
    main()

"""How many steps would the memory agent need to recover from its failures? Measured, then extrapolated.

    python benchmark/grid_budget.py --exp-names x2_fresh_start x2_3m --target 0.8

For every run of the given exp-names (runs/grid__{exp}__memory__{seed}__*), its periodic held-out
evaluations: the success of test episode 1 and the share of levels missed in episode 1 whose episode 2
reached the goal, P(goal in ep 2 | missed ep 1). Runs since bea37c4 log it (eval/goal_after_first_failure);
for older ones it is (s2 - s1) / (1 - s1) from the logged per-episode success, which is exact for a
greedy memory agent since a9308b2: after a success its bank is unchanged (failures only), SNAIL starts
anew and the first input is the same, so it walks the same path to the goal again (1.000 measured in
docs/grid_recovery_x2_fresh_start.md). A least-squares line through each exp-name's points (all seeds),
and one through its later half, say at how many steps it would reach --target, if it went on rising as it did; the minutes follow from
the runs' training SPS. With two blocks a recovery r gives a mean success of about s1 + 0.8 (1 - s1) r;
0.9 of the Bayes-optimal 0.9 needs r = 0.8 at s1 = 0.47. Writes docs/grid_budget.md and .png.
"""

import argparse
import glob
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmark"))
from learning import scalars, write_doc  # noqa: E402


def recovery_points(run):
    """(steps, success of episode 1, P(goal in ep 2 | missed ep 1)) of a run's evaluations."""
    steps, first = scalars(run, "eval/success_ep1")
    _, second = scalars(run, "eval/success_ep2")
    _, logged = scalars(run, "eval/goal_after_first_failure")
    if len(logged) == len(steps):
        return steps, first, logged
    return steps, first, (second - first) / np.maximum(1 - first, 1e-9)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--exp-names", nargs="+", required=True)
    parser.add_argument("--target", type=float, default=0.8, help="the recovery whose steps the line extrapolates")
    parser.add_argument("--out", default=str(ROOT / "docs"))
    args = parser.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    rows = ["| exp-name | seed | steps run | P(goal ep 2 \\| missed ep 1) at each evaluation (steps: value) | final |",
            "|---|---|---|---|---|"]
    fits = ["| exp-name | runs | points | slope per 1M steps | steps where the line reaches the target | minutes at the runs' SPS |",
            "|---|---|---|---|---|---|"]
    for exp, colour in zip(args.exp_names, plt.cm.tab10.colors):
        runs = sorted(glob.glob(str(ROOT / "runs" / f"grid__{exp}__memory__*")))
        all_steps, all_values, sps = [], [], []
        for run in runs:
            steps, _, values = recovery_points(run)
            if not len(steps):
                continue
            seed = run.split("__")[3]
            sps_steps, sps_values = scalars(run, "charts/SPS")
            budget = int(sps_steps[-1]) if len(sps_steps) else 0
            sps.append(np.median(sps_values))
            ax.plot(steps, values, "o-", color=colour, alpha=0.6, label=f"{exp}" if run == runs[0] else None)
            rows.append(f"| {exp} | {seed} | {budget:,} | " + ", ".join(f"{s / 1e6:.2f}M: {v:.2f}" for s, v in zip(steps, values))
                        + f" | {values[-1]:.3f} |")
            all_steps += list(steps)
            all_values += list(values)
        if len(all_steps) < 2:
            continue
        all_steps, all_values = np.array(all_steps), np.array(all_values)
        # a line through every point, and one through the later half only: a curve that flattens reads slower there
        for points, keep in (("all", all_steps > 0), ("second half", all_steps >= all_steps.max() / 2)):
            slope, intercept = np.polyfit(all_steps[keep], all_values[keep], 1)
            reach = (args.target - intercept) / slope if slope > 0 else float("inf")
            end = reach if np.isfinite(reach) and reach > all_steps.max() else all_steps.max()
            line = np.linspace(all_steps[keep].min(), min(end, 4 * all_steps.max()), 50)
            ax.plot(line, intercept + slope * line, "--" if points == "all" else ":", color=colour)
            minutes = reach / np.mean(sps) / 60 if np.isfinite(reach) else float("inf")
            fits.append(f"| {exp} | {len(runs)} | {points} | {slope * 1e6:+.3f} | "
                        + (f"{reach:,.0f} | {minutes:.0f} at {np.mean(sps):.0f} SPS |" if np.isfinite(reach) else "never | |"))
    ax.axhline(args.target, color="black", ls=":", lw=1, label=f"target {args.target}")
    ax.axhline(1.0, color="black", ls="--", lw=1, label="Bayes-optimal (two blocks)")
    ax.set(title="held-out: goal in episode 2 after a missed episode 1", xlabel="env steps", ylabel="share of levels",
           ylim=(0, 1.05))
    ax.ticklabel_format(axis="x", style="sci", scilimits=(0, 0))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(Path(args.out) / "grid_budget.png", dpi=100)
    command = f"python benchmark/grid_budget.py --exp-names {' '.join(args.exp_names)} --target {args.target}"
    text = ["# Gridworld: recovery from the first failure over training, and the budget a line through it gives", "",
            f"Made by `{command}`. Periodic evaluations on 100 held-out levels (the last on 500), greedy. Each "
            "exp-name has a line fitted to all its runs' points and one to the later half of them; runs of different "
            "budgets anneal the learning rate over different spans.", "", *rows, "", *fits, "", "![recovery](grid_budget.png)", ""]
    write_doc(Path(args.out) / "grid_budget.md", "\n".join(text))
    print("\n".join(text))


if __name__ == "__main__":
    main()

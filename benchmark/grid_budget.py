"""How many steps would a gridworld agent need to reach a target? Measured, then extrapolated.

    python benchmark/grid_budget.py --exp-names x2_fresh_start x2_3m --target 0.8
    python benchmark/grid_budget.py --metric mean --num-blocks 3 --exp-names w16_x3_scratch480 --agents memory snail \
        --target 0.72 --name w16_x3_scratch480      # rung L4: 0.9 of the Bayes-optimal 0.8

For every run of the given exp-names and agents (runs/grid__{exp}__{agent}__{seed}__*), its periodic
held-out evaluations of one metric:
  recovery  the share of levels missed in episode 1 whose episode 2 reached the goal, P(goal in ep 2 |
            missed ep 1). Runs since bea37c4 log it (eval/goal_after_first_failure); for older ones it is
            (s2 - s1) / (1 - s1) from the logged per-episode success, which is exact for a greedy memory
            agent since a9308b2: after a success its bank is unchanged (failures only), SNAIL starts anew
            and the first input is the same, so it walks the same path to the goal again (1.000 measured
            in docs/grid_recovery_x2_fresh_start.md). With two blocks a recovery r gives a mean success of
            about s1 + 0.8 (1 - s1) r; 0.9 of the Bayes-optimal 0.9 needs r = 0.8 at s1 = 0.47.
  mean      the mean held-out success over the 5 test episodes (eval/mean_success), the ladder's L3/L4 measure.
A least-squares line through each (exp-name, agent)'s periodic points (all seeds), and one through its later
half, say at how many steps it would reach --target, if it went on rising as it did; the minutes follow from
the runs' training SPS. A finished run's last evaluation is on all --num-test-levels (500) held-out levels, the
periodic ones on the first --eval-levels of them: it is shown apart and left out of the lines, since another
level set reads another success. A second stage (a run started by --init-from from another run's checkpoint)
is drawn after the run it started from with --after STAGE=FIRST: each STAGE run's steps are shifted by the
last training step of the FIRST run of its agent and seed. Writes docs/grid_budget[_NAME].md and .png.

Where an agent's runs from scratch end at two budgets or more (exp-names that differ in --total-timesteps only,
each annealing its learning rate over its own budget), their final whole-set tests get lines of their own: the
final test against the budget, straight and in log steps (which flattens). That is the question L4 asks, what a
run of B steps scores on the test, on the test's own level set; the periodic points' first levels can read
another success than all of them (docs/grid_test_readings_w16_x3_null_15m.md: 0.07-0.08 lower on W16).
"""

import argparse
import glob
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmark"))
from learning import planned_steps, scalars, write_doc  # noqa: E402

TITLES = {"recovery": "held-out: goal in episode 2 after a missed episode 1",
          "mean": "held-out: mean success over the 5 test episodes"}


def metric_points(run, metric):
    """(steps, values) of one metric at a run's evaluations."""
    if metric == "mean":
        return scalars(run, "eval/mean_success")
    steps, first = scalars(run, "eval/success_ep1")
    _, second = scalars(run, "eval/success_ep2")
    _, logged = scalars(run, "eval/goal_after_first_failure")
    if len(logged) == len(steps):
        return steps, logged
    return steps, (second - first) / np.maximum(1 - first, 1e-9)


def split_final(steps, values, planned):
    """The periodic evaluations, and the final one (steps, value) or None: a run that reached the `planned` steps
    it was started for evaluated last there, on the whole held-out set. A run still going, or stopped early, has
    periodic points only, though its last one may fall on its last update."""
    if len(steps) and steps[-1] == planned:
        return steps[:-1], values[:-1], (steps[-1], values[-1])
    return steps, values, None


def first_run_steps(exp, agent, seed):
    """The last training step of the run a second stage started from: where the stage's steps begin."""
    runs = sorted(glob.glob(str(ROOT / "runs" / f"grid__{exp}__{agent}__{seed}__*")))
    if len(runs) != 1:
        sys.exit(f"grid_budget.py: error: --after needs one run of {exp} {agent} seed {seed}, found {len(runs)}")
    steps, _ = scalars(runs[0], "charts/SPS")
    return int(steps[-1])


def bayes_line(metric, num_blocks, episodes=5):
    """The Bayes-optimal tester's value of the metric: it walks straight to an untried block each episode."""
    if metric == "recovery":
        return 1 / (num_blocks - 1)
    import grid_failmem

    return float(np.mean(grid_failmem.bayes_optimal(num_blocks, episodes)))


def line_to(x, values, target):
    """A least-squares line through (x, values): its slope, intercept, and the x where it reaches `target`
    (inf where it does not rise)."""
    slope, intercept = np.polyfit(x, values, 1)
    return slope, intercept, (target - intercept) / slope if slope > 0 else float("inf")


def steps_cells(reach, sps):
    """A fit table's last two cells: the steps where a line reaches the target, and the minutes at the runs' SPS."""
    if not np.isfinite(reach):
        return "never | |"
    return f"{reach:,.0f} | {reach / np.mean(sps) / 60:.0f} at {np.mean(sps):.0f} SPS |"


# a line through the final tests against the budget, straight or in log steps: (name, budget -> x, x -> budget,
# the slope's unit, x per unit)
FINAL_FITS = (("straight", np.asarray, np.asarray, "per 1M steps", 1e6),
              ("in log steps", np.log, np.exp, "per doubling", np.log(2)))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--exp-names", nargs="+", required=True)
    parser.add_argument("--agents", nargs="+", default=["memory"])
    parser.add_argument("--metric", choices=sorted(TITLES), default="recovery")
    parser.add_argument("--num-blocks", type=int, default=2, help="blocks of the runs' task, for the Bayes-optimal line")
    parser.add_argument("--target", type=float, default=0.8, help="the value whose steps the line extrapolates")
    parser.add_argument("--name", default="", help="docs file names grid_budget_{name}.* (default: grid_budget.*)")
    parser.add_argument("--after", nargs="+", default=[], metavar="STAGE=FIRST",
                        help="exp-name STAGE continues exp-name FIRST (--init-from, the same agent and seed): its steps follow FIRST's")
    parser.add_argument("--out", default=str(ROOT / "docs"))
    args = parser.parse_args()
    if args.num_blocks < 2:
        parser.error(f"--num-blocks must be at least 2 (a failure to recover from), got {args.num_blocks}")
    if any(pair.count("=") != 1 or not all(pair.split("=")) for pair in args.after):
        parser.error(f"--after takes STAGE=FIRST pairs of exp-names, got {' '.join(args.after)}")
    first_of = dict(pair.split("=") for pair in args.after)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stem = "grid_budget" + (f"_{args.name}" if args.name else "")
    fig, ax = plt.subplots(figsize=(8, 4.5))
    rows = ["| exp-name | agent | seed | steps run | periodic evaluations (steps: value) | final, whole held-out set |",
            "|---|---|---|---|---|---|"]
    fits = ["| exp-name | agent | runs | points | slope per 1M steps | steps where the line reaches the target | "
            "minutes at the runs' SPS |", "|---|---|---|---|---|---|---|"]
    groups = [(exp, agent) for exp in args.exp_names for agent in args.agents]
    finals_from_scratch = {agent: [] for agent in args.agents}  # agent -> [(budget, final test)]
    all_sps = {agent: [] for agent in args.agents}
    for (exp, agent), colour in zip(groups, plt.cm.tab10.colors):
        runs = sorted(glob.glob(str(ROOT / "runs" / f"grid__{exp}__{agent}__*")))
        all_steps, all_values, sps, starts = [], [], [], []
        for run in runs:
            steps, values = metric_points(run, args.metric)
            if not len(steps):  # a run not yet evaluated adds nothing, not even to the count of runs
                continue
            seed = run.split("__")[3]
            sps_steps, sps_values = scalars(run, "charts/SPS")
            budget = int(sps_steps[-1]) if len(sps_steps) else 0
            sps.append(np.median(sps_values))
            planned = planned_steps(run)
            if planned is None:
                sys.exit(f"grid_budget.py: error: {run} logged no hyperparameters, so whether it finished is unknown")
            steps, values, final = split_final(steps, values, planned)
            start = first_run_steps(first_of[exp], agent, seed) if exp in first_of else 0
            steps, budget = steps + start, budget + start
            final = (final[0] + start, final[1]) if final else None
            starts.append(start)
            label = f"{exp} {agent}" if not all_steps else None
            ax.plot(steps, values, "o-", color=colour, alpha=0.6, ms=3, label=label)
            if final:
                ax.plot(*final, "*", color=colour, ms=10)
                if exp not in first_of:
                    finals_from_scratch[agent].append(final)
            rows.append(f"| {exp} | {agent} | {seed} | {budget:,} | "
                        + ", ".join(f"{s / 1e6:.2f}M: {v:.2f}" for s, v in zip(steps, values))
                        + (f" | {final[1]:.3f} |" if final else " | - |"))
            all_steps += list(steps)
            all_values += list(values)
        all_sps[agent] += sps
        if len(all_steps) < 2:
            continue
        all_steps, all_values = np.array(all_steps), np.array(all_values)
        # a line through every point, and one through the later half of the span trained (a second stage's from where
        # it started) only: a curve that flattens reads slower there
        half = min(starts) + (all_steps.max() - min(starts)) / 2
        for points, keep in (("all", all_steps > 0), ("second half", all_steps >= half)):
            slope, intercept, reach = line_to(all_steps[keep], all_values[keep], args.target)
            end = reach if np.isfinite(reach) and reach > all_steps.max() else all_steps.max()
            line = np.linspace(all_steps[keep].min(), min(end, 4 * all_steps.max()), 50)
            ax.plot(line, intercept + slope * line, "--" if points == "all" else ":", color=colour)
            fits.append(f"| {exp} | {agent} | {len(sps)} | {points} | {slope * 1e6:+.3f} | " + steps_cells(reach, sps))
    final_fits = ["| agent | runs | budgets | fit | slope | steps where the final test reaches the target | "
                  "minutes at the runs' SPS |", "|---|---|---|---|---|---|---|"]
    for agent, finals in finals_from_scratch.items():
        budgets, tests = np.array(finals).T if finals else (np.array([]), np.array([]))
        if len(np.unique(budgets)) < 2:
            continue
        for (fit, to_x, from_x, per, unit), style in zip(FINAL_FITS, ("-", "-.")):
            slope, intercept, reach_x = line_to(to_x(budgets), tests, args.target)
            reach = from_x(reach_x)
            line = np.linspace(budgets.min(), min(max(reach, budgets.max()), 4 * budgets.max()), 50)
            ax.plot(line, intercept + slope * to_x(line), style, color="grey", lw=1.5, label=f"{agent}: final tests, {fit}")
            final_fits.append(f"| {agent} | {len(finals)} | {', '.join(f'{b / 1e6:.1f}M' for b in np.unique(budgets))} | "
                              f"{fit} | {slope * unit:+.3f} {per} | " + steps_cells(reach, all_sps[agent]))
    ax.axhline(args.target, color="black", ls=":", lw=1, label=f"target {args.target}")
    ax.axhline(bayes_line(args.metric, args.num_blocks), color="black", ls="--", lw=1,
               label=f"Bayes-optimal ({args.num_blocks} blocks)")
    ax.set(title=TITLES[args.metric] + " (star: final, whole held-out set)", xlabel="env steps",
           ylabel="share of levels", ylim=(0, 1.05))
    ax.ticklabel_format(axis="x", style="sci", scilimits=(0, 0))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(Path(args.out) / f"{stem}.png", dpi=100)
    command = " ".join(["python benchmark/grid_budget.py", f"--metric {args.metric}", f"--num-blocks {args.num_blocks}",
                        f"--exp-names {' '.join(args.exp_names)}", f"--agents {' '.join(args.agents)}",
                        f"--target {args.target}"] + ([f"--after {' '.join(args.after)}"] if args.after else [])
                       + ([f"--name {args.name}"] if args.name else []))
    text = [f"# Gridworld: {TITLES[args.metric]} over training, and the budget a line through it gives", "",
            f"Made by `{command}`. Periodic evaluations on the first `--eval-levels` held-out levels (the runs' flag), "
            "greedy; a finished run's final evaluation, on all `--num-test-levels`, is shown apart and left out of the lines. Each "
            "(exp-name, agent) has a line fitted to all its runs' periodic points and one to the later half of them; "
            "runs of different budgets anneal the learning rate over different spans.", "",
            *rows, "", *fits, ""]
    if len(final_fits) > 2:
        text += ["The final whole-set tests of the runs from scratch (second stages left out), against their budget:", "",
                 *final_fits, ""]
    text += [f"![budget]({stem}.png)", ""]
    write_doc(Path(args.out) / f"{stem}.md", "\n".join(text))
    print("\n".join(text))


if __name__ == "__main__":
    main()

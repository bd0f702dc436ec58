"""Sample-efficiency levers of the gridworld (issue: speed), one change at a time, same seed and budget.

    python benchmark/grid_levers.py --agent snail --total-timesteps 400000
    python benchmark/grid_levers.py --levers paper lr1e-3 --total-timesteps 100000   # a subset

Each lever is a set of flags of grid_failmem.py on top of the paper's settings; every run trains
`--agent` for the same steps with one torch thread (`--parallel` at once), then the script reads
the TensorBoard logs and writes docs/grid_levers_{agent}.{md,png}: training episode success and
trial return against steps and against minutes, and a table of what each reached. Held-out
evaluation is left to the learning benchmark: here the training curve answers "does it learn
sooner", at a fraction of the cost.
"""

import argparse
import glob
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from learning import scalars

ROOT = Path(__file__).resolve().parents[1]
# name -> flags on top of the paper's values (Appendix A: Adam 2.5e-4, batch 12 trials, 4 epochs)
LEVERS = {
    "paper": [],
    "lr1e-3": ["--learning-rate", "1e-3"],
    "mb4": ["--trials-per-minibatch", "4"],
    "lr1e-3+mb4": ["--learning-rate", "1e-3", "--trials-per-minibatch", "4"],
    "lr1e-3+mb4+levels200": ["--learning-rate", "1e-3", "--trials-per-minibatch", "4", "--num-train-levels", "200"],
    "lr1e-3+mb4+gamma0.99": ["--learning-rate", "1e-3", "--trials-per-minibatch", "4", "--gamma", "0.99"],
    "lr1e-3+mb4+epochs2": ["--learning-rate", "1e-3", "--trials-per-minibatch", "4", "--update-epochs", "2"],
    "lr1e-3+mb4+envs24": ["--learning-rate", "1e-3", "--trials-per-minibatch", "4", "--num-envs", "24"],
}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agent", default="snail")
    parser.add_argument("--levers", nargs="+", choices=list(LEVERS), default=list(LEVERS))
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--total-timesteps", type=int, default=400_000)
    parser.add_argument("--parallel", type=int, default=2, help="runs at once, one torch thread each")
    parser.add_argument("--out", default=str(ROOT / "docs"))
    parser.add_argument("--plot-only", action="store_true", help="only read existing runs/ and plot")
    parser.add_argument("extra", nargs=argparse.REMAINDER, help="-- then flags passed to every run")
    args = parser.parse_args()
    args.extra = [x for x in args.extra if x != "--"]
    if not args.plot_only:
        (ROOT / "runs").mkdir(exist_ok=True)
        running, started = [], time.time()
        for lever in args.levers:
            while len(running) >= args.parallel:
                running = [p for p in running if p.poll() is None]
                time.sleep(5)
            command = [sys.executable, str(ROOT / "grid_failmem.py"), "--agent", args.agent, "--seed", str(args.seed),
                       "--exp-name", exp_name(lever), "--threads", "1", "--total-timesteps", str(args.total_timesteps),
                       "--eval-every", "0", "--num-test-levels", "50", *args.extra, *LEVERS[lever]]  # a lever's flags win
            print(" ".join(command[2:]))
            log = open(ROOT / "runs" / f"{exp_name(lever)}_{args.agent}_{args.seed}.log", "w")
            running.append(subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT))
        for p in running:
            p.wait()
        print(f"all runs done in {(time.time() - started) / 60:.1f} min")
    plot(args)


def exp_name(lever):
    return "levers_" + lever.replace("+", "_")


def plot(args):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    table = ["| lever | flags | steps | minutes | SPS | episode success, first 10 updates | last 10 updates | trial return, last 10 |",
             "|---|---|---|---|---|---|---|---|"]
    for lever in args.levers:
        runs = sorted(glob.glob(str(ROOT / "runs" / f"grid__{exp_name(lever)}__{args.agent}__{args.seed}__*")))
        if not runs:
            print(f"no run for {lever}")
            continue
        steps, success = scalars(runs[-1], "charts/episode_success")
        _, returns = scalars(runs[-1], "charts/trial_return")
        _, sps = scalars(runs[-1], "charts/SPS")
        if len(success) < 10:
            continue
        minutes = steps / sps / 60  # SPS is the run's average so far, so steps / SPS is its wall time
        smooth = np.convolve(success, np.ones(10) / 10, mode="valid")
        line, = axes[0].plot(steps[9:], smooth, label=lever)
        axes[1].plot(minutes[9:], smooth, color=line.get_color(), label=lever)
        axes[2].plot(steps[9:], np.convolve(returns, np.ones(10) / 10, mode="valid"), color=line.get_color(), label=lever)
        table.append(f"| {lever} | `{' '.join(LEVERS[lever]) or '(the paper)'}` | {int(steps[-1]):,} | {minutes[-1]:.0f} | "
                     f"{sps[-1]:.0f} | {success[:10].mean():.3f} | {success[-10:].mean():.3f} | {returns[-10:].mean():.2f} |")
    axes[0].set(title="training episode success vs. steps", xlabel="env steps", ylabel="success (mean of 10 updates)")
    axes[1].set(title="... vs. minutes (1 thread each, 2 runs at once)", xlabel="minutes")
    axes[2].set(title="trial return vs. steps", xlabel="env steps")
    for ax in axes:
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle(f"Gridworld levers, agent {args.agent}, seed {args.seed}")
    fig.tight_layout()
    name = f"grid_levers_{args.agent}"
    fig.savefig(Path(args.out) / f"{name}.png", dpi=100)
    command = (f"python benchmark/grid_levers.py --agent {args.agent} --seed {args.seed} --total-timesteps "
               f"{args.total_timesteps} --levers {' '.join(args.levers)}" + (" -- " + " ".join(args.extra) if args.extra else ""))
    text = [f"# Gridworld: sample-efficiency levers ({args.agent})", "", f"Made by `{command}`.", "",
            "One change at a time on top of the paper's PPO settings, same seed and step budget, one torch thread "
            "per run and two runs at once on 2 cores. Episode success: the fraction of training episodes that "
            "reached the goal (a random policy: about 0.13).", "", *table, "", f"![levers]({name}.png)", ""]
    (Path(args.out) / f"{name}.md").write_text("\n".join(text))
    print("\n".join(text))


if __name__ == "__main__":
    main()

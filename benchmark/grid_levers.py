"""Sample-efficiency levers of the gridworld (issue: speed), one change at a time, same seed and budget.

    python benchmark/grid_levers.py                       # the navigation probe below, 300k steps each
    python benchmark/grid_levers.py --levers paper lr1e-3+mb4 --total-timesteps 100000
    python benchmark/grid_levers.py --blocks 3 --threshold 0.25 --levers defaults lr1e-3+mb4+gamma0.99 --total-timesteps 1500000

The probe: one block, which is always the goal, on the paper's 16 x 16 grid, and the memoryless
agent (ppo-finetune's training): "can PPO learn to walk to what it sees" is the first thing the
memory agent must learn, and it costs a fifth of a memory run to measure. Each lever is the
full set of PPO flags it changes from the paper's (Appendix A: Adam 2.5e-4, batch 12 trials,
gamma 0.999); every run trains for the same steps with one torch thread (`--parallel` at once),
then the script reads the TensorBoard logs and writes docs/grid_levers.{md,png}: training
episode success against steps and against minutes, and a table of what each reached.
With `--blocks 3` the same memoryless agent meets the paper's three blocks (docs/grid_levers_x3.*):
it cannot remember which block failed, so its ceiling is walking straight to some block, a
success of 1/3 per episode; how many steps that takes is the least the memory agent needs.
"""

import argparse
import glob
import sys
from pathlib import Path

import numpy as np

from learning import launch, scalars, smooth

ROOT = Path(__file__).resolve().parents[1]
PAPER = {"--learning-rate": "2.5e-4", "--trials-per-minibatch": "12", "--gamma": "0.999", "--norm-adv": "minibatch"}
LEVERS = {  # name -> what it changes from the paper's PPO
    "paper": {},
    "lr1e-3+mb4": {"--learning-rate": "1e-3", "--trials-per-minibatch": "4"},
    "lr1e-3+mb4+gamma0.99": {"--learning-rate": "1e-3", "--trials-per-minibatch": "4", "--gamma": "0.99"},
    "lr1e-3+mb4+norm-batch": {"--learning-rate": "1e-3", "--trials-per-minibatch": "4", "--norm-adv": "batch"},
    "defaults": {"--learning-rate": "5e-4", "--trials-per-minibatch": "4", "--gamma": "0.99"},  # grid_failmem.py's
}
PROBE = ["--agent", "ppo-finetune", "--num-train-levels", "1000"]


def flags(lever):
    return [x for key, value in {**PAPER, **LEVERS[lever]}.items() for x in (key, value)]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--levers", nargs="+", choices=list(LEVERS), default=[lever for lever in LEVERS if lever != "defaults"])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--blocks", type=int, default=1, help="X: blocks per level (1: the probe, always the goal; 3: the paper's task)")
    parser.add_argument("--threshold", type=float, default=0.5, help="the table's 'steps to' this training episode success")
    parser.add_argument("--total-timesteps", type=int, default=300_000)
    parser.add_argument("--parallel", type=int, default=2, help="runs at once, one torch thread each")
    parser.add_argument("--out", default=str(ROOT / "docs"))
    parser.add_argument("--plot-only", action="store_true", help="only read existing runs/ and plot")
    parser.add_argument("extra", nargs=argparse.REMAINDER, help="-- then flags passed to every run")
    args = parser.parse_args()
    args.extra = [x for x in args.extra if x != "--"]
    if not args.plot_only:  # a lever's flags come last, so they win over the extra ones
        launch([([sys.executable, str(ROOT / "grid_failmem.py"), *PROBE, "--num-blocks", str(args.blocks),
                  "--seed", str(args.seed), "--exp-name", exp_name(lever, args.blocks), "--threads", "1",
                  "--total-timesteps", str(args.total_timesteps), "--eval-every", "0", "--num-test-levels", "5",
                  *args.extra, *flags(lever)], f"{exp_name(lever, args.blocks)}_{args.seed}.log")
                for lever in args.levers], args.parallel)
    plot(args)


def exp_name(lever, blocks):
    return "levers_" + ("" if blocks == 1 else f"x{blocks}_") + lever.replace("+", "_")


def docs_name(blocks):
    return "grid_levers" + ("" if blocks == 1 else f"_x{blocks}")


def plot(args):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    table = [f"| lever | changes from the paper | steps | minutes | SPS | steps to {args.threshold} success | success, last 10 updates | episodes per trial, last 10 |",
             "|---|---|---|---|---|---|---|---|"]
    for lever in args.levers:
        runs = sorted(glob.glob(str(ROOT / "runs" / f"grid__{exp_name(lever, args.blocks)}__ppo-finetune__{args.seed}__*")))
        if not runs:
            print(f"no run for {lever}")
            continue
        steps, success = scalars(runs[-1], "charts/episode_success")
        _, episodes = scalars(runs[-1], "charts/episodes_per_trial")
        _, sps = scalars(runs[-1], "charts/SPS")
        if len(success) < 10:
            continue
        minutes = steps / sps / 60  # SPS is the run's average so far, so steps / SPS is its wall time
        smoothed = smooth(success)
        line, = axes[0].plot(steps[9:], smoothed, label=lever)
        axes[1].plot(minutes[9:], smoothed, color=line.get_color(), label=lever)
        axes[2].plot(steps[9:], smooth(episodes), color=line.get_color(), label=lever)
        reached = np.flatnonzero(smoothed >= args.threshold)
        changes = " ".join(f"{key} {value}" for key, value in LEVERS[lever].items()) or "(none)"
        table.append(f"| {lever} | `{changes}` | {int(steps[-1]):,} | {minutes[-1]:.0f} | {sps[-1]:.0f} | "
                     f"{f'{int(steps[9 + reached[0]]):,}' if len(reached) else 'not reached'} | "
                     f"{success[-10:].mean():.3f} | {episodes[-10:].mean():.2f} |")
    axes[0].set(title="training episode success vs. steps", xlabel="env steps", ylabel="success (mean of 10 updates)")
    axes[1].set(title="... vs. minutes (1 thread each, 2 runs at once)", xlabel="minutes")
    axes[2].set(title="episodes per 80-step trial (shorter paths: more)", xlabel="env steps")
    for ax in axes:
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    what = "navigation probe (16 x 16, one block)" if args.blocks == 1 else f"16 x 16, {args.blocks} blocks"
    fig.suptitle(f"Gridworld {what}, memoryless PPO, seed {args.seed}")
    fig.tight_layout()
    name = docs_name(args.blocks)
    fig.savefig(Path(args.out) / f"{name}.png", dpi=100)
    command = (f"python benchmark/grid_levers.py --seed {args.seed} --blocks {args.blocks} --threshold {args.threshold} --total-timesteps "
               f"{args.total_timesteps} --levers {' '.join(args.levers)}" + (" -- " + " ".join(args.extra) if args.extra else ""))
    probe = ("The navigation probe: the paper's 16 x 16 grid with one block, always the goal, and the memoryless agent"
             if args.blocks == 1 else f"The paper's 16 x 16 grid with {args.blocks} blocks, one the goal, and the memoryless "
             f"agent, whose best is walking straight to some block: a success of 1/{args.blocks} per episode")
    text = ["# Gridworld: sample-efficiency levers", "", f"Made by `{command}`.", "",
            probe + "; changes to the paper's PPO settings, same seed and step budget, one torch thread per run and "
            "two runs at once on 2 cores (SPS and minutes depend on what ran beside: compare steps). Episode success: the fraction of training episodes that reached the "
            f"goal (a random walk: about 0.15 with one block, 0.13 with three); steps to {args.threshold}: first time the mean "
            f"of 10 updates reaches it.", "",
            *table, "", f"![levers]({name}.png)", ""]
    (Path(args.out) / f"{name}.md").write_text("\n".join(text))
    print("\n".join(text))


if __name__ == "__main__":
    main()

"""The gridworld's learning ladder: PPO and network levers, each on 3 seeds at equal budgets.

    python benchmark/grid_ladder.py --rung L1 --levers defaults no-vclip --seeds 1 2 3
    python benchmark/grid_ladder.py --rung L2 --levers defaults --total-timesteps 1000000
    python benchmark/grid_ladder.py --rung L1 --plot-only --levers defaults no-vclip

Rungs, each a question the memory agent's task depends on (issue: the gridworld learns on a CPU):
  L1  one block, always the goal, memoryless agent: can PPO learn to walk to what it sees?
      Goal: 0.9 training episode success within 120k steps.
  L2  the paper's three blocks, memoryless: walking straight to some block, 1/3 success per
      episode on held-out levels (its ceiling without memory). Goal: 0.30 within 1M steps.
  L3  three blocks, memory vs. SNAIL (--levers memory snail): held-out mean success 0.6.
A lever is a set of flags added to BASE, grid_failmem.py's defaults before 2026-11-26 (the doc
names the flags). Every run has one torch thread,
`--parallel` at once; then the TensorBoard logs are read and docs/grid_ladder_{rung}[_{name}].{md,png}
are written: curves (mean over seeds, band from the lowest to the highest seed) against steps
and minutes, and a table of each lever's steps to the rung's goal per seed. Rungs judged on held-out
levels also show the random policy's held-out success on the same grid (benchmark/grid_random.py).
"""

import argparse
import glob
import sys
from pathlib import Path

import numpy as np

from grid_random import random_policy
from learning import launch, machine, mean_and_spread, scalars, smooth, write_doc

ROOT = Path(__file__).resolve().parents[1]
# Every run starts from grid_failmem.py's defaults as they were before the two-block defaults of 2026-11-26 (the
# paper's 16 x 16 task, 1,000 training levels, lr 5e-4, bank and SNAIL per trial) and the critic's t / T input of
# 2026-11-28 and the standardised value targets of 2026-11-29: the docs here were made on them
BASE = ["--grid-size", "16", "--num-blocks", "3", "--num-train-levels", "1000", "--learning-rate", "5e-4",
        "--mem-update", "trial", "--train-history", "trial", "--no-time-aware-value", "--no-value-norm"]
# rung -> (flags of every run, the metric, its goal, the budget of the goal in steps)
RUNGS = {
    "L1": (BASE + ["--agent", "ppo-finetune", "--num-blocks", "1", "--eval-every", "0", "--num-test-levels", "5"],
           "train", 0.9, 120_000),
    "L2": (BASE + ["--agent", "ppo-finetune", "--num-blocks", "3", "--eval-levels", "100", "--num-test-levels", "100"],
           "heldout", 0.30, 1_000_000),
    "L3": (BASE + ["--num-blocks", "3", "--eval-levels", "100"], "heldout", 0.6, None),
}
PAPER_NET = ["--cnn-channels", "16", "32", "32", "--cnn-blocks", "2", "--cnn-out", "256", "--snail-blocks", "2",
             "--snail-filters", "32"]
LEVERS = {  # name -> flags added to BASE and the rung's flags
    "defaults": [],
    "paper-net": PAPER_NET,
    "cnn-b0": ["--cnn-blocks", "0"],
    "cnn-b1": ["--cnn-blocks", "1"],
    "cnn-8-16-16": ["--cnn-channels", "8", "16", "16"],
    "cnn-2stage": ["--cnn-channels", "16", "32"],
    "no-vclip": ["--no-clip-vloss"],
    "episodic-gae": ["--episodic-gae"],
    "time-value": ["--time-aware-value"],
    "value-norm": ["--value-norm"],
    "lr1e-3": ["--learning-rate", "1e-3"],
    "lr2e-3": ["--learning-rate", "2e-3"],
    "grad-norm5": ["--max-grad-norm", "5"],
    "vf0.1": ["--vf-coef", "0.1"],
    "gamma0.95": ["--gamma", "0.95"],
    "const-lr": ["--no-anneal-lr"],
    "envs16": ["--num-envs", "16"],
    "envs24": ["--num-envs", "24"],
    "envs240": ["--num-envs", "240", "--trials-per-minibatch", "20", "--eval-every", "10"],
    "envs480": ["--num-envs", "480", "--trials-per-minibatch", "40", "--eval-every", "5"],
    "epochs2": ["--update-epochs", "2"],
    "epochs8": ["--update-epochs", "8"],
    "epochs16": ["--update-epochs", "16"],
    "mb8": ["--trials-per-minibatch", "8"],
    "mb2": ["--trials-per-minibatch", "2"],
    "norm-batch": ["--norm-adv", "batch"],
    "norm-off": ["--norm-adv", "off"],
    "ent0.01": ["--ent-coef", "0.01"],
    "ent0": ["--ent-coef", "0"],
    "levels200": ["--num-train-levels", "200"],
    "levels5000": ["--num-train-levels", "5000"],
    "levels40000": ["--num-train-levels", "40000"],
    "memory": ["--agent", "memory"],
    "mem-episode": ["--mem-update", "episode"],
    "lr2.5e-4": ["--learning-rate", "2.5e-4"],
    "target-kl0.02": ["--target-kl", "0.02"],
    "trial-history": ["--test-history", "trial"],
    "ep-history": ["--train-history", "episode"],
    "snail": ["--agent", "snail"],
    "ppo-finetune": ["--agent", "ppo-finetune"],
    "ppo-finetune-attn": ["--agent", "ppo-finetune-attn"],
    "obs8": ["--obs-size", "8"],
}


# naming the agent keeps a comparison's levers readable (`--levers memory snail`) even where one is the default
AGENT_LEVERS = {name for name, flags in LEVERS.items() if flags[:1] == ["--agent"]}


def lever_flags(lever):
    """The flags of a lever, or of several joined by +, in order (a later one wins)."""
    return [flag for part in lever.split("+") for flag in LEVERS[part]]


def idle_parts(rung_flags, lever):
    """The parts of a lever that set only what its runs already have (the rung's flags, the other
    parts, grid_failmem.py's defaults): their runs would repeat the lever without them."""
    parts = lever.split("+")
    whole = run_args(rung_flags + lever_flags(lever))
    return [part for i, part in enumerate(parts) if LEVERS[part] and part not in AGENT_LEVERS
            and run_args(rung_flags + lever_flags("+".join(parts[:i] + parts[i + 1:]) or "defaults")) == whole]


def exp_name(rung, lever, name=None):
    """Runs of a doc `name` are kept apart from the same lever's runs for other docs (other budgets or flags)."""
    return f"ladder_{rung}_{name + '_' if name else ''}{lever.replace('+', '_')}"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rung", choices=sorted(RUNGS), default="L1")
    parser.add_argument("--levers", nargs="+", default=["defaults"],
                        help=f"levers, or several joined by + (e.g. lr1e-3+envs16): {', '.join(LEVERS)}")
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--total-timesteps", type=int, default=200_000)
    parser.add_argument("--parallel", type=int, default=2, help="runs at once, one torch thread each")
    parser.add_argument("--name", help="suffix of the docs files (default: none), to keep several lever sets of a rung")
    parser.add_argument("--out", default=str(ROOT / "docs"))
    parser.add_argument("--plot-only", action="store_true", help="only read existing runs/ and plot")
    parser.add_argument("--stopped", action="store_true",
                        help="also plot runs stopped before --total-timesteps (the table's 'steps run' says how far)")
    parser.add_argument("extra", nargs=argparse.REMAINDER, help="-- then flags passed to every run (before the lever's)")
    args = parser.parse_args()
    args.extra = [x for x in args.extra if x != "--"]
    unknown = [part for lever in args.levers for part in lever.split("+") if part not in LEVERS]
    if unknown:
        parser.error(f"unknown lever {unknown[0]!r}; levers: {', '.join(LEVERS)}")
    rung_flags = RUNGS[args.rung][0]
    if not args.plot_only:  # old docs' levers may have become defaults since: they still redraw
        idle = [(lever, part) for lever in args.levers for part in idle_parts(rung_flags + args.extra, lever)]
        if idle:
            parser.error(f"lever {idle[0][0]!r}: {idle[0][1]!r} ({' '.join(LEVERS[idle[0][1]])}) changes nothing in "
                         f"rung {args.rung}'s runs (set already, or overridden by a later part); leave it out")
        launch([([sys.executable, str(ROOT / "grid_failmem.py"), *rung_flags, "--seed", str(seed), "--exp-name",
                  exp_name(args.rung, lever, args.name), "--threads", "1", "--total-timesteps", str(args.total_timesteps),
                  *args.extra, *lever_flags(lever)], f"grid_{exp_name(args.rung, lever, args.name)}_{seed}.log")
                for seed in args.seeds for lever in args.levers], args.parallel)
    plot(args)


def runs_of(args, lever):
    """The latest finished run of each seed of a lever with this budget (the same lever may have
    been run for other budgets: the last logged step tells them apart)."""
    found, run = [], run_args(RUNGS[args.rung][0] + args.extra + lever_flags(lever))
    short_by = args.total_timesteps if args.stopped else run.num_envs * run.trial_len  # at most one update short, or any
    for seed in args.seeds:
        runs = sorted(glob.glob(str(ROOT / "runs" / f"grid__{exp_name(args.rung, lever, args.name)}__*__{seed}__*")))
        # runs from before the doc name was part of the run's name
        runs = runs or sorted(glob.glob(str(ROOT / "runs" / f"grid__{exp_name(args.rung, lever)}__*__{seed}__*")))
        runs = [r for r in runs if 0 <= args.total_timesteps - last_step(r) < short_by]
        if runs:
            found.append(runs[-1])
    return found


def last_step(run):
    steps, _ = scalars(run, "charts/episode_success")
    return steps[-1] if len(steps) else -1


def episode_rise(per_episode):
    """Memory's signature on held-out levels: success of test episodes 2..5 minus episode 1, averaged
    over a run's evaluations (rows of `per_episode`, one column per test episode): one evaluation
    of 100 levels is too noisy to show it."""
    per_episode = np.asarray(per_episode, float)
    return float((per_episode[:, 1:].mean(1) - per_episode[:, 0]).mean())


def all_per_episode(run):
    """Held-out success of test episodes 1..5 at each of a run's evaluations, (evaluations, 5)."""
    values = [scalars(run, f"eval/success_ep{k}")[1] for k in range(1, 6)]
    return np.stack(values, 1) if all(len(v) for v in values) else np.zeros((0, 5))


def run_args(flags):
    """grid_failmem.py's Args of runs given these flags, read as it reads them."""
    import tyro

    import grid_failmem

    return tyro.cli(grid_failmem.Args, args=flags)


def grid_flags(flags):
    """W and X of runs given these flags."""
    args = run_args(flags)
    return args.grid_size, args.num_blocks


def first_reach(steps, values, goal):
    reached = np.flatnonzero(values >= goal)
    return int(steps[reached[0]]) if len(reached) else None


def plot(args):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _, metric, goal, budget = RUNGS[args.rung]
    heldout = metric == "heldout"
    if heldout:  # the floor a learned agent must beat, on the runs' grid
        grid_size, num_blocks = grid_flags(RUNGS[args.rung][0] + args.extra)
        floor = random_policy(grid_size, num_blocks)[0]
    fig, axes = plt.subplots(1, 3 if heldout else 2, figsize=(16 if heldout else 11, 4))
    what = "held-out mean success" if heldout else "training episode success (mean of 10 updates)"
    table = [f"| lever | flags | seeds | steps run | SPS | steps to {goal} {what}, per seed | steps to {goal / 2:g}, per seed | "
             "training success, last 10 updates | held-out mean success, last evaluation | held-out success of test "
             "episodes 1..5, last evaluation (mean over seeds) |"
             + (" held-out success of episodes 2..5 minus episode 1, mean over the evaluations after the first, per seed |"
                if heldout else ""), "|---|---|---|---|---|---|---|---|---|---|" + ("---|" if heldout else "")]
    for lever in args.levers:
        runs = runs_of(args, lever)
        train = [(s[9:], smooth(v)) for s, v in (scalars(r, "charts/episode_success") for r in runs) if len(v) >= 10]
        if not train:
            print(f"no finished run for {lever}")
            continue
        steps, mean, low, high = mean_and_spread(train)
        line, = axes[0].plot(steps, mean, label=lever)
        axes[0].fill_between(steps, low, high, color=line.get_color(), alpha=0.15)
        minutes = [scalars(r, "charts/episode_success", minutes=True)[0][9:] for r in runs]
        clock = [(m[: len(v)], v) for m, (_, v) in zip(minutes, train)]
        length = min(len(m) for m, _ in clock)
        axes[1].plot(np.mean([m[:length] for m, _ in clock], 0), mean[:length], color=line.get_color(), label=lever)
        evals = [scalars(r, "eval/mean_success") for r in runs]
        if heldout and all(len(v) for _, v in evals):
            e_steps, e_mean, e_low, e_high = mean_and_spread(evals)
            axes[2].plot(e_steps, e_mean, "o-", color=line.get_color(), label=lever)
            axes[2].fill_between(e_steps, e_low, e_high, color=line.get_color(), alpha=0.15)
        curves = evals if heldout else train
        reach = [first_reach(s, v, goal) for s, v in curves]
        half = [first_reach(s, v, goal / 2) for s, v in curves]
        sps = np.mean([scalars(r, "charts/SPS")[1][-1] for r in runs])
        last_eval = [v[-1] for _, v in evals if len(v)]
        per_episode = [all_per_episode(r) for r in runs]
        table.append(
            f"| {lever} | `{' '.join(lever_flags(lever)) or '(none)'}` | {len(runs)} | {int(min(s[-1] for s, _ in train)):,} | "
            f"{sps:,.0f} | {', '.join('-' if x is None else f'{x:,}' for x in reach)} | "
            f"{', '.join('-' if x is None else f'{x:,}' for x in half)} | "
            f"{np.mean([scalars(r, 'charts/episode_success')[1][-10:].mean() for r in runs]):.3f} | "
            + (f"{np.mean(last_eval):.3f} ± {np.std(last_eval):.3f}" if last_eval else "-") + " | "
            + " / ".join(f"{np.mean(episode):.2f}" for episode in zip(*(e[-1] for e in per_episode if len(e)))) + " |"
            + (" " + ", ".join(f"{episode_rise(e[1:]):+.3f}" if len(e) > 1 else "-" for e in per_episode) + " |"
               if heldout else ""))
    if heldout:
        table.append(f"| random policy | `--grid-size {grid_size} --num-blocks {num_blocks}` | | | | | | | "
                     f"{np.mean(floor):.3f} | " + " / ".join(f"{p:.2f}" for p in floor) + " | |")
    axes[0].set(title="training episode success vs. steps", xlabel="env steps", ylabel="success (mean of 10 updates)")
    axes[1].set(title="... vs. minutes (mean over seeds)", xlabel="minutes")
    if heldout:
        axes[2].set(title="held-out mean success (5 episodes)", xlabel="env steps")
        axes[2].axhline(goal, color="grey", ls="--", lw=1)
        axes[2].axhline(np.mean(floor), color="black", ls=":", lw=1, label="random policy")
    else:
        axes[0].axhline(goal, color="grey", ls="--", lw=1)
    if budget:
        axes[0 if not heldout else 2].axvline(budget, color="grey", ls=":", lw=1)
    for ax in axes[[0, 2] if heldout else [0]]:
        ax.xaxis.set_major_formatter(plt.FuncFormatter(lambda x, _: f"{x / 1e3:g}k"))
    for ax in axes:
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle(f"Gridworld ladder {args.rung}, seeds {' '.join(map(str, args.seeds))}")
    fig.tight_layout()
    name = f"grid_ladder_{args.rung}" + (f"_{args.name}" if args.name else "")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    fig.savefig(Path(args.out) / f"{name}.png", dpi=100)
    command = (f"python benchmark/grid_ladder.py --rung {args.rung} --seeds {' '.join(map(str, args.seeds))} "
               f"--total-timesteps {args.total_timesteps} --levers {' '.join(args.levers)}"
               + (f" --name {args.name}" if args.name else "") + (" --stopped" if args.stopped else "")
               + (" -- " + " ".join(args.extra) if args.extra else ""))
    text = [f"# Gridworld ladder {args.rung}", "", f"Made by `{command}` on {machine()}.", "",
            ("Rungs, each" + __doc__.split("Rungs, each")[1].split("A lever is")[0]).rstrip().split("\n"),
            "", f"Every run: `{' '.join(RUNGS[args.rung][0])}` and the lever's flags on grid_failmem.py's defaults; one "
            f"torch thread, {args.parallel} runs at once on the cores (SPS depends on what ran beside: compare steps). "
            f"Goal of this rung: {what} >= {goal}" + (f" within {budget:,} steps." if budget else "."), "",
            *table, "", f"![{name}]({name}.png)", ""]
    text = [line for item in text for line in (item if isinstance(item, list) else [item])]
    write_doc(Path(args.out) / f"{name}.md", "\n".join(text))
    print("\n".join(text))


if __name__ == "__main__":
    main()

"""Training SPS of grid_failmem.py now against grid_failmem.py (and common.py) at a git revision, on any flags:
the two alternate, round after round, so that both see the same machine, and the ratio is taken per round.

    python benchmark/grid_speedup.py --before REV --name NAME [--rounds 3] [--updates 3] [--pass-trials 4 40]
        [--threads 1] [--threads-now K] [-- FLAGS...]

FLAGS go to both scripts (the task, the batch, `--init-from` a checkpoint). Training SPS is wall time, which a
machine running other work makes noisy; `--pass-trials` also times one minibatch of that many trials (random walks
on the task of `--grid-size` and `--num-blocks` in FLAGS, every bank slot filled) forward + backward in CPU time,
which other work inflates much less. `--threads-now` gives today's runs another number of torch threads than
`--threads` gives the revision's: with `--before HEAD` it measures what a second thread buys one run (on 2 cores:
whether one run on both beats two runs of one thread each). Writes docs/grid_speedup_NAME.md.
For the default task's network-by-network breakdown, see grid_throughput.py.
"""

import argparse
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from grid_throughput import checkout, train  # noqa: E402
from learning import write_doc  # noqa: E402
from timing import cpu_name  # noqa: E402


PASS = """
import sys
sys.path[:0] = [sys.argv[1], sys.argv[2]]
import grid_failmem as gf  # the revision's, before grid_throughput puts today's on the path
import torch
import tyro
from grid_throughput import random_walk_trials
from timing import cpu_ms

torch.set_num_threads(int(sys.argv[4]))
torch.manual_seed(0)
args = tyro.cli(gf.Args, args=sys.argv[6:])
agent = gf.Agent(args, 4)
trials = int(sys.argv[3])
frames, bank = random_walk_trials(gf.task_levels(args, "train", 100), trials, args.grid_size, args.obs_size)
zeros, actions = torch.zeros(trials, 80), torch.zeros(trials, 80, dtype=torch.long)


def minibatch():
    agent.get_action_and_value(frames, actions, zeros, zeros, [bank], actions)[1].sum().backward()
    agent.zero_grad()


print(cpu_ms(minibatch, seconds=float(sys.argv[5])))
"""


def pass_ms(script_dir, trials, threads, flags, seconds=5.0):
    """CPU ms of one minibatch of `trials` trials, forward + backward, with grid_failmem.py from `script_dir`."""
    task = [part for i, flag in enumerate(flags[:-1]) if flag in ("--grid-size", "--num-blocks", "--obs-size")
            for part in (flag, flags[i + 1])]  # the task's flags only: a lone switch before them shifts no pair
    command = [sys.executable, "-c", PASS, str(script_dir), str(ROOT / "benchmark"), str(trials), str(threads), str(seconds),
               *task]
    return float(subprocess.run(command, capture_output=True, text=True, check=True).stdout.split()[-1])


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    flags = argv[argv.index("--") + 1 :] if "--" in argv else []
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", required=True, help="the git revision to compare against")
    parser.add_argument("--name", required=True, help="the doc's name: docs/grid_speedup_NAME.md")
    parser.add_argument("--rounds", type=int, default=3, help="before/now pairs, alternating")
    parser.add_argument("--updates", type=int, default=3, help="training updates a run (its SPS is their mean)")
    parser.add_argument("--num-envs", type=int, default=48)
    parser.add_argument("--obs-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--threads-now", type=int, help="torch threads of today's runs (not given: --threads)")
    parser.add_argument("--pass-trials", type=int, nargs="*", default=[], help="also time one minibatch of this many "
                        "trials, forward + backward, in CPU ms")
    args = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    args.threads_now = args.threads if args.threads_now is None else args.threads_now
    for flag in ("--rounds", "--updates", "--num-envs", "--threads", "--threads-now"):
        if getattr(args, flag[2:].replace("-", "_")) < 1:
            parser.error(f"{flag} must be positive")
    if any(trials < 1 for trials in args.pass_trials):
        parser.error(f"--pass-trials must be positive, got {args.pass_trials}")
    if "--init-from" in flags[:-1]:  # the runs start in a directory of their own
        path = flags.index("--init-from") + 1
        flags[path] = str(Path(flags[path]).resolve())
    try:
        before = checkout(args.before)
    except subprocess.CalledProcessError:
        parser.error(f"--before: git has no grid_failmem.py and common.py at {args.before!r}")
    run = SimpleNamespace(obs_size=args.obs_size, num_envs=args.num_envs, threads=args.threads, updates=args.updates)
    run_now = SimpleNamespace(**{**vars(run), "threads": args.threads_now})
    rounds, passes = [], {trials: [] for trials in args.pass_trials}
    for index in range(args.rounds):
        then, now = train(run, flags, before), train(run_now, flags)
        rounds.append((then, now))
        print(f"round {index + 1}: at {args.before} {then[0]:,} SPS, now {now[0]:,} SPS, {now[0] / then[0]:.2f}x",
              flush=True)
        for trials, measured in passes.items():
            measured.append((pass_ms(before, trials, args.threads, flags), pass_ms(ROOT, trials, args.threads_now, flags)))
            print(f"round {index + 1}: a minibatch of {trials} trials, CPU ms at {args.before} {measured[-1][0]:.1f}, "
                  f"now {measured[-1][1]:.1f}", flush=True)
    ratios = [now[0] / then[0] for then, now in rounds]
    mean = lambda i, j: np.mean([r[i][j] for r in rounds])  # noqa: E731
    threads_now = f" --threads-now {args.threads_now}" if args.threads_now != args.threads else ""
    text = [f"# Gridworld training SPS, now against {args.before}: {args.name}", "",
            f"Made by `python benchmark/grid_speedup.py --before {args.before} --name {args.name} --rounds {args.rounds} "
            f"--updates {args.updates} --num-envs {args.num_envs} --obs-size {args.obs_size} --threads {args.threads}"
            + threads_now + (f" -- {' '.join(flags)}" if flags else "") + f"` on {cpu_name()}, torch {torch.__version__}. "
            f"Each run is grid_failmem.py for {args.updates} updates of {80 * args.num_envs:,} steps from a fresh "
            "process; its SPS is the mean over them, as the script prints it."
            + (f" The runs at {args.before} have {args.threads} torch thread(s), today's {args.threads_now}; CPU time "
               "sums over threads." if threads_now else ""), "",
            "| round | SPS at " + args.before + " | SPS now | now / before |", "|---|---|---|---|",
            *[f"| {i + 1} | {then[0]:,} | {now[0]:,} | {now[0] / then[0]:.2f}x |" for i, (then, now) in enumerate(rounds)],
            "",
            f"Median ratio **{np.median(ratios):.2f}x** (range {min(ratios):.2f}-{max(ratios):.2f}). Per update, mean "
            f"over rounds: at {args.before} rollout {mean(0, 1):.2f} s, PPO update {mean(0, 2):.2f} s; now rollout "
            f"{mean(1, 1):.2f} s, PPO update {mean(1, 2):.2f} s.", ""]
    if passes:
        text += ["One minibatch forward + backward (random walks, every bank slot filled), CPU ms, each round:", "",
                 f"| trials | at {args.before} | now | before / now, median |", "|---|---|---|---|",
                 *[f"| {trials} | {' / '.join(f'{a:.1f}' for a, _ in m)} | {' / '.join(f'{b:.1f}' for _, b in m)} | "
                   f"{np.median([a / b for a, b in m]):.2f}x |" for trials, m in passes.items()], ""]
    write_doc(ROOT / "docs" / f"grid_speedup_{args.name}.md", "\n".join(text))
    print("\n".join(text))


if __name__ == "__main__":
    main()

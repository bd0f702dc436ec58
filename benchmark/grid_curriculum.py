"""Three blocks through two: the curriculum behind rung L3 (README, "The W8 curriculum in one command"), one command.

    python benchmark/grid_curriculum.py --agents memory snail --seeds 1 2 3 --tag l3
    python benchmark/grid_curriculum.py --agents memory --seeds 1 2 3 --tag l3 --first-stage x3b

Every (agent, seed) trains grid_failmem.py's default task (W 8, two blocks, 1.5M steps), then three
blocks starting from those weights, then three blocks again starting from the first three-block agent
(`--init-from`: the weights only; the optimiser, the lr schedule and the bank start afresh). The
three-block stages stop an update's epochs once the KL passes 0.01 and drop the entropy bonus (with
the defaults the two-block skill was lost within 200k steps), and run 480 envs in 40-trial
minibatches, 10x the default batch for the same gradient steps an update (at 48 envs two seeds of
three drifted to hitting no block after a trap); README, "The W8 curriculum in one command". A
stage's runs go `--parallel` at once, one torch thread each; the next stage starts when all of them
have ended. Runs are named grid__{tag}_{stage}__{agent}__{seed}__*; `--first-stage` starts later,
from the latest finished runs of the stage before. Then each stage's curves and table are drawn by
learning.py into docs/grid_{tag}_{stage}.md and .png.
"""

import argparse
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import grid_failmem as grid  # noqa: E402
from learning import latest_run, launch  # noqa: E402

THREE_BLOCKS = ["--num-blocks", "3", "--target-kl", "0.01", "--ent-coef", "0",
                "--num-envs", "480", "--trials-per-minibatch", "40", "--eval-every", "5"]  # 39 updates a stage
STAGES = {"x2": [], "x3a": THREE_BLOCKS, "x3b": THREE_BLOCKS}  # each starts from the one before
STEPS = grid.Args().total_timesteps  # every stage runs the default


def exp_name(tag, stage):
    return f"{tag}_{stage}"


def stage_before(stage):
    """The stage whose agents `stage` starts from; None for the first."""
    index = list(STAGES).index(stage)
    return list(STAGES)[index - 1] if index else None


def finished_run(tag, stage, agent, seed):
    """The checkpoint of the latest run of (stage, agent, seed) if that run ended, else None: a run writes
    agent.pt as it goes, and one that ended has done all its updates."""
    run = latest_run("grid", exp_name(tag, stage), agent, seed)
    path = f"{run}/agent.pt" if run else None
    if path is None or not Path(path).exists():
        return None
    checkpoint = torch.load(path, map_location="cpu", mmap=True, weights_only=True)  # mmap: the banks stay on disk
    return path if checkpoint["iteration"] >= checkpoint["args"]["num_iterations"] else None


def starting_points(args, stage):
    """{(agent, seed): the finished checkpoint of the stage before, or None where it has none}; {} for the first stage."""
    before = stage_before(stage)
    return {(agent, seed): finished_run(args.tag, before, agent, seed)
            for agent in args.agents for seed in args.seeds} if before else {}


def unfinished_before(args, stage, starts):
    """[exp-name of the stage before, then each (agent, seed) without a finished run there], or [] if none lacks one."""
    missing = [f"{agent} seed {seed}" for (agent, seed), path in starts.items() if path is None]
    return [exp_name(args.tag, stage_before(stage)), *missing] if missing else []


def stage_runs(args, stage, starts):
    """(command, log name) of every (agent, seed) run of one stage, each from its own agent of the stage before."""
    runs = []
    for agent in args.agents:
        for seed in args.seeds:
            init = ["--init-from", starts[agent, seed]] if starts else []
            runs.append((["nice", "-n", str(args.nice), sys.executable, str(ROOT / "grid_failmem.py"), "--agent", agent,
                          "--seed", str(seed), "--threads", "1", "--eval-levels", "100", *STAGES[stage], *init,
                          # the critic of the docs, made before its t / T input and standardised targets were defaults
                          "--no-time-aware-value", "--no-value-norm",
                          "--exp-name", exp_name(args.tag, stage)], f"grid_{exp_name(args.tag, stage)}_{agent}_{seed}.log"))
    return runs


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", nargs="+", default=["memory", "snail"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--tag", default="curriculum", help="runs are named {tag}_{stage}; docs grid_{tag}_{stage}.*")
    parser.add_argument("--first-stage", choices=list(STAGES), default="x2",
                        help="start here, from the latest runs of the stage before")
    parser.add_argument("--parallel", type=int, default=2, help="runs at once, one torch thread each")
    parser.add_argument("--nice", type=int, default=0, help="niceness of the runs (10 leaves the cores to others)")
    args = parser.parse_args(argv)
    stages = list(STAGES)[list(STAGES).index(args.first_stage):]
    for stage in stages:
        starts = starting_points(args, stage)
        missing = unfinished_before(args, stage, starts)
        if missing:  # checked before any run of the stage: before anything at all with --first-stage
            parser.error(f"stage {stage} starts from the stage before (exp-name {missing[0]}), which has no finished "
                         f"run for {', '.join(missing[1:])}")
        print(f"== stage {stage} ==")
        launch(stage_runs(args, stage, starts), args.parallel)
    for stage in stages:
        subprocess.run([sys.executable, str(ROOT / "benchmark" / "learning.py"), "--env", "grid", "--agents",
                        *[f"{agent}@{exp_name(args.tag, stage)}" for agent in args.agents], "--seeds",
                        *map(str, args.seeds), "--total-timesteps", str(STEPS), "--tag", exp_name(args.tag, stage),
                        "--plot-only"], check=True)


if __name__ == "__main__":
    main()

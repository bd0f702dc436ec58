"""Which reading of the paper's test do learned agents need? The same checkpoints under each, side by side.

    python benchmark/grid_test_readings.py runs/<run>/agent.pt [more checkpoints] [--levels 500]
        [--readings greedy trial sampled train] [--out docs/...md]

The paper leaves two things of its test open (README, "Where the paper is silent"):
  - the memory agent's test history: its SNAIL restarts with each test episode, earlier failures reaching it
    through the bank only (`--test-history episode`, our default), or it runs over the whole 5-episode trial as
    SNAIL's does (`trial`);
  - test actions: greedy (our default) or drawn from the policy (`--eval-sample`, a generator seeded by --seed).
One more reading asks another question: the same greedy test on the first levels the agent trained on
(`--eval-split train`), beside the held-out ones, tells levels learned by heart from a skill that carries over.
Earlier sessions measured both on agents that had not learned the task; this measures them on agents that
have. Each checkpoint is run through grid_failmem.py's `evaluate()` on the first `--levels` held-out levels of
its own task (or its training levels), once per reading (the whole-trial reading only for agents with a bank:
SNAIL always reads the trial). Writes one table per checkpoint and reading, then the mean ± sd over the checkpoints
of each run name and agent.
"""

import argparse
import dataclasses
import os
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import grid_failmem as grid  # noqa: E402
from learning import write_doc  # noqa: E402

READINGS = {  # flag name -> (name in the doc, the Args fields it sets on top of the defaults)
    "greedy": ("greedy (the defaults)", {}),
    "trial": ("greedy, the memory agent's SNAIL over the whole trial", {"test_history": "trial"}),
    "sampled": ("sampled", {"eval_sample": True}),
    "train": ("greedy, on its training levels", {"eval_split": "train"}),
}
COLUMNS = ("success_ep1", "success_ep2", "success_ep3", "success_ep4", "success_ep5", "mean_success",
           "goal_after_first_failure", "goal_after_two_failures", "no_hit", "goal_nearest", "mean_success_goal_not_nearest")


def goal_is_nearest(levels):
    """Per level: is the goal a block nearest the start (Manhattan distance, ties counted)? A policy that walks to the
    nearest block first succeeds in episode 1 on these, so two level sets differ in what they ask of a memory by
    their share of them."""
    distances = np.abs(levels["blocks"] - levels["starts"][:, None, :]).sum(-1)
    return distances[np.arange(len(distances)), levels["goals"]] == distances.min(1)


def readings_of(path, num_levels, readings=tuple(READINGS), checkpoint=None):
    """{reading's name in the doc: evaluate()'s summary} of one checkpoint on the first `num_levels` held-out (or
    training) levels of its task, and its Args as trained. `checkpoint`: the file already read."""
    checkpoint = checkpoint or grid.read_checkpoint(path)
    saved = grid.checkpoint_args(checkpoint)
    trained = grid.Args(num_test_levels=num_levels, num_train_levels=saved.num_train_levels, exp_name=saved.exp_name)
    agent = grid.load_checkpoint(path, trained, len(grid.MOVES), torch.device("cpu"), checkpoint).eval()
    summaries = {}
    for key in readings:
        name, fields = READINGS[key]
        if "test_history" in fields and not agent.use_memory:
            continue
        run = dataclasses.replace(trained, **fields)
        levels = grid.task_levels(run, run.eval_split, num_levels)
        result = grid.evaluate(agent, run, levels, np.arange(num_levels), "cpu")
        summaries[name] = {"goal_after_two_failures": float("nan"), **grid.summarize(result, run.num_blocks)}  # X = 2: none
        nearest = goal_is_nearest(levels)
        summaries[name]["goal_nearest"] = float(nearest.mean())
        summaries[name]["mean_success_goal_not_nearest"] = float(result["success"][~nearest].mean())
    return trained, summaries


def cells(values):
    return " | ".join(values)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--levels", type=int, default=500, help="held-out levels (the first ones)")
    parser.add_argument("--readings", nargs="+", choices=list(READINGS), default=["greedy", "trial", "sampled"],
                        help="which readings, in this order (train: greedy on the first training levels)")
    parser.add_argument("--out", default=str(ROOT / "docs" / "grid_test_readings.md"))
    args = parser.parse_args()
    if args.levels < 1:
        parser.error(f"--levels must be positive, got {args.levels}")
    missing = [path for path in args.checkpoints if not Path(path).is_file()]
    if missing:
        parser.error(f"no checkpoint at {missing[0]}")
    # each checkpoint read and checked once, before any evaluation; its flags and weights are kept, its training
    # state dropped (a long run's banks are hundreds of MB)
    checkpoints = {}
    for path in args.checkpoints:
        whole = grid.read_checkpoint(path)
        checkpoints[path] = {"args": whole["args"], "model": whole["model"]}
        trained_on = grid.checkpoint_args(whole).num_train_levels
        if "train" in args.readings and args.levels > trained_on:
            parser.error(f"--levels {args.levels} is more than the {trained_on} levels {path} trained on")
    torch.set_num_threads(1)

    header = ["| checkpoint | agent | task | reading | ep 1 | ep 2 | ep 3 | ep 4 | ep 5 | mean | goal after a first "
              "failure | goal after two | no block hit | levels whose goal is nearest | mean on the other levels |",
              "|" + "---|" * (len(COLUMNS) + 4)]
    rows, by_group = [], defaultdict(list)
    for path in args.checkpoints:
        trained, summaries = readings_of(path, args.levels, args.readings, checkpoints[path])
        task = f"W {trained.grid_size}, X {trained.num_blocks}"
        for reading, summary in summaries.items():
            rows.append(f"| `{path}` | {trained.agent} | {task} | {reading} | "
                        + cells(f"{summary[key]:.3f}" for key in COLUMNS) + " |")
            by_group[trained.exp_name, trained.agent, task, reading].append([summary[key] for key in COLUMNS])
            print(rows[-1])
    means = [f"| {exp_name} | {agent} | {task} | {reading} | {len(values)} | "
             + cells(f"{m:.3f} ± {s:.3f}" for m, s in zip(np.mean(values, 0), np.std(values, 0))) + " |"
             for (exp_name, agent, task, reading), values in by_group.items()]
    out_flag = "" if args.out == parser.get_default("out") else f" --out {os.path.relpath(args.out, ROOT)}"
    readings_flag = "" if args.readings == parser.get_default("readings") else f" --readings {' '.join(args.readings)}"
    text = "\n".join([
        "# Gridworld: the test's readings on learned agents", "",
        f"Made by `python benchmark/grid_test_readings.py {' '.join(args.checkpoints)} --levels {args.levels}{readings_flag}{out_flag}`.",
        "", f"Each checkpoint on the first {args.levels} held-out levels of its own task (the reading 'on its training "
        "levels': the first training levels instead), empty bank at the start, 5 "
        "episodes, under each reading. Goal after a first failure: of the levels whose episode 1 missed the goal, the "
        "share whose episode 2 reached it. Goal after two (three blocks): of the levels whose episodes 1 and 2 hit "
        "two different traps, the share whose episode 3 reached it (Bayes-optimal 1; an agent that avoids only one of "
        "the two, 1/2 at best). Levels whose goal is nearest: the share of the levels whose goal is a block "
        "nearest the start (Manhattan distance, ties counted), where walking to the nearest block first wins episode "
        "1; mean on the other levels: the mean success over episodes 1-5 on the rest, which two level sets can be "
        "compared on whatever their share.", "",
        "Mean ± sd over the checkpoints of each run name and agent:", "",
        "| run (--exp-name) | agent | task | reading | checkpoints | ep 1 | ep 2 | ep 3 | ep 4 | ep 5 | mean | goal after a "
        "first failure | goal after two | no block hit | levels whose goal is nearest | mean on the other levels |",
        "|" + "---|" * (len(COLUMNS) + 5), *means, "", "Each checkpoint:", "", *header, *rows, "",
    ])
    write_doc(Path(args.out), text)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""How do agents trained on one number of blocks do on levels with another, before any training there?

    python benchmark/grid_transfer.py runs/<run>/agent.pt [more checkpoints] --num-blocks 3 [--out docs/grid_transfer.md]

The network does not depend on the number of blocks (grid_failmem.py's `--init-from` starts a run on
three blocks from weights trained on two), but the pictures do: three blocks are drawn in three hues
(red, green, blue) where two are drawn in two (red, cyan), so two of the three colours were never seen.
Each checkpoint is run through grid_failmem.py's `evaluate()` (greedy, empty bank at the start, 5
episodes) on the first `--levels` held-out levels of its own grid with `--num-blocks` blocks, beside the
random policy and Bayes-optimal on the same levels. Writes one table, as docs/grid_transfer_*.md do.
"""

import argparse
import dataclasses
import os
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import grid_failmem as grid  # noqa: E402
from grid_random import random_policy_result  # noqa: E402
from learning import write_doc  # noqa: E402

COLUMNS = ("success_ep1", "success_ep2", "success_ep3", "success_ep4", "success_ep5", "mean_success",
           "goal_after_first_failure", "fail_hit_end_same", "no_hit")


def row(name, summary):
    return f"| {name} | " + " | ".join(f"{summary[key]:.3f}" for key in COLUMNS) + " |"


def transfer(path, num_blocks, num_levels):
    """The checkpoint's agent tested on the first held-out levels of its grid with `num_blocks` blocks:
    (its Args as trained, evaluate()'s summary)."""
    run = grid.Args(num_test_levels=num_levels)
    agent = grid.load_checkpoint(path, run, len(grid.MOVES), torch.device("cpu")).eval()
    trained = dataclasses.replace(run)
    run.num_blocks = num_blocks  # the network does not depend on it; only the levels change
    # a palette the agent trained on (--block-colours) stays, if it has colours enough for the blocks
    colours = run.block_colours if run.block_colours and run.block_colours >= num_blocks else None
    levels = grid.make_levels("test", num_levels, run.grid_size, num_blocks, colours)
    return trained, grid.summarize(grid.evaluate(agent, run, levels, np.arange(num_levels), "cpu"), num_blocks)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--num-blocks", type=int, default=3, help="blocks of the levels the agents are tested on")
    parser.add_argument("--levels", type=int, default=500, help="held-out levels (the first ones)")
    parser.add_argument("--out", default=str(ROOT / "docs" / "grid_transfer.md"))
    args = parser.parse_args()
    torch.set_num_threads(1)

    rows, grids = [], set()
    for path in args.checkpoints:
        trained, summary = transfer(path, args.num_blocks, args.levels)
        rows.append(row(f"{trained.agent}, trained on {trained.num_blocks} blocks: `{path}`", summary))
        grids.add(trained.grid_size)
        print(rows[-1])
    if len(grids) > 1:
        raise SystemExit("grid_transfer.py: error: the checkpoints were trained on different grids; give one grid at a time")
    grid_size = grids.pop()
    default_out = parser.get_default("out")
    out_flag = "" if args.out == default_out else f" --out {os.path.relpath(args.out, ROOT)}"
    random_summary = grid.summarize(random_policy_result(grid_size, args.num_blocks, num_test_levels=args.levels),
                                    args.num_blocks)
    optimal = grid.bayes_optimal(args.num_blocks, 5)
    header = ["| agent | ep 1 | ep 2 | ep 3 | ep 4 | ep 5 | mean | goal after a first failure | same trap every episode "
              "| no block hit |", "|" + "---|" * (len(COLUMNS) + 1)]
    text = "\n".join([
        f"# Gridworld: agents on {args.num_blocks} blocks before training there ({grid_size} x {grid_size})", "",
        f"Made by `python benchmark/grid_transfer.py {' '.join(args.checkpoints)} --num-blocks {args.num_blocks} "
        f"--levels {args.levels}{out_flag}`.", "",
        f"Greedy test on the first {args.levels} held-out levels with {args.num_blocks} blocks, empty bank at the start, "
        "5 episodes. Goal after a first failure: of the levels whose episode 1 missed the goal, the share whose "
        f"episode 2 reached it (Bayes-optimal {1 / (args.num_blocks - 1) if args.num_blocks > 1 else 1:.2f}). "
        "Same trap every episode and no block hit: the error modes of Fig. 3c/d.", "",
        *header, *rows, row("random policy", random_summary),
        "| Bayes-optimal | " + " | ".join(f"{p:.3f}" for p in optimal) + f" | {np.mean(optimal):.3f} | | | |", "",
    ])
    write_doc(Path(args.out), text)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""Does a three-block memory agent read every failure in its bank, or only one? A counterfactual test.

    python benchmark/grid_two_failures.py runs/<run>/agent.pt [more checkpoints] [--out docs/grid_two_failures.md]

On every held-out level (three blocks), greedy episodes from the level's start, each with SNAIL fresh,
with banks made by hand (the last L steps of a scripted walk into a block, stored as the bank stores a
failure, as in grid_bank_probe.py):
  - an empty bank: the block it walks to is its favourite F;
  - a bank naming F: the block it walks to then, if another, is its next choice N;
  - a bank naming N alone: does it read a failure that is not its favourite?
  - a bank naming F and N, in either order: the Bayes-optimal agent walks to the third block, the one no
    failure names. One that reads only whether its favourite failed walks to N again.
Writes docs/grid_two_failures.md or --out.
"""

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import grid_failmem as grid  # noqa: E402
from grid_bank_probe import hits_with_banks, scripted_failure  # noqa: E402
from learning import write_doc  # noqa: E402

BANKS = ("empty", "F", "N", "F, N", "N, F")  # the blocks each bank's failures walked into, oldest first


def probe(path, num_levels):
    """The block hit (-1: none) on each usable level under each bank of BANKS, and F and N per level
    (N: -1 where the bank naming F sent the agent to no other block; those levels get no two-failure banks)."""
    args = grid.Args(num_test_levels=num_levels)
    agent = grid.load_checkpoint(path, args, len(grid.MOVES), torch.device("cpu")).eval()
    if args.num_blocks != 3 or not agent.use_memory:
        raise SystemExit(f"grid_two_failures.py: error: {path} is not a three-block agent with a bank")
    levels = grid.task_levels(args, "test", num_levels)
    walks = {(level, block): scripted_failure(levels, level, block, args) for level in range(num_levels) for block in range(3)}
    usable = np.array([level for level in range(num_levels) if all(walks[level, block] is not None for block in range(3))])

    def hits_with(named):  # named: per usable level, the blocks its bank's failures walked into, oldest first
        return hits_with_banks(agent, args, levels, usable, walks, named)

    hits = {"empty": hits_with([[]] * len(usable))}
    favourite = hits["empty"]
    hits["F"] = hits_with([[f] if f >= 0 else [] for f in favourite])
    nxt = np.where((favourite >= 0) & (hits["F"] >= 0) & (hits["F"] != favourite), hits["F"], -1)
    hits["N"] = hits_with([[n] if n >= 0 else [] for n in nxt])
    hits["F, N"] = hits_with([[f, n] if n >= 0 else [] for f, n in zip(favourite, nxt)])
    hits["N, F"] = hits_with([[n, f] if n >= 0 else [] for f, n in zip(favourite, nxt)])
    return favourite, nxt, hits


def shares(favourite, nxt, hits):
    """The table's cells: where each bank sent the agent, as shares of the levels the bank was made for."""
    walked, paired = favourite >= 0, nxt >= 0
    third = 3 - favourite - nxt  # blocks are 0, 1, 2
    cells = {"levels": len(favourite), "empty: a block": walked.mean(), "levels with N": paired.sum()}
    f = hits["F"][walked]
    cells.update({"F: F again": (f == favourite[walked]).mean(), "F: another": ((f >= 0) & (f != favourite[walked])).mean(),
                  "F: none": (f < 0).mean()})
    cells.update({"N: N again": (hits["N"][paired] == nxt[paired]).mean(), "N: F": (hits["N"][paired] == favourite[paired]).mean()})
    for bank in ("F, N", "N, F"):
        h = hits[bank][paired]
        cells.update({f"{bank}: the third": (h == third[paired]).mean(), f"{bank}: F": (h == favourite[paired]).mean(),
                      f"{bank}: N": (h == nxt[paired]).mean(), f"{bank}: none": (h < 0).mean()})
    cells["same block either order"] = (hits["F, N"][paired] == hits["N, F"][paired]).mean()
    return cells


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--num-test-levels", type=int, default=500)
    parser.add_argument("--out", default=str(ROOT / "docs" / "grid_two_failures.md"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = [(Path(path).parent.name, shares(*probe(path, args.num_test_levels))) for path in args.checkpoints]
    columns = list(rows[0][1])
    command = " ".join(["python benchmark/grid_two_failures.py", *args.checkpoints]
                       + ([f"--out {args.out}"] if args.out != parser.get_default("out") else []))
    text = ["# Gridworld, three blocks: does the memory agent read both failures in its bank? (counterfactual banks)", "",
            f"Made by `{command}`: the held-out levels of the first {args.num_test_levels} where a straight walk into each "
            "block exists, one greedy episode per bank from the level's start, SNAIL fresh. F: the block the "
            "empty-bank episode walks to; N: the block it walks to when the bank names F (levels where it walks to "
            "another block). A bank names a block by holding a scripted walk into it, stored as a failure. "
            "Bayes-optimal: never the named block, and the third block when F and N are both named.", "",
            "| agent | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, cells in rows:
        text.append(f"| `{name}` | " + " | ".join(
            str(int(value)) if isinstance(value, (int, np.integer)) else f"{value:.3f}" for value in cells.values()) + " |")
    write_doc(Path(args.out), "\n".join(text + [""]))
    print("\n".join(text))


if __name__ == "__main__":
    main()

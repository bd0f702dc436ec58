"""Does an agent recover from a failure at test? What it does in test episode k + 1 after episode k.

    python benchmark/grid_recovery.py runs/<run>/agent.pt [more checkpoints]

Runs grid_failmem.py's `evaluate()` on the held-out levels for each checkpoint, with greedy test
actions (the paper's test here) and with actions drawn from the policy (`--eval-sample`), and for
the random policy on the same grid, and counts over every pair of consecutive test episodes (k, k + 1): after
a success, how often the goal is reached again; after a trap, how often the next episode hits the
same trap, another trap, the goal, or no block, and how often it ends "stuck": no block hit, and the
last 40 of its 80 steps on at most 3 cells (the random policy: never). The paper's claim is about the goal after a trap:
an agent that remembers its failure never hits the same trap twice and, with X = 3, reaches the
goal in at least half of the episodes after a first failure (Bayes-optimal); a memoryless greedy
policy walks the same path again. Writes docs/grid_recovery.md.
"""

import argparse
import shlex
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import grid_failmem as grid  # noqa: E402
from grid_random import random_policy_result  # noqa: E402
from learning import write_doc  # noqa: E402


OUTCOMES = ("goal again after a success", "same trap after a trap", "another trap after a trap", "goal after a trap",
            "no block after a trap", "stuck after a trap")
AFTER_TWO = ("goal after two traps", "the older trap after two", "the last trap after two", "no block after two traps")
STUCK_STEPS, STUCK_CELLS = 40, 3  # stuck: no block hit, and the last 40 of its 80 steps on at most 3 cells


class StuckGridWorld(grid.BatchedGridWorld):
    """The batched env, noting for each env's episodes, in order, whether they ended stuck. Every
    instance is kept in `made`, in the order `evaluate()` makes them (one per chunk of levels)."""

    made = []

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.cells = [[] for _ in range(self.num_envs)]  # the current episode's cells, env by env
        self.stuck = [[] for _ in range(self.num_envs)]
        StuckGridWorld.made.append(self)

    def step(self, actions):
        moved = np.clip(self.agent + grid.MOVES[actions], 0, self.grid_size - 1)  # before an ended episode restarts
        frames, reward, terminated, truncated, info = super().step(actions)
        for env, cell in enumerate(map(tuple, moved)):
            self.cells[env].append(cell)
            if terminated[env] or truncated[env]:
                tail = self.cells[env][-STUCK_STEPS:]
                self.stuck[env].append(bool(truncated[env]) and len(tail) == STUCK_STEPS and len(set(tail)) <= STUCK_CELLS)
                self.cells[env] = []
        return frames, reward, terminated, truncated, info


def with_stuck(evaluation, num_levels, episodes=5):
    """The result of `evaluation()` (a run of `evaluate()` on num_levels levels), with `stuck`
    (levels, episodes) added: the evaluation's envs are StuckGridWorlds while it runs."""
    StuckGridWorld.made.clear()
    batched, grid.BatchedGridWorld = grid.BatchedGridWorld, StuckGridWorld
    try:
        result = evaluation()
    finally:
        grid.BatchedGridWorld = batched
    stuck = [env[:episodes] for made in StuckGridWorld.made for env in made.stuck]
    return dict(result, stuck=np.array(stuck[:num_levels]))


def next_episode_outcomes(success, hits, stuck):
    """From per-level (levels, episodes) success, hit block (-1: none) and stuck: the count of pairs
    after a success and after a trap, and the fraction of each of OUTCOMES in the episode that follows."""
    before_success, before_hit, after_success, after_hit = success[:, :-1], hits[:, :-1], success[:, 1:], hits[:, 1:]
    after_trap = ~before_success & (before_hit >= 0)
    outcomes = (
        after_success[before_success],
        (after_hit == before_hit)[after_trap],
        ((after_hit >= 0) & (after_hit != before_hit) & ~after_success)[after_trap],
        after_success[after_trap],
        (after_hit < 0)[after_trap],
        stuck[:, 1:][after_trap],
    )
    return int(before_success.sum()), int(after_trap.sum()), {name: float(v.mean()) if v.size else float("nan")
                                                               for name, v in zip(OUTCOMES, outcomes)}


def after_two_traps(success, hits):
    """Over every test episode k + 1 that follows two different traps in episodes k - 1 and k (X >= 3): their
    count, and the fraction of each of AFTER_TWO. An agent that avoids every failure in its bank walks to the
    goal; one that avoids only its last failure goes back to the older trap as often as to the goal."""
    older, last, then, then_success = hits[:, :-2], hits[:, 1:-1], hits[:, 2:], success[:, 2:]
    two_traps = ~success[:, :-2] & ~success[:, 1:-1] & (older >= 0) & (last >= 0) & (older != last)
    outcomes = (then_success, then == older, then == last, then < 0)
    return int(two_traps.sum()), {name: float(v[two_traps].mean()) if two_traps.any() else float("nan")
                                  for name, v in zip(AFTER_TWO, outcomes)}


def two_traps_row(label, result):
    count, outcomes = after_two_traps(result["success"], result["hits"])
    return f"| {label} | {count} | " + " | ".join(f"{v:.3f}" for v in outcomes.values()) + " |"


def row(label, result):
    successes, traps, outcomes = next_episode_outcomes(result["success"], result["hits"], result["stuck"])
    mean = result["success"].mean()
    return f"| {label} | {mean:.3f} | {successes} | {traps} | " + " | ".join(f"{v:.3f}" for v in outcomes.values()) + " |"


def bayes_line(num_blocks):
    goal = ("the goal in every episode after one" if num_blocks == 2 else
            f"the goal in 1/{num_blocks - 1} of the episodes after a first failure, in all of them after {num_blocks - 1}")
    return f"Bayes-optimal with X = {num_blocks}: goal again after a success 1; after a trap, never the same trap, and {goal}."


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--num-test-levels", type=int, default=500)
    parser.add_argument("--out", default=str(ROOT / "docs" / "grid_recovery.md"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows, two_rows, grids = [], [], set()
    for path in args.checkpoints:
        run_args = grid.Args(num_test_levels=args.num_test_levels)
        agent = grid.load_checkpoint(path, run_args, len(grid.MOVES), torch.device("cpu")).eval()
        levels = grid.task_levels(run_args, "test", run_args.num_test_levels)
        for sample in (False, True):
            run_args.eval_sample = sample
            result = with_stuck(lambda: grid.evaluate(agent, run_args, levels, np.arange(args.num_test_levels), "cpu"),
                                  args.num_test_levels)
            label = f"`{Path(path).parent.name}`, {'sampled' if sample else 'greedy'}"
            rows.append(row(label, result))
            two_rows.append(two_traps_row(label, result))
        grids.add((run_args.grid_size, run_args.num_blocks))
    for grid_size, num_blocks in sorted(grids):
        result = with_stuck(lambda: random_policy_result(grid_size, num_blocks, num_test_levels=args.num_test_levels),
                              args.num_test_levels)
        rows.append(row(f"random policy, W {grid_size}, X {num_blocks}", result))
        two_rows.append(two_traps_row(f"random policy, W {grid_size}, X {num_blocks}", result))
    command = "python benchmark/grid_recovery.py " + shlex.join(sys.argv[1:])  # as typed
    text = ["# Gridworld: what the agent does in the test episode after a success or a failure", "",
            f"Made by `{command}`: {args.num_test_levels} held-out levels, 5 test episodes each, greedy test "
            "actions and actions drawn from the policy (`--eval-sample`; the random policy: uniform moves). "
            "Pairs are consecutive test episodes (k, k + 1), k = 1..4, over all levels.", "",
            "| agent | mean success | pairs after a success | pairs after a trap | " + " | ".join(OUTCOMES) + " |",
            "|---|---|---|---|" + "---|" * len(OUTCOMES), *rows, "",
            *(bayes_line(num_blocks) for _, num_blocks in sorted(grids)), ""]
    if max(num_blocks for _, num_blocks in grids) >= 3:  # two different traps need three blocks
        text += ["After two different traps in test episodes k - 1 and k, what episode k + 1 does (three or more "
                 "blocks; Bayes-optimal: the goal every time with X = 3):", "",
                 "| agent | episodes after two different traps | " + " | ".join(AFTER_TWO) + " |",
                 "|---|---|" + "---|" * len(AFTER_TWO), *two_rows, ""]
    write_doc(Path(args.out), "\n".join(text))
    print("\n".join(text))


if __name__ == "__main__":
    main()

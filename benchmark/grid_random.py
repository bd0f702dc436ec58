"""The floor under every gridworld result: a policy of uniformly random moves on the held-out levels.

    python benchmark/grid_random.py            # (W, X) = (8, 3), (16, 3) and (8, 2), the 500 held-out levels

It runs through grid_failmem.py's own `evaluate()` (5 test episodes per level, 80 steps each)
with an agent whose logits are all zero and `--eval-sample`, so its moves are uniform. A random
walk needs no memory, so its success is the same in every test episode; on a small grid it hits
some block in most episodes, and 1/X of the blocks it hits are the goal. Writes docs/grid_random.md.
"""

import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import grid_failmem as grid  # noqa: E402


class RandomAgent(torch.nn.Module):
    """Zero logits: with --eval-sample the evaluation draws every move uniformly."""

    use_memory, memoryless = False, False

    def begin_trial(self, banks, batch_size, max_len):
        return None, []

    def step(self, frames, prev_actions, prev_rewards, starts, trial_state, t):
        return torch.zeros(len(frames), len(grid.MOVES)), torch.zeros(len(frames))


def random_policy_result(grid_size, num_blocks, seed=1, num_test_levels=500):
    """`evaluate()`'s per-level arrays for the random policy on the first held-out levels."""
    args = grid.Args(grid_size=grid_size, num_blocks=num_blocks, eval_sample=True, seed=seed, num_test_levels=num_test_levels)
    levels = grid.make_levels("test", num_test_levels, grid_size, num_blocks)
    return grid.evaluate(RandomAgent(), args, levels, np.arange(num_test_levels), "cpu")


def random_policy(grid_size, num_blocks, seed=1):
    """The random policy's held-out success of test episodes 1..5, the fraction of its episodes that
    hit a block, and of levels with no hit in 5 episodes."""
    args = grid.Args()
    result = random_policy_result(grid_size, num_blocks, seed, args.num_test_levels)
    summary = grid.summarize(result, num_blocks)
    per_episode = [summary[f"success_ep{k}"] for k in range(1, args.eval_episodes + 1)]
    return per_episode, (result["hits"] >= 0).mean(), summary["no_hit"]


def random_policy_row(grid_size, num_blocks, seed):
    per_episode, hit_some_block, no_hit = random_policy(grid_size, num_blocks, seed)
    return (f"| {grid_size} | {num_blocks} | {seed} | " + " / ".join(f"{p:.3f}" for p in per_episode)
            + f" | {np.mean(per_episode):.3f} | {hit_some_block:.3f} | {no_hit:.3f} |")


def main():
    rows = ["| W | X | seed | held-out success of test episodes 1..5 | mean | episodes that hit a block | levels with no hit in 5 episodes |",
            "|---|---|---|---|---|---|---|"]
    rows += [random_policy_row(grid_size, num_blocks, seed) for grid_size, num_blocks in ((8, 3), (16, 3), (8, 2))
             for seed in (1, 2)]
    text = ["# Gridworld: the random policy's held-out success", "",
            "Made by `python benchmark/grid_random.py`: uniformly random moves through grid_failmem.py's "
            "`evaluate()` on the 500 held-out levels of a W x W grid with X blocks, 80-step episodes, 5 episodes per level.", "",
            *rows, "", "Bayes-optimal, X = 3: 0.333 / 0.667 / 1.000 / 1.000 / 1.000, mean 0.800; X = 2: 0.5 / 1 / 1 / 1 / 1, "
            "mean 0.9. A learned agent is "
            "judged against this floor: on the 8 x 8 grid a random walk already hits a block in most episodes.", ""]
    (ROOT / "docs" / "grid_random.md").write_text("\n".join(text))
    print("\n".join(text))


if __name__ == "__main__":
    main()

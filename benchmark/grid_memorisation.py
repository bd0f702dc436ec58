"""Does an agent trained on few levels memorise their goals? (issue: speed, --num-train-levels)

    python benchmark/grid_memorisation.py runs/grid__levers_x3_defaults__ppo-finetune__1__*/agent.pt

A memoryless policy sees o_t only, so on a level it cannot tell apart from others the goal is
each of the X blocks with probability 1/X whichever block it walks to. On the training levels
a layout names its level, and a policy can learn which block is the goal there. This samples
the policy (as in training) for the first episode of fresh trials on every training level and
on the held-out levels, and compares P(goal | a block was hit): 1/X on both means no
memorisation. Writes docs/grid_memorisation.md.
"""

import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import grid_failmem as grid  # noqa: E402

REPEATS = 4  # sampled first episodes per level


def goal_given_hit(agent, args, split, num_levels):
    levels = grid.task_levels(args, split, num_levels)
    envs = grid.BatchedGridWorld(levels, num_levels, args.grid_size, args.obs_size, args.trial_len)
    hits = successes = 0
    for _ in range(REPEATS):
        frames = envs.set_levels(np.arange(num_levels))
        ended, zero = np.zeros(num_levels, bool), torch.zeros(num_levels)
        state = agent.begin_trial([], num_levels, args.trial_len)
        for t in range(args.trial_len):
            with torch.no_grad():
                logits, _ = agent.step(torch.as_tensor(frames), zero.long(), zero, zero + (t == 0), state, t)
            frames, _, terminated, truncated, info = envs.step(torch.distributions.Categorical(logits=logits).sample().numpy())
            first_hit = terminated & ~ended
            hits, successes = hits + first_hit.sum(), successes + (info["success"] & first_hit).sum()
            ended |= terminated | truncated
            if ended.all():
                break
    return hits / (REPEATS * num_levels), successes / max(hits, 1), hits


def main():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    args = grid.Args()
    checkpoint = sys.argv[1]
    agent = grid.load_checkpoint(checkpoint, args, len(grid.MOVES), torch.device("cpu")).eval()
    if not agent.memoryless:
        sys.exit(f"{checkpoint}: a memoryless agent (ppo-finetune) is needed, got {args.agent}")
    train_levels = torch.load(checkpoint, weights_only=False)["args"]["num_train_levels"]
    rows = ["| levels | count | episodes that hit a block | P(goal given a hit) | hits |", "|---|---|---|---|---|"]
    for split, count in (("train", train_levels), ("test", args.num_test_levels)):
        hit_rate, goal_rate, hits = goal_given_hit(agent, args, split, count)
        rows.append(f"| {split} | {count} | {hit_rate:.3f} | {goal_rate:.3f} | {hits} |")
    text = ["# Gridworld: memorised goals on the training levels", "",
            f"Made by `python benchmark/grid_memorisation.py {checkpoint}` ({REPEATS} sampled first episodes per level, "
            f"torch seed 0). A policy that cannot tell levels apart has P(goal given a hit) = 1/{args.num_blocks}.", "",
            *rows, ""]
    (ROOT / "docs" / "grid_memorisation.md").write_text("\n".join(text))
    print("\n".join(text))


if __name__ == "__main__":
    main()

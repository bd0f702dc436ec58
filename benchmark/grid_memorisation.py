"""Does an agent trained on few levels memorise their goals? (issue: speed, --num-train-levels)

    python benchmark/grid_memorisation.py runs/grid__levers_x3_defaults__ppo-finetune__1__*/agent.pt
    python benchmark/grid_memorisation.py runs/RUN_1/agent.pt runs/RUN_2/agent.pt --out docs/grid_memorisation_RUNS.md

In the first episode of a trial nothing has failed yet (a memory agent's bank is empty), so on a
level it cannot tell apart from others the goal is each of the X blocks with probability 1/X
whichever block it walks to. On the training levels a layout names its level, and a policy can
learn which block is the goal there. This samples the policy (as in training) for the first
episode of fresh trials on every training level and on the held-out levels, and compares
P(goal | a block was hit): 1/X on both means no memorisation. Any agent; writes
docs/grid_memorisation.md unless --out says otherwise.
"""

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import grid_failmem as grid  # noqa: E402
from learning import write_doc  # noqa: E402

REPEATS = 4  # sampled first episodes per level


def goal_given_hit(agent, args, split, num_levels):
    levels = grid.task_levels(args, split, num_levels)
    envs = grid.BatchedGridWorld(levels, num_levels, args.grid_size, args.obs_size, args.trial_len)
    hits = successes = 0
    for _ in range(REPEATS):
        frames = envs.set_levels(np.arange(num_levels))
        ended, zero = np.zeros(num_levels, bool), torch.zeros(num_levels)
        actions = zero.long()  # the previous action SNAIL sees; the previous reward is 0 until a block ends the episode
        empty = grid.bank_tensors(grid.make_banks(args, (args.obs_size, args.obs_size, 3), 0), range(num_levels), "cpu")
        state = agent.begin_trial(empty, num_levels, args.trial_len)
        for t in range(args.trial_len):
            with torch.no_grad():
                logits, _ = agent.step(torch.as_tensor(frames), actions, zero, zero + (t == 0), state, t)
            actions = torch.distributions.Categorical(logits=logits).sample()
            frames, _, terminated, truncated, info = envs.step(actions.numpy())
            first_hit = terminated & ~ended
            hits, successes = hits + first_hit.sum(), successes + (info["success"] & first_hit).sum()
            ended |= terminated | truncated
            if ended.all():
                break
    return hits / (REPEATS * num_levels), successes / max(hits, 1), hits


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--out", default=str(ROOT / "docs" / "grid_memorisation.md"))
    options = parser.parse_args()
    torch.set_num_threads(1)
    rows = ["| checkpoint | agent | levels | count | episodes that hit a block | P(goal given a hit) | 1/X | hits |",
            "|---|---|---|---|---|---|---|---|"]
    for checkpoint in options.checkpoints:
        torch.manual_seed(0)
        args, saved = grid.Args(), grid.read_checkpoint(checkpoint)
        agent = grid.load_checkpoint(checkpoint, args, len(grid.MOVES), torch.device("cpu"), saved).eval()
        for split, count in (("train", saved["args"]["num_train_levels"]), ("test", args.num_test_levels)):
            hit_rate, goal_rate, hits = goal_given_hit(agent, args, split, count)
            rows.append(f"| `{Path(checkpoint).parent.name}` | {args.agent} | {split} | {count} | {hit_rate:.3f} | "
                        f"{goal_rate:.3f} | {1 / args.num_blocks:.3f} | {hits} |")
    command = " ".join(["python benchmark/grid_memorisation.py", *options.checkpoints]
                       + ([] if options.out == parser.get_default("out") else ["--out", options.out]))
    text = ["# Gridworld: memorised goals on the training levels", "",
            f"Made by `{command}` ({REPEATS} sampled first episodes per level, torch seed 0 for each checkpoint). A "
            "policy that cannot tell levels apart has P(goal given a hit) = 1/X.", "", *rows, ""]
    write_doc(Path(options.out), "\n".join(text))
    print("\n".join(text))


if __name__ == "__main__":
    main()

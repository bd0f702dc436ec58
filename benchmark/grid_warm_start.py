"""A warm start for PPO on three blocks: behaviour cloning of a scripted explorer (a departure from the paper).

    python benchmark/grid_warm_start.py --agent memory --seed 1 --out warm_memory_1.pt
    python benchmark/grid_warm_start.py --agent snail --seed 1 --out warm_snail_1.pt
    python grid_failmem.py --eval-only --checkpoint warm_memory_1.pt          # what cloning alone gives
    python grid_failmem.py --agent memory --seed 1 --num-blocks 3 --init-from warm_memory_1.pt ...   # then PPO
    python benchmark/grid_warm_start.py --agent memory --grid-size 16 --steps 6000 --out warm16.pt   # the paper's W 16

The explorer walks straight into a block no failure of the trial names, and into the goal once found; it
knows the blocks' places and which blocks failed, never which one is the goal, so it is the Bayes-optimal
tester (0.333 / 0.667 / 1 / 1 / 1). Each agent is cloned where its test reads its past:
  - memory: at a trial's start with a bank of one or two scripted failures, the walk into a block none
    names (`grid_two_failures.supervised`, fresh weights). At test a memory agent's SNAIL starts afresh
    with each episode (`--test-history episode`), so every test episode begins like these.
  - snail: whole scripted trials of five episodes, SNAIL over all of them, as at test.
Both for the same number of Adam steps (1e-3) of 64 cases on fresh weights, the default sizes, three blocks,
W 8 or `--grid-size`.
Writes a checkpoint that `--eval-only` and `--init-from` read.
"""

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import grid_failmem as grid  # noqa: E402
from grid_bank_probe import DOCS_AGENT, fit, scripted_failure  # noqa: E402
from grid_two_failures import save_weights, supervised  # noqa: E402


def scripted_trials(args, split, count, rng, episodes=5):
    """On each level of a split where a straight walk into every block exists, the explorer's trial: walks into
    the blocks in a random order up to the goal, then into the goal, `episodes` walks in all, back to back as in
    a trial (SNAIL's previous action and reward run on across an episode's end). Returns the levels kept and
    frames (B, T, H, W, 3), moves, previous moves, previous rewards, episode starts and valid steps (B, T)."""
    levels = grid.task_levels(args, split, count)
    kept, trials = [], []
    for level in range(count):
        walks = [scripted_failure(levels, level, block, args) for block in range(args.num_blocks)]
        if any(walk is None for walk in walks):
            continue
        goal = int(levels["goals"][level])
        order = [int(block) for block in rng.permutation(args.num_blocks)]
        visits = (order[: order.index(goal) + 1] + [goal] * episodes)[:episodes]
        rewards = [np.where(np.arange(len(walks[b][1])) == len(walks[b][1]) - 1,
                            grid.GOAL_REWARD if b == goal else grid.TRAP_REWARD, 0.0) for b in visits]
        starts = [np.arange(len(walks[b][1])) == 0 for b in visits]
        kept.append(level)
        trials.append([np.concatenate(parts) for parts in (
            [walks[b][0] for b in visits], [walks[b][1] for b in visits], rewards, starts)])
    length = max(len(moves) for _, moves, _, _ in trials)
    frames = np.zeros((len(trials), length, args.obs_size, args.obs_size, 3), np.uint8)
    moves, rewards = np.zeros((len(trials), length), np.int64), np.zeros((len(trials), length), np.float32)
    starts, valid = np.zeros((len(trials), length), np.float32), np.zeros((len(trials), length), bool)
    for row, (trial_frames, trial_moves, trial_rewards, trial_starts) in enumerate(trials):
        n = len(trial_moves)
        frames[row, :n], moves[row, :n], rewards[row, :n], starts[row, :n], valid[row, :n] = \
            trial_frames, trial_moves, trial_rewards, trial_starts, True
    previous = np.pad(moves, ((0, 0), (1, 0)))[:, :-1], np.pad(rewards, ((0, 0), (1, 0)))[:, :-1]
    return np.array(kept), *map(torch.as_tensor, (frames, moves, *previous, starts, valid))


def clone_snail(steps, seed=1, batch=64, train_levels=20000, grid_size=8):
    """A SNAIL agent with fresh weights (three blocks on a `grid_size` grid, the default sizes) cloned on the
    explorer's trials for `steps` Adam steps (1e-3) of `batch` trials: the log-probability of every move.
    -> (agent, its Args)."""
    torch.manual_seed(seed)
    # cloning trains no critic; with the docs' flags (grid_bank_probe) it draws the weights the docs' clones drew,
    # and its checkpoint is the one the docs' PPO stages (--no-value-norm) start from unchanged
    args = grid.Args(agent="snail", num_blocks=3, grid_size=grid_size, **DOCS_AGENT)
    agent = grid.Agent(args, len(grid.MOVES))
    optimizer = torch.optim.Adam(agent.parameters(), lr=1e-3)
    rng = np.random.default_rng(seed)
    _, frames, moves, prev_moves, prev_rewards, starts, valid = scripted_trials(args, "train", train_levels, rng)

    def loss_of(rows):
        # trials are padded to the split's longest; SNAIL is causal, so cutting a batch's padding after its own longest
        # trial changes no move's log-probability and drops about a quarter of the frames on W 16
        length = int(valid[rows].sum(1).max())
        batch_frames, batch_prev_moves, batch_prev_rewards, batch_starts, batch_moves, batch_valid = (
            x[rows, :length] for x in (frames, prev_moves, prev_rewards, starts, moves, valid))
        _, log_probs, _, _ = agent.get_action_and_value(batch_frames, batch_prev_moves, batch_prev_rewards,
                                                        batch_starts, [], batch_moves)
        return -(log_probs * batch_valid).sum() / batch_valid.sum()

    fit(optimizer, loss_of, len(moves), steps, rng, batch)
    return agent, args


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agent", choices=("memory", "snail"), required=True)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3000, help="Adam steps of 64 cases")
    parser.add_argument("--grid-size", type=int, default=8, help="W: the grid's side (the paper's task: 16)")
    parser.add_argument("--out", required=True, help="the checkpoint to write")
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error(f"--steps must be positive, got {args.steps}")
    if args.grid_size < 2 or grid.Args.obs_size % args.grid_size:  # the clones see the default 16-px picture
        parser.error(f"--grid-size must divide the {grid.Args.obs_size}-pixel observation, got {args.grid_size}")
    torch.set_num_threads(1)
    if args.agent == "memory":
        _, agent, agent_args = supervised(args.steps, None, "all", args.seed, grid_size=args.grid_size)
    else:
        agent, agent_args = clone_snail(args.steps, args.seed, grid_size=args.grid_size)
    save_weights(args.out, agent, agent_args)
    print(f"{args.out}: a {args.agent} agent cloned for {args.steps} steps on W {args.grid_size} (seed {args.seed})")


if __name__ == "__main__":
    main()

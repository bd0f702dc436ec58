"""Is the block no failure names in what the three-block memory agent computes? A decoding test.

    python benchmark/grid_read_decode.py runs/<run>/agent.pt [more checkpoints] [--out docs/grid_read_decode.md]

grid_two_failures.py shows that agents trained by PPO walk to the third block after two failures no more often
than chance. Either their read of the bank loses one of the two failures, or it carries both and the policy does
not act on it. This script tells the two apart. On each level where a straight walk into every block exists, the
agent's first step of an episode (SNAIL fresh) with a bank holding scripted walks into blocks drawn at random (as
the bank stores failures, random order): one block, or two. From the agent's state at that step, a small decoder
picks one of the level's three blocks: the named one (one failure) or the one no failure names (two). It scores
each block from the state and the block's colour and place, so that it can read a failure named by either; with the
blocks drawn at random the level's layout alone gives chance, 1/3. The states decoded, in the order of Fig. 1:
v'_o (the observation's embedding, which never sees the bank: a control), v_tau (the bank's trajectory embeddings
side by side, oldest first: what the read starts from), m_d (the heads' read), m_o (after the gate) and the trunk's
hidden layer (m_o beside SNAIL's features, what the actor and critic see). The decoder is
fitted on training levels and scored on held-out ones; the agent's own greedy episode on the same held-out banks
says whether it walks to that block.
"""

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import grid_failmem as grid  # noqa: E402
from grid_bank_probe import hits_with_banks, scripted_failure  # noqa: E402
from learning import write_doc  # noqa: E402

STATES = ("v'_o", "v_tau", "m_d", "m_o", "trunk")


def walkable(args, split, count):
    """The first `count` levels of a split, the ids of those where a straight walk into every block exists, and
    the walks ({(level, block): walk}); made once per split, as both banks draw from them."""
    levels = grid.task_levels(args, split, count)
    walks = {(level, block): scripted_failure(levels, level, block, args) for level in range(count) for block in range(3)}
    kept = [level for level in range(count) if all(walks[level, block] is not None for block in range(3))]
    return levels, np.array(kept), {(level, block): walks[level, block] for level in kept for block in range(3)}


def cases(walkable_levels, named_count, rng):
    """Per level of `walkable(...)`, `named_count` blocks drawn at random (oldest first) and the target: the named
    block (one) or the one no failure names (two). Returns the levels, the kept ids, the named blocks, the targets
    and the walks."""
    levels, kept, walks = walkable_levels
    named = [[int(b) for b in rng.permutation(3)[:named_count]] for _ in kept]
    targets = [blocks[0] if named_count == 1 else 3 - sum(blocks) for blocks in named]  # blocks are 0, 1, 2
    return levels, kept, named, np.array(targets), walks


def block_features(args, levels, level_ids):
    """(B, 3, K + 4): each block's colour (one-hot over the palette) and place (its cell, and its offset from the
    agent's start, both over W)."""
    palette = grid.block_palette(args.block_colours or args.num_blocks).astype(np.uint8)
    colours = (levels["colours"][level_ids][:, :, None, :] == palette).all(-1).astype(np.float32)
    cells = levels["blocks"][level_ids].astype(np.float32)
    offsets = cells - levels["starts"][level_ids][:, None, :]
    return torch.as_tensor(np.concatenate([colours, cells / args.grid_size, offsets / args.grid_size], -1), dtype=torch.float32)


@torch.no_grad()
def first_step_states(agent, args, levels, level_ids, named, walks):
    """Each of STATES at the first step of an episode from the level's start, SNAIL fresh, the bank holding the
    walks (`walks[level, block]`) into the `named` blocks: {state: (B, size)}."""
    bank = grid.MemoryBank(args.mem_size, args.mem_len, (args.obs_size, args.obs_size, 3), float("inf"))
    for level, blocks in zip(level_ids, named):
        for block in blocks:
            bank.add(int(level), *walks[level, block])
    envs = grid.BatchedGridWorld(levels, len(level_ids), args.grid_size, args.obs_size, args.trial_len)
    frames = envs.set_levels(level_ids)
    seen = {}
    modules = {"v'_o": agent.obs_embed, "v_tau": agent.traj_embed[0], "m_d": agent.memory_read[0].attention,
               "m_o": agent.memory_read[0], "trunk": agent.trunk}

    def keep_first(name):  # a hook that returns nothing leaves the module's output as it is
        def hook(module, inputs, output):
            seen.setdefault(name, output[0] if isinstance(output, tuple) else output)
        return hook

    hooks = [module.register_forward_hook(keep_first(name)) for name, module in modules.items()]
    try:
        trial_state = agent.begin_trial(grid.bank_tensors([bank], level_ids, "cpu"), len(level_ids), args.trial_len)
        zeros = torch.zeros(len(level_ids))
        agent.step(torch.as_tensor(frames), zeros.long(), zeros, torch.ones(len(level_ids)), trial_state, 0)
    finally:
        for hook in hooks:
            hook.remove()
    # v_tau comes as the filled slots, level by level and oldest first; every level here has as many
    return {name: seen[name].reshape(len(level_ids), -1) for name in STATES}


class BlockDecoder(nn.Module):
    """Scores each of a level's blocks by an MLP of the agent state and the block's features side by side; softmax
    over the blocks. The first layer is split in two so that a state goes through it once, not once per block."""

    def __init__(self, state_size, block_size, hidden=64):
        super().__init__()
        self.state, self.block, self.out = nn.Linear(state_size, hidden), nn.Linear(block_size, hidden), nn.Linear(hidden, 1)

    def forward(self, states, blocks):  # (B, S), (B, 3, K) -> (B, 3)
        return self.out(F.relu(self.state(states)[:, None] + self.block(blocks))).squeeze(-1)


def decode(train, test, steps=1000, seed=1):
    """Fit a BlockDecoder on `train` = (states, blocks, targets) with the states standardised by the training
    ones; the share of `test` cases it picks right, and of the training cases (how well it fits)."""
    torch.manual_seed(seed)
    (states, blocks, targets), (test_states, test_blocks, test_targets) = train, test
    mean, std = states.mean(0), states.std(0) + 1e-6
    decoder = BlockDecoder(states.shape[1], blocks.shape[-1])
    optimizer = torch.optim.Adam(decoder.parameters(), lr=1e-3, weight_decay=1e-4)
    for _ in range(steps):
        loss = F.cross_entropy(decoder((states - mean) / std, blocks), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        def accuracy(s, b, t):
            return (decoder((s - mean) / std, b).argmax(-1) == t).float().mean().item()

        return accuracy(test_states, test_blocks, test_targets), accuracy(states, blocks, targets)


def measure(path, train_levels, test_levels, seed=1):
    """Per bank (one failure, two): the decoders' held-out and training accuracy per state, the agent's greedy walk
    to the target on the held-out levels, and the numbers of levels."""
    args = grid.Args()
    agent = grid.load_checkpoint(path, args, len(grid.MOVES), torch.device("cpu")).eval()
    if args.num_blocks != 3 or agent.name != "memory":
        raise SystemExit(f"grid_read_decode.py: error: {path} is not a three-block agent of --agent memory")
    rng = np.random.default_rng(seed)
    splits = {"train": walkable(args, "train", train_levels), "test": walkable(args, "test", test_levels)}
    result = {}
    for named_count in (1, 2):
        data, drawn = {}, {}
        for split in ("train", "test"):
            drawn[split] = levels, ids, named, targets, walks = cases(splits[split], named_count, rng)
            data[split] = (first_step_states(agent, args, levels, ids, named, walks), block_features(args, levels, ids),
                           torch.as_tensor(targets))
        accuracies = {state: decode(*((data[split][0][state], *data[split][1:]) for split in ("train", "test")), seed=seed)
                      for state in STATES}
        levels, ids, named, targets, walks = drawn["test"]
        hits = hits_with_banks(agent, args, levels, ids, walks, named)
        result[named_count] = dict(accuracy=accuracies, walks=float((hits == targets).mean()),
                                   levels=(len(data["train"][2]), len(ids)))
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--train-levels", type=int, default=3000, help="training levels the decoders are fitted on")
    parser.add_argument("--test-levels", type=int, default=500, help="held-out levels they are scored on")
    parser.add_argument("--seed", type=int, default=1, help="draws the named blocks and the decoders' weights")
    parser.add_argument("--out", default=str(ROOT / "docs" / "grid_read_decode.md"))
    args = parser.parse_args(argv)
    for flag in ("train_levels", "test_levels"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be positive, got {getattr(args, flag)}")
    torch.set_num_threads(1)
    command = " ".join(["python benchmark/grid_read_decode.py", *args.checkpoints]
                       + [f"--{flag.replace('_', '-')} {getattr(args, flag)}" for flag in ("train_levels", "test_levels", "seed")
                          if getattr(args, flag) != parser.get_default(flag)]
                       + ([f"--out {args.out}"] if args.out != parser.get_default("out") else []))
    text = ["# Gridworld, three blocks: is the block no failure names in the agent's state? (decoders)", "",
            f"Made by `{command}`. Banks of scripted walks into blocks drawn at random (one or two, random order); the "
            "agent's state at the first step of an episode from the level's start, SNAIL fresh; a decoder (an MLP "
            "scoring each of the level's blocks from the state and the block's colour and place, 1,000 full-batch Adam steps) "
            f"fitted on the first {args.train_levels} training levels, scored on the first {args.test_levels} held-out "
            "levels (those where a straight walk into every block exists). Target: the named block with one "
            "failure, the third block with two. Chance: 0.333 for both, and what v'_o (blind to the bank) should "
            "give. v_tau: the bank's trajectory embeddings side by side, oldest first (what the read starts from). Walks: the agent's own greedy episode on the held-out banks reaches the target (with one failure "
            "the Bayes-optimal agent never walks to it; with two it always does). Decoder accuracy held out, its "
            "training accuracy in brackets.", "",
            "| agent | bank | " + " | ".join(STATES) + " | agent walks to it | levels (train / held out) |",
            "|---" * (len(STATES) + 4) + "|"]
    for path in args.checkpoints:
        for named_count, cells in measure(path, args.train_levels, args.test_levels, args.seed).items():
            bank = "one failure: the named block" if named_count == 1 else "two failures: the third block"
            decoded = " | ".join(f"{test:.3f} ({train:.3f})" for test, train in cells["accuracy"].values())
            text.append(f"| `{Path(path).parent.name}` | {bank} | {decoded} | {cells['walks']:.3f} | "
                        f"{cells['levels'][0]} / {cells['levels'][1]} |")
            print(text[-1], flush=True)
    write_doc(Path(args.out), "\n".join(text + [""]))
    print("\n".join(text))


if __name__ == "__main__":
    main()

"""A memory agent's checkpoint with its memory reader re-initialised, for `grid_failmem.py --init-from`.

    python benchmark/grid_fresh_reader.py runs/<run>/agent.pt out.pt [--seed 1]

The lever it serves: the two-block stage teaches the reader (Sec. 2.2's multi-head read and gate) one bit,
whether the agent's favourite block failed, and on three blocks F's entry then wins over a second failure
(docs/grid_two_failures.md). Starting the three-block stage with a fresh reader, and everything else of the
two-block agent (the CNN, Phi, the trajectory Transformer that names the failed block, SNAIL, the heads),
asks whether a reader learned on three blocks reads both. The copy holds the weights and flags only
(no optimiser, no banks), which is all --init-from reads.
"""

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import grid_failmem as grid  # noqa: E402

READER = "memory_read."  # the Agent's MemoryReader modules; nothing else starts afresh


def fresh_reader(checkpoint, seed):
    """The checkpoint's weights with every tensor under READER replaced by a new agent's (torch seeded
    by `seed`); -> (weights, names of the replaced tensors)."""
    args = grid.checkpoint_args(checkpoint)
    if args.agent not in grid.MEMORY_AGENTS:
        raise SystemExit(f"grid_fresh_reader.py: error: the checkpoint holds a {args.agent} agent, which has no reader")
    torch.manual_seed(seed)
    fresh = grid.Agent(args, len(grid.MOVES)).state_dict()
    weights = dict(checkpoint["model"])
    replaced = [name for name in weights if name.startswith(READER)]
    weights.update({name: fresh[name] for name in replaced})
    return weights, replaced


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("out")
    parser.add_argument("--seed", type=int, default=1, help="seeds the fresh reader's initialisation")
    args = parser.parse_args(argv)
    checkpoint = grid.read_checkpoint(args.checkpoint, "checkpoint")
    weights, replaced = fresh_reader(checkpoint, args.seed)
    mark = {key: checkpoint[key] for key in ("script", "format") if key in checkpoint}  # older checkpoints lack it
    torch.save({**mark, "args": checkpoint["args"], "model": weights}, args.out)
    print(f"{args.out}: {len(replaced)} reader tensors re-initialised, {len(weights) - len(replaced)} kept")


if __name__ == "__main__":
    main()

"""How large a training checkpoint gets with every bank full, and how long it takes to save and to
read back for --resume, at a script's default flags (grid, miniworld or reacher):

    python benchmark/checkpoint_size.py grid

The banks are filled to the smaller of N trajectories per training level and --bank-ram-mb; the
frames are random, which changes nothing here, as they are stored uncompressed."""

import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.optim as optim

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

if __name__ == "__main__":
    name = sys.argv[1] if len(sys.argv) > 1 else "grid"
    script = __import__(f"{name}_failmem")
    torch.set_num_threads(1)
    args = script.Args()
    num_actions = len(script.ACTION_NAMES if name == "miniworld" else script.MOVES)
    obs_shape = (args.obs_size, args.obs_size, 3)
    banks = script.make_banks(args, obs_shape, args.bank_ram_mb * 2**20)
    frames = np.random.default_rng(0).integers(0, 256, (64, args.mem_len, *obs_shape), dtype=np.uint8)
    no_actions, no_rewards = np.zeros(args.mem_len, np.int64), np.zeros(args.mem_len, np.float32)
    for level in range(args.num_train_levels):
        for k in range(args.mem_size):
            banks[0].add(level, frames[(level + k) % 64], no_actions, no_rewards)
    agent = script.Agent(args, num_actions)
    optimizer = optim.Adam(agent.parameters(), lr=args.learning_rate, eps=1e-5)
    sum(parameter.sum() for parameter in agent.parameters()).backward()
    optimizer.step()  # Adam's moments exist, as in a checkpoint of a run

    with tempfile.TemporaryDirectory(dir=".") as folder:
        path = os.path.join(folder, "agent.pt")
        start = time.perf_counter()
        state = script.training_state(args, "run", agent, optimizer, banks, np.random.default_rng(1), 1, 1, None)
        script.save_checkpoint(path, state)
        save_s = time.perf_counter() - start
        start = time.perf_counter()
        saved = torch.load(path, weights_only=True)
        script.restore_training_state(saved, agent, optimizer, script.make_banks(args, obs_shape, args.bank_ram_mb * 2**20),
                                      np.random.default_rng(1))
        load_s = time.perf_counter() - start
        size = os.path.getsize(path)
    print(f"{name}: {banks[0].num_trajectories} trajectories of {len(banks[0].banks)} levels "
          f"({banks[0].nbytes / 2**20:.0f} MiB of frames), {sum(p.numel() for p in agent.parameters()):,} parameters: "
          f"checkpoint {size / 2**20:.0f} MiB, save {save_s:.1f} s, read and restore {load_s:.1f} s")

"""Miniworld throughput, all in one run so the ratios share the machine's state:

  (a) one env (MiniworldFailmem), random actions, episodes restarted as they end
  (b) the vector of --num-envs envs (MiniworldVector) with 0, 1, 2, ... worker processes,
      including one env per worker, random actions
  (c) rollout inference: the memory agent's step (CNN, SNAIL cache, bank read) + the vector
  (d) training: miniworld_failmem.py itself for a few updates (rollout + PPO), SPS as it prints it,
      with the defaults (the lean network, 8 epochs, 4 trials a minibatch) and as before 2026-11-26
      (the paper's network sizes, 4 epochs, 12 trials a minibatch): the ratio of the two is the port's

    python benchmark/miniworld_throughput.py [--obs-sizes 32 64] [--num-envs 16] [--threads 1]

Writes docs/miniworld_throughput.md. Rendering and the network share the same cores, so the
machine's load average is recorded before and after.
"""

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import miniworld_failmem as mf  # noqa: E402
from timing import BEFORE, cpu_name, rate  # noqa: E402


def load():
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--obs-sizes", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--num-envs", type=int, default=16)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2, 4, 16], help="worker counts timed in (b)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--updates", type=int, default=2, help="training updates timed in (d)")
    parser.add_argument("--out", default=str(ROOT / "docs" / "miniworld_throughput.md"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    level_sets = {"train": mf.make_levels("train", 1000), "test": mf.make_levels("test", 10)}
    rng = np.random.default_rng(0)
    load_before = load()
    rows = []

    for size in args.obs_sizes:
        env = mf.MiniworldFailmem(level_sets["train"], size, 80)
        env.reset(options={"level": 0})

        def single():
            _, _, terminated, truncated, _ = env.step(int(rng.integers(3)))
            if terminated or truncated:
                env.reset(options={"level": int(rng.integers(1000))})

        rows.append((size, "(a) one env, random actions", rate(single, 1, 5.0)))
        env.close()

        for workers in args.workers:
            if workers and args.num_envs % workers:
                continue
            vector = mf.MiniworldVector(level_sets, args.num_envs, workers, size, 80)
            vector.set_levels(rng.integers(1000, size=args.num_envs))
            steps = rate(lambda: vector.step(rng.integers(3, size=args.num_envs)), args.num_envs, 5.0)
            per_worker = args.num_envs // max(workers, 1)
            where = "in this process" if workers == 0 else f"{workers} workers x {per_worker} envs"
            rows.append((size, f"(b) vector of {args.num_envs} envs, {where}", steps))
            vector.close()

        vector = mf.MiniworldVector(level_sets, args.num_envs, 2, size, 80)
        agent = mf.Agent(mf.Args(obs_size=size), 3)
        bank = mf.MemoryBank(8, 6, (size, size, 3), float("inf"))
        for level in range(args.num_envs):  # every env's bank full: the costliest read
            for _ in range(8):
                bank.add(level, rng.integers(0, 256, (6, size, size, 3), np.uint8),
                         rng.integers(3, size=6), np.full(6, -1.0, np.float32))

        @torch.no_grad()
        def trial():
            frames = vector.set_levels(np.arange(args.num_envs))
            trial_state = agent.begin_trial(mf.bank_tensors([bank], np.arange(args.num_envs), "cpu"), args.num_envs, 80)
            prev_a, prev_r = torch.zeros(args.num_envs, dtype=torch.long), torch.zeros(args.num_envs)
            starts = torch.ones(args.num_envs)
            for t in range(80):
                logits, _ = agent.step(torch.from_numpy(frames), prev_a, prev_r, starts, trial_state, t)
                prev_a = torch.distributions.Categorical(logits=logits).sample()
                frames, reward, terminated, truncated, _ = vector.step(prev_a.numpy())
                prev_r = torch.from_numpy(reward).float()
                starts = torch.from_numpy(terminated | truncated).float()

        rows.append((size, "(c) rollout inference, memory agent + vector (2 workers)", rate(trial, 80 * args.num_envs, 20.0)))
        vector.close()

        for agent_name in ("memory", "snail"):
            for setting, flags in (("defaults", []), ("before: paper's network, 4 epochs, 12 trials a minibatch", BEFORE)):
                command = [sys.executable, str(ROOT / "miniworld_failmem.py"), "--agent", agent_name,
                           "--obs-size", str(size), "--num-envs", str(args.num_envs), "--num-workers", "2",
                           "--threads", str(args.threads), "--total-timesteps", str(args.updates * 80 * args.num_envs),
                           "--num-train-levels", "1000", "--eval-every", "0", "--num-test-levels", "1",
                           "--eval-episodes", "1", "--exp-name", "throughput", *flags]
                out = subprocess.run(command, cwd="/tmp", capture_output=True, text=True, check=True).stdout
                training = float(re.findall(r"SPS (\d+)", out)[-1])
                rows.append((size, f"(d) training (rollout + PPO), {agent_name} agent, 2 workers, {setting}", training))

    command = " ".join(["python benchmark/miniworld_throughput.py", "--obs-sizes", *map(str, args.obs_sizes),
                        "--num-envs", str(args.num_envs), "--workers", *map(str, args.workers), "--threads", str(args.threads),
                        "--out", os.path.relpath(args.out, ROOT)])
    text = [
        "# Miniworld throughput", "",
        f"Made by `{command}` on {cpu_name()} ({os.cpu_count()} cores), {args.threads} torch threads, "
        f"torch {torch.__version__}, Mesa llvmpipe through headless EGL, LP_NUM_THREADS={os.environ['LP_NUM_THREADS']}. "
        f"Load average (1/5/15 min) {load_before} before, {load()} after: the machine is shared, so rates are "
        "lower bounds when the load is above the core count.", "",
        "| obs | what | env steps / s |", "|---|---|---|",
        *[f"| {size} | {name} | {value:,.0f} |" for size, name, value in rows], "",
    ]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(text))
    print("\n".join(text))


if __name__ == "__main__":
    main()

"""Throughput of the UR reacher: one env, the rollout's vector of envs in and out of worker
processes, and training steps per second of reacher_failmem.py, in one run.

    nice -n 10 python benchmark/reacher_throughput.py --obs-sizes 64 32 --num-envs 48

Writes docs/reacher_throughput.md (the table, the machine's load while it ran, the command).
Random actions; an episode that ends restarts its level, as in a trial.
"""

import argparse
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import reacher_failmem as rf  # noqa: E402
from learning import write_doc  # noqa: E402
from timing import BEFORE  # noqa: E402


def one_env(obs_size, steps):
    env = rf.UR5Reacher(rf.make_levels("train", 100), obs_size)
    rng = np.random.default_rng(0)
    env.reset(seed=0)
    start = time.perf_counter()
    for _ in range(steps):
        _, _, terminated, truncated, _ = env.step(int(rng.integers(len(rf.MOVES))))
        if terminated or truncated:
            env.reset()
    rate = steps / (time.perf_counter() - start)
    start = time.perf_counter()
    for _ in range(steps):
        env.render()
    render = steps / (time.perf_counter() - start)
    env.close()
    return rate, render


def vector(obs_size, num_envs, num_workers, steps):
    level_sets = {"train": rf.make_levels("train", 100), "test": rf.make_levels("test", 10)}
    envs = rf.ReacherVector(level_sets, num_envs, num_workers, obs_size)
    rng = np.random.default_rng(0)
    envs.set_levels(rng.integers(100, size=num_envs))
    envs.step(rng.integers(len(rf.MOVES), size=num_envs))  # workers warm
    start = time.perf_counter()
    for _ in range(steps):
        envs.step(rng.integers(len(rf.MOVES), size=num_envs))
    rate = steps * num_envs / (time.perf_counter() - start)
    envs.close()
    return rate


def training_sps(obs_size, num_envs, num_workers, updates, threads, flags=()):
    command = [
        sys.executable, str(ROOT / "reacher_failmem.py"), "--obs-size", str(obs_size), "--num-envs", str(num_envs),
        "--num-workers", str(num_workers), "--total-timesteps", str(updates * num_envs * 80), "--eval-every", "0",
        "--num-test-levels", "1", "--eval-episodes", "1", "--exp-name", "throughput", "--threads", str(threads), *flags,
    ]
    output = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return int(re.findall(r"SPS (\d+)", output)[-1]), " ".join(command[2:])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--obs-sizes", nargs="+", type=int, default=[64, 32])
    parser.add_argument("--num-envs", type=int, default=48)
    parser.add_argument("--workers", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--env-steps", type=int, default=1000, help="steps of the single env")
    parser.add_argument("--vector-steps", type=int, default=40, help="steps of the vector (each num-envs env steps)")
    parser.add_argument("--repeats", type=int, default=3, help="vector measurements per setting (median)")
    parser.add_argument("--updates", type=int, default=2, help="PPO updates per training measurement")
    parser.add_argument("--train-workers", type=int, default=2, help="--num-workers of the training runs")
    parser.add_argument("--threads", type=int, default=0, help="--threads of the training runs")
    parser.add_argument("--out", default=str(ROOT / "docs" / "reacher_throughput.md"))
    args = parser.parse_args()

    load_before = os.getloadavg()
    rows = []
    for size in args.obs_sizes:
        env_rate, render_rate = one_env(size, args.env_steps)
        row = {"obs": size, "one env": env_rate, "render only": render_rate}
        rates = {workers: [] for workers in args.workers}
        for _ in range(args.repeats):  # interleaved, so a burst of load from elsewhere hits all alike
            for workers in args.workers:
                rates[workers].append(vector(size, args.num_envs, workers, args.vector_steps))
        for workers in args.workers:
            row[f"vector, {workers} workers"] = float(np.median(rates[workers]))
        row["training SPS"], train_command = training_sps(size, args.num_envs, args.train_workers, args.updates, args.threads)
        row["training SPS before"], _ = training_sps(size, args.num_envs, args.train_workers, args.updates, args.threads, BEFORE)
        row["ratio"] = row["training SPS"] / row["training SPS before"]
        rows.append(row)
        print(row, flush=True)
    load_after = os.getloadavg()

    keys = list(rows[0])
    lines = [
        "# UR reacher throughput",
        "",
        f"Written by `benchmark/reacher_throughput.py` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
        f"{os.cpu_count()} CPU cores, {platform.python_version()}, no GPU.",
        "",
        f"    {' '.join(['python', *sys.argv])}",
        "",
        "Env steps per second with random actions (an ended episode restarts its level); the vector is "
        f"the rollout's {args.num_envs} envs (`ReacherVector`), its rate counts every env's step "
        f"(median of {args.repeats} interleaved measurements); "
        "`render only` is `getCameraImage` (TinyRenderer) alone. Training SPS is reacher_failmem.py's "
        f"own `charts/SPS` after {args.updates} PPO updates of {args.num_envs} trials x 80 steps "
        f"(`--num-workers {args.train_workers}`, rollout and update together, no evaluation): with the defaults "
        f"(the lean network, 8 epochs, 4 trials a minibatch) and `before` 2026-11-26 (`{' '.join(BEFORE)}`); "
        "ratio: defaults / before.",
        "",
        "| " + " | ".join(keys) + " |",
        "|" + "---|" * len(keys),
    ]
    for row in rows:
        lines.append("| " + " | ".join((f"{row[k]:.2f}" if k == "ratio" else f"{row[k]:.0f}") if isinstance(row[k], float) else str(row[k]) for k in keys) + " |")
    lines += [
        "",
        f"Load average (1, 5, 15 min) before: {', '.join(f'{x:.1f}' for x in load_before)}; after: "
        f"{', '.join(f'{x:.1f}' for x in load_after)}. The 2 cores were shared with other runs, so "
        "these are lower bounds of what an idle machine gives.",
        "",
        f"Training command (per size): `python reacher_failmem.py {train_command}`",
        "",
    ]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_doc(Path(args.out), "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()

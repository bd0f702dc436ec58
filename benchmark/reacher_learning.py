"""Memory vs. SNAIL on the UR reacher, same seeds and budget, side by side (paper Fig. 5, A.1).

    python benchmark/reacher_learning.py --total-timesteps 60000 --seeds 1 --parallel 2 -- --obs-size 32

Trains every (agent, seed) with reacher_failmem.py under `nice -n 10` (extra flags after `--` go
to every run), then reads their TensorBoard logs and writes into docs/:
  reacher_{tag}.png   training episode success and held-out success vs. steps, and the
                      per-episode test success of the final agents beside the Bayes-optimal line
  reacher_{tag}.md    the final test table (held-out levels) and the command that made it
"""

import argparse
import glob
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def scalars(run_dir, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    accumulator.Reload()
    if tag not in accumulator.Tags()["scalars"]:
        return np.zeros(0), np.zeros(0)
    events = accumulator.Scalars(tag)
    return np.array([e.step for e in events]), np.array([e.value for e in events])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", nargs="+", default=["memory", "snail"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[1])
    parser.add_argument("--total-timesteps", type=int, default=60_000)
    parser.add_argument("--parallel", type=int, default=2, help="runs at once, one torch thread each")
    parser.add_argument("--tag", default="bench", help="exp-name of the runs and prefix of the docs files")
    parser.add_argument("--out", default=str(ROOT / "docs"))
    parser.add_argument("--plot-only", action="store_true", help="only read existing runs/ and plot")
    parser.add_argument("extra", nargs=argparse.REMAINDER, help="-- then flags passed to reacher_failmem.py")
    args = parser.parse_args()
    extra = [x for x in args.extra if x != "--"]

    jobs = [(agent, seed) for seed in args.seeds for agent in args.agents]
    if not args.plot_only:
        running, launched, started = [], [], time.time()
        for agent, seed in jobs:
            while len(running) >= args.parallel:
                running = [p for p in running if p.poll() is None]
                time.sleep(5)
            log = open(ROOT / "runs" / f"reacher_{args.tag}_{agent}_{seed}.log", "w")
            command = ["nice", "-n", "10", sys.executable, str(ROOT / "reacher_failmem.py"),
                       "--agent", agent, "--seed", str(seed),
                       "--exp-name", args.tag, "--threads", "1", "--total-timesteps", str(args.total_timesteps), *extra]
            print(" ".join(command[4:]))
            running.append(subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT))
            launched.append(running[-1])
        for p in running:
            p.wait()
        for p in launched:
            if p.returncode:  # a run killed from outside loses its final evaluation: say so
                print(f"{' '.join(p.args[4:9])} exited with {p.returncode}")
        print(f"all runs done in {(time.time() - started) / 60:.1f} min")
    plot(args, jobs, extra)


def plot(args, jobs, extra):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from reacher_failmem import bayes_optimal

    os.makedirs(args.out, exist_ok=True)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    table = ["| agent | seed | " + " | ".join(f"ep {k}" for k in range(1, 6)) + " | mean | return | minutes |",
             "|" + "---|" * 10]
    colours = {"memory": "tab:blue", "snail": "tab:orange"}
    for agent, seed in jobs:
        runs = sorted(glob.glob(str(ROOT / "runs" / f"reacher__{args.tag}__{agent}__{seed}__*")))
        if not runs:
            print(f"no run for {agent} seed {seed}")
            continue
        run = runs[-1]
        colour = colours.get(agent)
        steps, success = scalars(run, "charts/episode_success")
        smooth = np.convolve(success, np.ones(10) / 10, mode="valid") if len(success) >= 10 else success
        axes[0].plot(steps[len(steps) - len(smooth):], smooth, label=f"{agent} seed {seed}", color=colour)
        steps, test = scalars(run, "eval/mean_success")
        axes[1].plot(steps, test, marker="o", label=f"{agent} seed {seed}", color=colour)
        final = [scalars(run, f"eval/success_ep{k}")[1] for k in range(1, 6)]
        if all(len(f) for f in final):
            per_episode = [f[-1] for f in final]
            axes[2].plot(range(1, 6), per_episode, marker="o", label=f"{agent} seed {seed}", color=colour)
            ret = scalars(run, "eval/mean_return")[1][-1]
            wall = (os.path.getmtime(glob.glob(run + "/events*")[0]) - int(run.rsplit("__", 1)[1])) / 60  # from run_name's start
            table.append(f"| {agent} | {seed} | " + " | ".join(f"{p:.3f}" for p in per_episode)
                         + f" | {np.mean(per_episode):.3f} | {ret:.2f} | {wall:.0f} |")
    optimal = bayes_optimal(3, 5)
    axes[2].plot(range(1, 6), optimal, "k--", label="Bayes-optimal")
    table.append("| Bayes-optimal | | " + " | ".join(f"{p:.3f}" for p in optimal) + f" | {np.mean(optimal):.3f} | | |")
    axes[0].set(title="training: episode success", xlabel="env steps", ylabel="success rate")
    axes[1].set(title="held-out levels: mean success over 5 episodes", xlabel="env steps")
    axes[2].set(title="final agents: success of test episode k", xlabel="episode k", ylim=(0, 1.05))
    for ax in axes:
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(Path(args.out) / f"reacher_{args.tag}.png", dpi=100)
    command = f"python benchmark/reacher_learning.py --total-timesteps {args.total_timesteps} --seeds " + " ".join(
        map(str, args.seeds)) + f" --tag {args.tag}" + (" -- " + " ".join(extra) if extra else "")
    text = [f"# UR reacher: {' vs. '.join(args.agents)}", "", f"Made by `{command}`.", "",
            "Final evaluation on the held-out levels (greedy, empty bank at the start, 5 episodes); minutes: "
            "wall time of the run, training and final evaluation:", "", *table, "", f"![curves](reacher_{args.tag}.png)", ""]
    (Path(args.out) / f"reacher_{args.tag}.md").write_text("\n".join(text))
    print("\n".join(text))


if __name__ == "__main__":
    main()

"""Agents side by side on one environment, same seeds and budget (paper Fig. 3a/b, 4c/d, 5, A.1).

    python benchmark/learning.py --env grid --total-timesteps 400000 -- --num-train-levels 1000
    python benchmark/learning.py --env miniworld --agents memory snail --seeds 1 2 3 -- --obs-size 32
    python benchmark/learning.py --agents memory --vary mem-len 6 20 80 --tag fig4a   # one flag's values
    python benchmark/learning.py --plot-only --tag fig3_L3 --agents memory@ladder_L3_w8fresh_memory snail@...
                                  # AGENT@EXP-NAME: draw runs made elsewhere (grid_ladder.py's, whose flags differ per agent)
    python benchmark/learning.py --plot-only --until 200000 --tag probes --agents memory@run_a memory@run_b
                                  # every run read up to one step: probes stopped early beside longer runs

Trains every (agent, seed), or with `--vary FLAG V1 V2 ...` every (agent, value, seed), with
{env}_failmem.py (one torch thread each, `--parallel` at once; flags after `--` go to every run),
then reads their TensorBoard logs and writes into docs/ (a curve per agent or value, mean over seeds):
  {env}_{tag}.png              training episode success and held-out success vs. steps, and the
                               per-episode test success of the final agents beside the Bayes-optimal line
  {env}_{tag}_error_modes.png  the four outcomes of Fig. 3c/d at each periodic evaluation, per run
  {env}_{tag}.md               the final test table and the command that made it
`--plot-only` redraws from the runs already under runs/.
"""

import argparse
import functools
import glob
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from timing import cpu_name

ROOT = Path(__file__).resolve().parents[1]
TITLES = {"grid": "Gridworld", "miniworld": "3D Miniworld", "reacher": "UR reacher"}
REACHED = 0.6  # the mean held-out success whose first step and minute the wall-clock table names (issue: speed)
ERROR_MODES = ("success", "fail_hit_end_diff", "fail_hit_end_same", "no_hit")  # as the scripts log them


def run_start(run_dir):
    """The run's start, in seconds since the epoch: run names end with it."""
    return int(str(run_dir).rsplit("__", 1)[1])


@functools.lru_cache(maxsize=None)
def event_log(run_dir):
    """A finished run's TensorBoard log, read once however many of its scalars are drawn."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(run_dir, size_guidance={"scalars": 0})
    accumulator.Reload()
    return accumulator


@functools.lru_cache(maxsize=None)
def sessions(run_dir):
    """(start, seconds run) of each piece of a run, oldest first. A resumed run writes a new event
    file named with its start time; a piece ends with the last scalar logged before the next begins.
    The first piece starts at the run's name stamp."""
    starts = sorted(int(path.name.split(".")[3]) for path in Path(run_dir).glob("events.out.tfevents.*"))
    starts = [run_start(run_dir)] + [start for start in starts if start > run_start(run_dir)]
    accumulator = event_log(str(run_dir))
    walls = np.sort([e.wall_time for tag in accumulator.Tags()["scalars"] for e in accumulator.Scalars(tag)])
    pieces = []
    for start, next_start in zip(starts, starts[1:] + [np.inf]):
        inside = walls[(walls >= start) & (walls < next_start)]
        pieces.append((start, inside[-1] - start if len(inside) else 0.0))
    return tuple(pieces)


def running_minutes(run_dir, wall_time):
    """Minutes a run had been running at `wall_time`: the pauses between the pieces of a resumed run
    are left out, so a run stopped in one session and resumed in the next is timed by its own work."""
    pieces = sessions(str(run_dir))
    before, current = 0.0, wall_time - pieces[0][0]
    for start, seconds in pieces:
        if wall_time < start:
            break
        current, before = before + wall_time - start, before + seconds
    return current / 60


def scalars(run_dir, tag, minutes=False, until=None):
    """(steps, values) of one logged scalar, up to env step `until` if given; with `minutes`,
    (minutes the run had been running, values) instead (`running_minutes`)."""
    accumulator = event_log(str(run_dir))
    if tag not in accumulator.Tags()["scalars"]:
        return np.zeros(0), np.zeros(0)
    events = [e for e in accumulator.Scalars(tag) if until is None or e.step <= until]
    if minutes:
        return np.array([running_minutes(run_dir, e.wall_time) for e in events]), np.array([e.value for e in events])
    return np.array([e.step for e in events]), np.array([e.value for e in events])


def planned_steps(run_dir):
    """The env steps a run was started for: num_iterations x batch_size of the hyperparameters it logged at its
    start (a resumed run's are in its first event file), or None in a log without them."""
    accumulator = event_log(str(run_dir))
    if "hyperparameters/text_summary" not in accumulator.Tags()["tensors"]:
        return None
    table = accumulator.Tensors("hyperparameters/text_summary")[0].tensor_proto.string_val[0].decode()
    params = dict(row.strip("|").split("|", 1) for row in table.splitlines()[2:])  # below |param|value| and |-|-|
    return int(params["num_iterations"]) * int(params["batch_size"])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", choices=sorted(TITLES), default="grid")
    parser.add_argument("--agents", nargs="+", default=["memory", "snail"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[1])
    parser.add_argument("--vary", nargs="+", metavar=("FLAG", "VALUE"), help="a flag (no dashes) and its values: a curve each")
    parser.add_argument("--total-timesteps", type=int, default=400_000)
    parser.add_argument("--parallel", type=int, default=2, help="runs at once, one torch thread each")
    parser.add_argument("--nice", type=int, default=0, help="niceness of the runs (10 leaves the cores to others)")
    parser.add_argument("--tag", default="learning", help="exp-name of the runs and suffix of the docs files")
    parser.add_argument("--name", help="docs file names {env}_{name}.* (default: the tag), to plot a subset of runs apart")
    parser.add_argument("--out", default=str(ROOT / "docs"))
    parser.add_argument("--plot-only", action="store_true", help="only read existing runs/ and plot")
    parser.add_argument("--until", type=int, help="read the runs up to this env step only: compares runs stopped early "
                        "with longer ones at the same step (the table's last evaluation is the last one before it)")
    parser.add_argument("extra", nargs=argparse.REMAINDER, help="-- then flags passed to every run")
    args = parser.parse_args()
    args.extra = [x for x in args.extra if x != "--"]

    if args.vary and len(args.vary) < 2:
        parser.error("--vary needs a flag and at least one value")
    if any("@" in agent for agent in args.agents) and not (args.plot_only and not args.vary):
        parser.error("--agents AGENT@EXP-NAME draws runs made elsewhere: it needs --plot-only and no --vary")
    jobs = [(curve, seed) for seed in args.seeds for curve in curves(args)]
    if not args.plot_only:
        launch([(["nice", "-n", str(args.nice), sys.executable, str(ROOT / f"{args.env}_failmem.py"),
                  "--agent", agent, "--seed", str(seed), "--exp-name", exp, "--threads", "1",
                  "--total-timesteps", str(args.total_timesteps), *args.extra, *flags],
                 f"{args.env}_{exp}_{agent}_{seed}.log") for (_, agent, flags, exp), seed in jobs], args.parallel)
    plot(args)


def launch(runs, parallel):
    """Run (command, log name under runs/) pairs, `parallel` at once; wait for all, and name those that failed."""
    (ROOT / "runs").mkdir(exist_ok=True)
    running, launched, started = [], [], time.time()
    for command, log_name in runs:
        while len(running) >= parallel:
            running = [p for p in running if p.poll() is None]
            time.sleep(5)
        script = next(i for i, x in enumerate(command) if x.endswith(".py"))
        print(" ".join(command[script:]))
        log = open(ROOT / "runs" / log_name, "w")
        launched.append((command[script:], subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)))
        running.append(launched[-1][1])
    for shown, p in launched:
        if p.wait():  # a run stopped from outside has no final evaluation: say so
            print(f"{' '.join(shown)} exited with {p.returncode}")
    print(f"all runs done in {(time.time() - started) / 60:.1f} min")


def smooth(values, width=10):
    """The mean of each `width` updates in a row (the curves' smoothing)."""
    return np.convolve(values, np.ones(width) / width, mode="valid")


def curves(args):
    """(label, agent, its flags, exp-name of its runs) of every curve; an agent drawn twice is labelled AGENT@EXP-NAME."""
    if not args.vary:  # AGENT@EXP names runs of another exp-name
        agents = [spec.split("@")[0] for spec in args.agents]
        return [(spec if agents.count(agent) > 1 else agent, agent, [], spec.split("@")[1] if "@" in spec else args.tag)
                for spec, agent in zip(args.agents, agents)]
    flag, values = args.vary[0], args.vary[1:]
    return [(f"{agent} --{flag} {value}", agent, [f"--{flag}", value], f"{args.tag}_{flag}{value}")
            for agent in args.agents for value in values]


def latest_run(env, exp, agent, seed):
    """The newest run directory of (env, exp-name, agent, seed), or None."""
    runs = sorted(glob.glob(str(ROOT / "runs" / f"{env}__{exp}__{agent}__{seed}__*")))
    if not runs:
        print(f"no run for {exp} {agent} seed {seed}")
    return runs[-1] if runs else None


def machine():
    """The cores and CPU model the runs of a figure were made on (read when it is drawn)."""
    return f"{os.cpu_count()} cores, {cpu_name()}"


def on_common_minutes(curves, points=50):
    """Curves (minutes, values) of the seeds of one agent, each measured at its own times ->
    the same, interpolated onto one grid of minutes up to where the shortest seed ends."""
    end = min(minutes[-1] for minutes, _ in curves)
    grid = np.linspace(min(minutes[0] for minutes, _ in curves), end, points)
    return [(grid, np.interp(grid, minutes, values)) for minutes, values in curves]


def mean_and_spread(curves):
    """Curves (steps, values) of the seeds of one agent, cut to their common length -> steps,
    mean, min, max: the line and the shaded band of the figures."""
    length = min(len(values) for _, values in curves)
    stacked = np.stack([values[:length] for _, values in curves])
    return curves[0][0][:length], stacked.mean(0), stacked.min(0), stacked.max(0)


def plot(args):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(args.out, exist_ok=True)
    name = f"{args.env}_{args.name or args.tag}"
    read = functools.partial(scalars, until=args.until)
    fig, axes = plt.subplots(1, 5, figsize=(25, 4))
    episodes = " | ".join(f"ep {k}" for k in range(1, 6))
    table = [f"| curve | seed | steps | {episodes} | mean | goal after a first failure | return | minutes |", "|" + "---|" * 12]
    summary = [f"| curve | seeds | {episodes} | mean |", "|" + "---|" * 8]
    marks = (15, 30, 45, 60)
    clock = [f"| curve | seeds | " + " | ".join(f"{m} min" for m in marks) + f" | first mean success >= {REACHED}: steps, minutes (per seed) |",
             "|" + "---|" * (len(marks) + 3)]
    for (label_, agent, _, exp), colour in zip(curves(args), plt.cm.tab10.colors):
        training, held_out, held_out_minutes, finals, clipping = [], [], [], [], []
        for seed in args.seeds:
            run = latest_run(args.env, exp, agent, seed)
            if run is None:
                continue
            steps, success = read(run, "charts/episode_success")
            if len(success) >= 10:
                training.append((steps[9:], smooth(success)))
            clipping.append(read(run, "losses/clipfrac"))
            if len(read(run, "eval/mean_success")[1]):
                held_out.append(read(run, "eval/mean_success"))
                held_out_minutes.append(read(run, "eval/mean_success", minutes=True))
            final = [read(run, f"eval/success_ep{k}") for k in range(1, 6)]
            if all(len(values) for _, values in final):
                per_episode = [values[-1] for _, values in final]
                finals.append(per_episode)
                ret = read(run, "eval/mean_return")[1][-1]
                recovery = read(run, "eval/goal_after_first_failure")[1]  # runs older than this scalar have none
                wall = read(run, "eval/success_ep1", minutes=True)[0][-1]
                table.append(f"| {label_} | {seed} | {int(final[0][0][-1]):,} | " + " | ".join(f"{p:.3f}" for p in per_episode)
                             + f" | {np.mean(per_episode):.3f} | {f'{recovery[-1]:.3f}' if len(recovery) else '-'} | {ret:.2f}"
                             + f" | {wall:.0f} |")
        seeds = len(finals) or len(training)
        label = f"{label_} ({seeds} seed{'s' if seeds != 1 else ''})"
        if held_out_minutes:
            clock.append(clock_row(label_, held_out, held_out_minutes, marks))
        if len(held_out_minutes) > 1:
            held_out_minutes = on_common_minutes(held_out_minutes)
        for ax, seed_curves, marker in ((axes[0], training, None), (axes[1], held_out, "o"), (axes[3], clipping, None),
                                        (axes[4], held_out_minutes, None if len(held_out_minutes) > 1 else "o")):
            if seed_curves:  # the mean over seeds, the band from the lowest to the highest seed
                steps, mean, low, high = mean_and_spread(seed_curves)
                ax.plot(steps, mean, marker=marker, label=label, color=colour)
                ax.fill_between(steps, low, high, color=colour, alpha=0.2)
        if finals:
            finals = np.array(finals)
            axes[2].errorbar(range(1, 6), finals.mean(0), yerr=[finals.mean(0) - finals.min(0), finals.max(0) - finals.mean(0)],
                             marker="o", capsize=3, label=label, color=colour)
            summary.append(f"| {label_} | {len(finals)} | " + " | ".join(
                f"{m:.3f} ± {s:.3f}" for m, s in zip(finals.mean(0), finals.std(0))) +
                f" | {finals.mean():.3f} ± {finals.mean(1).std():.3f} |")
    floor = grid_random_floor(args) if args.env == "grid" else None
    objects = floor[1] if floor is not None else 3  # X: 3 blocks, boxes or balls unless the grid's runs had other
    optimal = [min(k, objects) / objects for k in range(1, 6)]
    axes[2].plot(range(1, 6), optimal, "k--", label="Bayes-optimal")
    table.append("| Bayes-optimal | | | " + " | ".join(f"{p:.3f}" for p in optimal) + f" | {np.mean(optimal):.3f} | | | |")
    summary.append("| Bayes-optimal | | " + " | ".join(f"{p:.3f}" for p in optimal) + f" | {np.mean(optimal):.3f} |")
    if floor is not None:  # what uniformly random moves score on the runs' grid: the floor under every curve
        grid_size, num_blocks, per_episode = floor
        for ax in (axes[1], axes[4]):
            ax.axhline(np.mean(per_episode), color="black", ls=":", lw=1, label="random policy")
        axes[2].plot(range(1, 6), per_episode, "k:", label=f"random policy (W {grid_size}, X {num_blocks})")
        summary.append(f"| random policy, W {grid_size}, X {num_blocks} | | " + " | ".join(f"{p:.3f}" for p in per_episode)
                       + f" | {np.mean(per_episode):.3f} |")
    axes[0].set(title="training: episode success (mean of 10 updates)", xlabel="env steps", ylabel="success rate")
    axes[1].set(title="held-out levels: mean success over 5 episodes", xlabel="env steps")
    axes[2].set(title="last evaluation: success of test episode k", xlabel="episode k", ylim=(0, 1.05))
    axes[3].set(title="PPO: fraction of clipped ratios per update", xlabel="env steps")
    axes[4].set(title="held-out levels: mean success vs. wall clock", xlabel="minutes of running (a resumed run's pauses left out)")
    for ax in axes:
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    for ax in (axes[0], axes[1], axes[3]):
        ax.ticklabel_format(axis="x", style="sci", scilimits=(0, 0))
    fig.suptitle(f"{TITLES[args.env]} on {machine()}: lines are the mean over seeds, bands and bars the lowest to the highest seed")
    fig.tight_layout()
    fig.savefig(Path(args.out) / f"{name}.png", dpi=100)
    plot_error_modes(args, plt, name)

    command = (f"python benchmark/learning.py --env {args.env} --agents {' '.join(args.agents)} --seeds "
               f"{' '.join(map(str, args.seeds))} --total-timesteps {args.total_timesteps} --tag {args.tag}"
               + (f" --vary {' '.join(args.vary)}" if args.vary else "")
               + (f" --name {args.name}" if args.name else "") + (" --plot-only" if args.plot_only or args.name else "")
               + (f" --until {args.until}" if args.until else "")
               + (" -- " + " ".join(args.extra) if args.extra else ""))
    text = [f"# {TITLES[args.env]}: {' vs. '.join(label for label, *_ in curves(args))}", "", f"Made by `{command}`",
            (f"from the runs' TensorBoard logs, drawn on {machine()} (`--plot-only`: where the runs ran, and "
             "beside what, the reading says)." if args.plot_only else
             f"on {machine()}, one torch thread per run, {args.parallel} runs at once."), "",
            "Last evaluation on the held-out levels (greedy, empty bank at the start, 5 episodes; at the end of "
            "training it covers all the held-out levels), mean ± standard deviation over seeds:", "",
            *summary, "", "Held-out mean success by wall-clock minutes (the periodic evaluations, interpolated between "
            "them; mean over the seeds that ran that long), and when each seed first reached "
            f"{REACHED}:", "", *clock, "", "Each run; minutes: its running time (a resumed run's pauses left out):", "",
            *table, "", f"![curves]({name}.png)", "", f"![error modes]({name}_error_modes.png)", ""]
    write_doc(Path(args.out) / f"{name}.md", "\n".join(text))
    print("\n".join(text))


def grid_random_floor(args):
    """(W, X, the random policy's held-out success per test episode) for the grid the runs were
    trained on (read from a run's checkpoint: runs drawn with AGENT@EXP carry flags of their own)."""
    import torch

    from grid_random import random_policy

    for _, agent, _, exp in curves(args):
        for seed in args.seeds:
            run = latest_run(args.env, exp, agent, seed)
            if run and os.path.exists(f"{run}/agent.pt"):
                flags = torch.load(f"{run}/agent.pt", map_location="cpu", weights_only=True)["args"]
                return flags["grid_size"], flags["num_blocks"], random_policy(flags["grid_size"], flags["num_blocks"])[0]
    return None


def write_doc(path, text):
    """Write a generated doc, keeping the hand-written section an earlier version of it ended with."""
    marker = "## Reading (written by hand)"
    earlier = path.read_text() if path.exists() else ""
    path.write_text(text + (earlier[earlier.index(marker):] if marker in earlier else ""))


def clock_row(label, by_steps, by_minutes, marks):
    """A line of the wall-clock table: mean success at each mark, and each seed's first step and
    minute at REACHED or better."""
    at_marks = []
    for mark in marks:
        values = [np.interp(mark, minutes, values) for minutes, values in by_minutes if minutes[-1] >= mark]
        at_marks.append(f"{np.mean(values):.3f}" if values else "-")
    firsts = []
    for (steps, values), (minutes, _) in zip(by_steps, by_minutes):
        reached = np.flatnonzero(values >= REACHED)
        firsts.append(f"{int(steps[reached[0]]):,}, {minutes[reached[0]]:.0f}" if len(reached)
                      else f"not by {int(steps[-1]):,}, {minutes[-1]:.0f}")
    return f"| {label} | {len(by_minutes)} | " + " | ".join(at_marks) + " | " + "; ".join(firsts) + " |"


def plot_error_modes(args, plt, name):
    """Fig. 3c/d: the outcome of the 5 test episodes on each held-out level, per evaluation,
    one panel per agent, averaged over its seeds."""
    fig, axes = plt.subplots(1, len(curves(args)), figsize=(5 * len(curves(args)), 3.5), squeeze=False)
    read = functools.partial(scalars, until=args.until)
    for ax, (label, agent, _, exp) in zip(axes[0], curves(args)):
        runs = [run for run in (latest_run(args.env, exp, agent, seed) for seed in args.seeds) if run]
        modes = [[read(run, f"eval/{mode}") for run in runs] for mode in ERROR_MODES]
        if not runs or not all(len(values) for mode in modes for _, values in mode):
            continue
        steps = mean_and_spread(modes[0])[0]
        ax.stackplot(steps, *[mean_and_spread(mode)[1] for mode in modes], labels=ERROR_MODES,
                     colors=["tab:green", "tab:red", "tab:purple", "tab:gray"])
        ax.set(title=f"{label} ({len(runs)} seeds)", xlabel="env steps", ylabel="fraction of levels", ylim=(0, 1))
        ax.ticklabel_format(axis="x", style="sci", scilimits=(0, 0))
        ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(Path(args.out) / f"{name}_error_modes.png", dpi=100)


if __name__ == "__main__":
    main()

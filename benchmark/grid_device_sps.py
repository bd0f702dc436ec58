"""Training throughput of grid_failmem.py on one CPU thread and on a GPU, side by side in one run.

    python benchmark/grid_device_sps.py [--logs DIR] [--from-logs]

Networks and batch sizes, each trained for a few updates by grid_failmem.py itself (rollout + PPO update, the
SPS it prints): the default (lean) network on the default task (8 x 8 grid, two blocks, 16 px), the
paper's network (IMPALA with 2 residual blocks a stage, SNAIL of two TC + attention pairs of 32) on the
same task, and the paper's network on the paper's task (16 x 16 grid, three blocks, 64 px frames); then
larger batches, which a GPU may carry in the same time: the paper's PPO batch (4 epochs of 12-trial
minibatches) and 4x / 10x the envs with the same 12 minibatches an epoch.
The GPU runs go one after another (`--cuda --threads 2`); the CPU runs (`--no-cuda --threads 1`) run
beside them at the same time, one process each, so a machine with fewer than 8 free cores slows them.
Each run's output is kept in DIR/{cpu,gpu}_{name}.log; `--from-logs` rebuilds the table from those
files without training. Writes docs/grid_device_sps.md.
"""

import argparse
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import grid_failmem as grid  # noqa: E402
from learning import write_doc  # noqa: E402
from timing import cpu_name, last_update  # noqa: E402

PAPER = ["--cnn-channels", "16", "32", "32", "--cnn-blocks", "2", "--cnn-out", "256", "--snail-blocks", "2",
         "--snail-filters", "32"]
PAPER_TASK = ["--grid-size", "16", "--num-blocks", "3", "--obs-size", "64"]
PAPER_BATCH = ["--update-epochs", "4", "--trials-per-minibatch", "12"]
# name -> (what it is, flags on grid_failmem.py's defaults, updates timed on one CPU thread: 0 = not run there,
# where an update would take minutes)
RUNS = {
    "lean16": ("default network, default task (8 x 8, 2 blocks, 16 px)", [], 2),
    "lean16_e4mb12": ("default network, default task, the paper's PPO batch (4 epochs of 12-trial minibatches)",
                      PAPER_BATCH, 2),
    "lean16_envs192": ("default network, default task, 192 envs (12 minibatches of 16 trials)",
                       ["--num-envs", "192", "--trials-per-minibatch", "16"], 1),
    "lean16_envs480": ("default network, default task, 480 envs (12 minibatches of 40 trials)",
                       ["--num-envs", "480", "--trials-per-minibatch", "40"], 1),
    "paper16": ("paper's network, default task (8 x 8, 2 blocks, 16 px)", PAPER, 2),
    "paper64": ("paper's network, paper's task (16 x 16, 3 blocks, 64 px)", PAPER + PAPER_TASK, 1),
    "paper64_envs192": ("paper's network, paper's task, 192 envs (12 minibatches of 16 trials)",
                        PAPER + PAPER_TASK + ["--num-envs", "192", "--trials-per-minibatch", "16"], 0),
}
DEVICES = {"cpu": ["--no-cuda", "--threads", "1"], "gpu": ["--cuda", "--threads", "2"]}
GPU_UPDATES = 3


def steps_per_update(flags):
    """Env steps in one update of a run with these flags on grid_failmem.py's defaults: its envs x the trial's steps."""
    defaults = grid.Args()
    num_envs = int(flags[flags.index("--num-envs") + 1]) if "--num-envs" in flags else defaults.num_envs
    return num_envs * defaults.trial_len


def command(device, name):
    updates = GPU_UPDATES if device == "gpu" else RUNS[name][2]
    return [sys.executable, str(ROOT / "grid_failmem.py"), *DEVICES[device], *RUNS[name][1], "--total-timesteps",
            "1500000", "--eval-every", "0", "--checkpoint-minutes", "1000", "--stop-after", str(updates),
            "--exp-name", f"sps_{device}_{name}"]


def run_all(logs):
    """The GPU runs one after another, the CPU runs beside them, each printing into logs/DEVICE_NAME.log;
    logs/machine.txt names the machine."""
    (logs / "machine.txt").write_text(f"CPU: {cpu_name()}; GPU: {torch.cuda.get_device_name()}; torch {torch.__version__}")
    cpu_names = [name for name, (_, _, updates) in RUNS.items() if updates]
    cpu_logs = [open(logs / f"cpu_{name}.log", "w") for name in cpu_names]
    cpu_runs = [subprocess.Popen(command("cpu", name), stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
                for name, out in zip(cpu_names, cpu_logs)]
    for name in RUNS:
        with open(logs / f"gpu_{name}.log", "w") as out:
            subprocess.run(command("gpu", name), stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    for run, out in zip(cpu_runs, cpu_logs):
        run.wait()
        out.close()


def logged_update(path):
    """timing.last_update of a run's log, None for a log never written."""
    return last_update(path.read_text()) if path.exists() else None


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--logs", default="runs/device_sps", help="where the runs' output is kept")
    parser.add_argument("--from-logs", action="store_true", help="only rebuild the table from the logs")
    parser.add_argument("--out", default=str(ROOT / "docs" / "grid_device_sps.md"))
    args = parser.parse_args()
    logs = ROOT / args.logs
    if not args.from_logs:
        if not torch.cuda.is_available():
            raise SystemExit("grid_device_sps.py: error: no CUDA device here (--from-logs rebuilds the table from logs)")
        logs.mkdir(parents=True, exist_ok=True)
        run_all(logs)

    rows = []
    for name, (what, flags, _) in RUNS.items():
        cpu, gpu = logged_update(logs / f"cpu_{name}.log"), logged_update(logs / f"gpu_{name}.log")
        cells = [f"{r[0]:,} ({r[1]:.1f} + {r[2]:.1f} s)" if r else "-" for r in (cpu, gpu)]
        ratio = f"{gpu[0] / cpu[0]:.1f}x" if cpu and gpu else "-"
        rows.append(f"| {what} | {steps_per_update(flags):,} | {cells[0]} | {cells[1]} | {ratio} |")
        print(rows[-1])
    machine = (logs / "machine.txt").read_text().strip() if (logs / "machine.txt").exists() else "machine not recorded"
    text = "\n".join([
        "# Gridworld: training throughput, one CPU thread against a GPU", "",
        f"Made by `python benchmark/grid_device_sps.py{' --from-logs' if args.from_logs else ''}` "
        f"({machine}; logs in `{args.logs}`).", "",
        "Training steps per second as grid_failmem.py prints them after its last timed update (the run's mean SPS "
        f"so far; GPU: {GPU_UPDATES} updates, CPU: 2, 1 where an update takes a minute or more, none where it would "
        "take several), and in brackets that update's rollout + PPO update in seconds. An update is the envs' trials "
        "of 80 steps; unless the row says otherwise PPO makes 8 epochs of 12 minibatches of 4 trials (48 envs). "
        "CPU: `--no-cuda --threads 1`; GPU: `--cuda --threads 2`. The memory agent, its other flags the defaults.", "",
        "| network, task and batch | steps an update | one CPU thread | GPU | GPU / CPU |", "|---|---|---|---|---|",
        *rows, "", "",
    ])
    write_doc(Path(args.out), text)


if __name__ == "__main__":
    main()

"""Gridworld throughput, all in one run so the ratios share the machine's state:

  (a) the batched env with random actions (every env in one numpy call)
  (b) a per-env Python loop over the single gymnasium env (how a mazelab env is stepped)
  (c) rollout inference: the memory agent's step (cached CNN, SNAIL cache, bank read) + env
  (d) training: grid_failmem.py itself for a few updates (rollout + PPO), SPS as it prints it, and how its
      time splits between the rollout and the PPO update; at the default PPO batch (8 epochs of 4-trial
      minibatches) and at the paper's (4 epochs of 12), and with `--before REV` the same for grid_failmem.py
      as it was at git revision REV, the runs alternating so that both see the same machine; with
      `--init-from CHECKPOINT` the lean network's runs start from a trained agent's weights (late training:
      its trials come back to the same cells more often, and fail less)
  (e) where an update's time goes: forward + backward of one minibatch through each part, in CPU time, on
      random-walk trials (a trial comes back to its cells, and its bank holds its own frames: the CNN runs
      once per distinct frame, `Agent.encode`)
  (f) the bound it sets: the training SPS no faster remainder could pass while the CNN costs what (e)
      measured, against the 3,000 SPS goal
(c)-(e) for two networks side by side: the paper's sizes (IMPALA CNN with 2 residual blocks a stage,
SNAIL of two TC + attention pairs of 32) and grid_failmem.py's defaults (the lean network: no residual
blocks, one pair of 16).

    python benchmark/grid_throughput.py [--obs-size 16] [--threads 1] [--before REV] [--init-from CHECKPOINT]

Writes docs/grid_throughput_obs{N}_threads{K}.md (with --init-from: ..._trained.md).
"""

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import grid_failmem as gf  # noqa: E402
from learning import write_doc  # noqa: E402
from timing import cpu_ms, cpu_name, last_update, rate  # noqa: E402

NETWORKS = {  # name -> flags on grid_failmem.py's defaults
    "paper": ["--cnn-channels", "16", "32", "32", "--cnn-blocks", "2", "--cnn-out", "256", "--snail-blocks", "2",
              "--snail-filters", "32"],
    "lean": [],
}
BATCHES = {  # name -> PPO flags on grid_failmem.py's defaults
    "default batch": [],
    "paper's batch": ["--update-epochs", "4", "--trials-per-minibatch", "12"],
}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--obs-size", type=int, default=16)
    parser.add_argument("--num-envs", type=int, default=48)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--updates", type=int, default=3, help="training updates timed in (d)")
    parser.add_argument("--before", help="a git revision: (d) for the lean network also runs grid_failmem.py as it was there")
    parser.add_argument("--init-from", help="a lean memory agent's checkpoint on the default task: (d) for the lean "
                        "network starts from its weights")
    args = parser.parse_args()
    before = checkout(args.before) if args.before else None
    trained = ["--init-from", str(Path(args.init_from).resolve())] if args.init_from else []
    torch.set_num_threads(args.threads)
    defaults = gf.Args()  # the task of grid_failmem.py's defaults
    grid, blocks = defaults.grid_size, defaults.num_blocks
    levels = gf.make_levels("train", 1000, grid, blocks)
    rng = np.random.default_rng(0)

    envs = gf.BatchedGridWorld(levels, args.num_envs, grid, args.obs_size, 80)
    envs.set_levels(rng.integers(1000, size=args.num_envs))
    batched = rate(lambda: envs.step(rng.integers(4, size=args.num_envs)), args.num_envs)

    singles = [gf.GridWorld(levels, grid, args.obs_size, 80) for _ in range(args.num_envs)]
    for env in singles:
        env.reset(options={"level": int(rng.integers(1000))})

    def loop():
        for env in singles:
            _, _, terminated, truncated, _ = env.step(int(rng.integers(4)))
            if terminated or truncated:
                env.reset(options={"level": env.level})

    per_env = rate(loop, args.num_envs)

    bank = gf.MemoryBank(8, 6, (args.obs_size, args.obs_size, 3), float("inf"))
    for level in range(args.num_envs):  # every env's bank full: the costliest read
        for _ in range(8):
            bank.add(level, rng.integers(0, 256, (6, args.obs_size, args.obs_size, 3), np.uint8),
                     rng.integers(4, size=6), np.full(6, -1.0, np.float32))
    results = {name: network(args, flags, envs, bank, levels, *((before, trained) if name == "lean" else (None, [])))
               for name, flags in NETWORKS.items()}

    rows = [("(a) batched env, random actions", batched), ("(b) per-env loop over GridWorld", per_env)]
    for name, result in results.items():
        rows.append((f"(c) rollout inference, memory agent + env, {name}", result["inference"]))
        rows += [(f"(d) training (rollout + PPO), {name}, {batch}", r[0]) for batch, r in result["training"].items()]
        rows += [(f"(d) training (rollout + PPO), {name}, {batch}, at {args.before}", r[0])
                 for batch, r in result.get("before", {}).items()]
    paper, lean = results.values()
    trials = gf.Args().trials_per_minibatch
    ratios = [f"{batch}: training {lean['training'][batch][0] / paper['training'][batch][0]:.2f}x" for batch in BATCHES]
    speedups = [f"{batch} {lean['training'][batch][0] / lean['before'][batch][0]:.2f}x" for batch in BATCHES
                ] if before else []
    text = [f"# Gridworld throughput, obs {args.obs_size}x{args.obs_size}", "",
            f"Made by `python benchmark/grid_throughput.py --obs-size {args.obs_size} --threads {args.threads}"
            + (f" --before {args.before}" if args.before else "")
            + (f" --init-from {args.init_from}" if args.init_from else "") + f"` "
            f"on {cpu_name()}, {args.threads} torch threads, {args.num_envs} envs, torch {torch.__version__}. "
            f"The task of grid_failmem.py's defaults ({grid} x {grid} grid, {blocks} blocks); the memory agent with its "
            "defaults but the network: "
            + "; ".join(f"{name}: `{' '.join(flags)}`" for name, flags in NETWORKS.items()) + "; the PPO batch: "
            + "; ".join(f"{name}: `{' '.join(flags)}`" for name, flags in BATCHES.items()) + ".", "",
            "| what | env steps / s |", "|---|---|", *[f"| {name} | {value:,.0f} |" for name, value in rows], "",
            f"(a)/(b) = {batched / per_env:.1f}. Lean / paper: {', '.join(ratios)}, "
            f"rollout inference {lean['inference'] / paper['inference']:.2f}x; "
            f"parameters {paper['parameters']:,} (paper) and {lean['parameters']:,} (lean)."
            + (f" Lean, now / at {args.before}: {', '.join(speedups)}." if before else ""), "",
            *[f"(d) {name}, {batch}, per update of {80 * args.num_envs:,} steps: rollout {r[1]:.2f} s, PPO update "
              f"{r[2]:.2f} s." for name, result in results.items() for batch, r in result["training"].items()], "",
            f"(e) one minibatch ({trials} trials x 80 steps of a random walk, each bank 8 trajectories of 6 steps of its "
            f"trial), forward + backward, CPU ms (process time, which a run sharing the cores inflates much less "
            f"than wall time); {lean['distinct']:.0%} of the minibatch's frames are distinct:", "",
            f"| part | {' | '.join(results)} |", "|---|---|---|",
            *[f"| {part} | {paper['parts'][part]:.1f} | {lean['parts'][part]:.1f} |" for part in paper["parts"]], "",
            *floor(lean, args.num_envs, trials), ""]
    (ROOT / "docs").mkdir(exist_ok=True)
    name = f"grid_throughput_obs{args.obs_size}_threads{args.threads}{'_trained' if args.init_from else ''}.md"
    write_doc(ROOT / "docs" / name, "\n".join(text))
    print("\n".join(text))


def checkout(revision):
    """grid_failmem.py and common.py as they were at `revision`, in a directory of their own."""
    directory = Path(tempfile.mkdtemp(prefix=f"grid_{revision}_"))
    for name in ("grid_failmem.py", "common.py"):
        text = subprocess.run(["git", "show", f"{revision}:{name}"], cwd=ROOT, capture_output=True, text=True, check=True)
        (directory / name).write_text(text.stdout)
    return directory


def train(args, flags, script_dir=ROOT):
    """(training SPS, rollout s, update s) of grid_failmem.py (from `script_dir`) run for `args.updates` updates."""
    command = [sys.executable, str(script_dir / "grid_failmem.py"), "--obs-size", str(args.obs_size), "--num-envs",
               str(args.num_envs), "--threads", str(args.threads), "--total-timesteps",
               str(args.updates * 80 * args.num_envs), "--eval-every", "0",
               "--num-test-levels", "1", "--exp-name", "throughput", *flags]
    with tempfile.TemporaryDirectory() as cwd:
        return last_update(subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=True).stdout)


def random_walk_trials(levels, trials, grid, obs_size, seed=0):
    """Frames (trials, 80, H, W, 3) of random walks on `levels`, and each trial's bank as a BankView: the 6 frames
    before 8 of its steps, as its failed episodes would leave them."""
    rng = np.random.default_rng(seed)
    envs = gf.BatchedGridWorld(levels, trials, grid, obs_size, 80)
    frames = [envs.set_levels(np.arange(trials))]
    for _ in range(79):
        frames.append(envs.step(rng.integers(4, size=trials))[0])
    frames = torch.from_numpy(np.stack(frames, 1))
    stored = torch.stack([frames[:, end - 6 : end] for end in range(6, 78, 9)], 1)  # (trials, 8, 6, H, W, 3)
    bank = gf.BankView(stored, torch.from_numpy(rng.integers(4, size=stored.shape[:3])), -torch.ones(stored.shape[:3]),
                       torch.ones(stored.shape[:3], dtype=torch.bool), torch.ones(trials, 80, 8, dtype=torch.bool))
    return frames, bank


def network(args, flags, envs, bank, levels, before=None, trained=()):
    """(c), (d), (e) for the memory agent built with `flags` on top of grid_failmem.py's defaults; (d) also for
    the script in `before`, alternating with today's, both from the weights `trained` names (flags) if any."""
    import tyro

    agent_args = tyro.cli(gf.Args, args=["--obs-size", str(args.obs_size), *flags])
    agent = gf.Agent(agent_args, 4)

    @torch.no_grad()
    def trial():
        frames = envs.set_levels(np.arange(args.num_envs))
        trial_state = agent.begin_trial(gf.bank_tensors([bank], range(args.num_envs), "cpu"), args.num_envs, 80)
        prev_a, prev_r, starts = torch.zeros(args.num_envs, dtype=torch.long), torch.zeros(args.num_envs), torch.ones(args.num_envs)
        for t in range(80):
            logits, _ = agent.step(torch.from_numpy(frames), prev_a, prev_r, starts, trial_state, t)
            prev_a = torch.distributions.Categorical(logits=logits).sample()
            frames, reward, terminated, truncated, _ = envs.step(prev_a.numpy())
            prev_r = torch.from_numpy(reward).float()
            starts = torch.from_numpy(terminated | truncated).float()

    inference = rate(trial, 80 * args.num_envs, seconds=10.0)
    training, earlier = {}, {}
    for batch, batch_flags in BATCHES.items():
        if before is not None:
            earlier[batch] = train(args, [*flags, *batch_flags, *trained], before)
        training[batch] = train(args, [*flags, *batch_flags, *trained])

    # (e) one minibatch of the update, forward + backward, part by part (the memory agent, full banks)
    trials = agent_args.trials_per_minibatch
    frames, trial_bank = random_walk_trials(levels, trials, gf.Args().grid_size, args.obs_size)
    every_frame = torch.cat([frames.flatten(0, 1), trial_bank.frames.flatten(0, 2)])
    zeros = torch.zeros(trials, 80)
    actions = torch.zeros(trials, 80, dtype=torch.long)
    bank_features = agent.encode(trial_bank.frames)[0].detach().flatten(0, 1)  # every slot filled: its CNN features
    snail_in = torch.randn(trials, 80, agent.snail.layers[0].convs[0].in_channels)

    def backward(loss):
        loss.backward()
        agent.zero_grad()

    parts = [
        ("CNN over the trials' and banks' frames, every frame", lambda: backward(agent.cnn(every_frame).sum())),
        ("the same, each distinct frame once (Agent.encode)",
         lambda: backward(sum(x.sum() for x in agent.encode(frames, trial_bank.frames)))),
        ("bank: trajectory Transformer", lambda: backward(agent.read_banks([trial_bank], [bank_features])[0][0].sum())),
        ("SNAIL over the trials", lambda: backward(agent.snail(snail_in).sum())),
        ("the whole agent (get_action_and_value)",
         lambda: backward(agent.get_action_and_value(frames, actions, zeros, zeros, [trial_bank], actions)[1].sum())),
    ]
    result = dict(inference=inference, training=training, parameters=sum(p.numel() for p in agent.parameters()),
                  distinct=len(torch.unique(every_frame.flatten(1), dim=0)) / len(every_frame),
                  parts={name: cpu_ms(fn) for name, fn in parts})
    return dict(result, before=earlier) if before is not None else result


def floor(lean, num_envs, trials, goal=3000):
    """(f): an update is epochs x minibatches of (e)'s whole agent; its CNN, once per distinct frame, alone bounds
    the training SPS, whatever the rest costs."""
    epochs, minibatches = gf.Args().update_epochs, num_envs // trials
    batch, passes = 80 * num_envs, epochs * minibatches
    cnn_ms = lean["parts"]["the same, each distinct frame once (Agent.encode)"]
    whole_ms = lean["parts"]["the whole agent (get_action_and_value)"]
    budget_ms = batch / goal / passes * 1000.0  # even with a free rollout
    return [f"(f) lean, default batch: an update makes {passes} passes ({epochs} epochs x {minibatches} minibatches). "
            f"Were the CNN ({cnn_ms:.1f} ms a pass, each distinct frame once) all it cost, training could not pass "
            f"{batch / (passes * cnn_ms / 1000.0):,.0f} SPS; with the whole agent ({whole_ms:.1f} ms a pass, full "
            f"banks) and a free rollout, {batch / (passes * whole_ms / 1000.0):,.0f}. {goal:,} SPS leaves "
            f"{budget_ms:.1f} ms a pass with a free rollout, "
            + ("less than the CNN alone: at this batch the goal needs a cheaper encoder or fewer passes over each "
               "sample, not faster small ops." if budget_ms < cnn_ms else
               f"{budget_ms - cnn_ms:.1f} ms for everything but the CNN.")]


if __name__ == "__main__":
    main()

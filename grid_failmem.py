"""Learning to Recover from Failures using Memory: the 2D gridworld (paper Sec. 3.1).

The agent meets a level it has never seen: a W x W grid with X coloured blocks, one of them
the goal (+5), the others traps (-1); nothing in the picture says which. It acts in trials of
T = 80 steps; an episode ends at a block or after 80 steps and the level restarts. A memory
bank per level keeps the last L steps of its failed episodes across trials (Sec. 2), and the
policy reads it with a Transformer per trajectory and gated attention over the bank.

    python grid_failmem.py                      # the memory agent, two blocks on 8 x 8, TensorBoard under runs/
    python grid_failmem.py --grid-size 16 --num-blocks 3    # the paper's task
    python grid_failmem.py --agent snail        # the SNAIL baseline (no bank)
    python grid_failmem.py --track              # also Weights & Biases
    python grid_failmem.py --eval-only --checkpoint runs/RUN/agent.pt
    python grid_failmem.py --resume runs/RUN/agent.pt       # go on with a stopped run

Where the paper's parts are, top to bottom: the gridworld (Sec. 3.1.1, Appendix A), the
memory bank (Sec. 2), the agent (Sec. 2.1-2.3 with the blocks of common.py), the evaluation
(Sec. 3.1.2), then PPO over whole trials (Appendix A).
"""

import colorsys
import copy
import functools
import math
import netrc
import os
import random
import signal
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass, fields
from typing import Any, NamedTuple

# idle OpenMP threads sleep instead of spinning: on a busy 2-core machine spinning made torch
# several times slower (set before torch is imported)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import gymnasium as gym  # noqa: E402
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.optim as optim
import tyro
from torch.distributions.categorical import Categorical
from torch.utils.tensorboard import SummaryWriter

from common import SNAIL, CausalAttentionBlock, ImpalaCNN, MemoryReader, TrajectoryEmbedding, layer_init

AGENTS = ("memory", "snail", "snail-cat", "memory-sf", "memory-sf-mix", "ppo-finetune", "ppo-finetune-attn")
MEMORY_AGENTS = ("memory", "memory-sf", "memory-sf-mix")  # the agents with a bank


@dataclass
class Args:
    # Experiment
    exp_name: str = os.path.basename(__file__)[: -len(".py")]
    """the name of this experiment"""
    seed: int = 1
    """seed of the experiment: levels sampled, weights, actions"""
    torch_deterministic: bool = True
    """if toggled, `torch.backends.cudnn.deterministic=True`"""
    cuda: bool = True
    """if toggled, cuda is used when available"""
    threads: int = 0
    """torch CPU threads (0: one per core)"""
    track: bool = False
    """if toggled, log to Weights & Biases too (offline when no W&B login is found)"""
    wandb_project_name: str = "failmem"
    """the W&B project"""
    wandb_entity: str | None = None
    """the W&B entity (team)"""
    capture_video: bool = False
    """if toggled, write GIFs of a few test trials at each evaluation to videos/{run_name}"""
    eval_only: bool = False
    """if toggled, only evaluate the agent in --checkpoint on the held-out levels"""
    checkpoint: str | None = None
    """a checkpoint written by a training run, for --eval-only"""
    resume: str | None = None
    """a checkpoint of a stopped training run: continue it bit for bit where it stopped, in its run directory"""
    init_from: str | None = None
    """a checkpoint whose weights a new training run starts from (a curriculum: an agent trained on two blocks
    goes on with three); the optimiser, the lr schedule and the bank start fresh, and the network flags must fit
    the weights"""
    checkpoint_minutes: float = 10.0
    """minutes of wall time between checkpoints (also written at every evaluation, at the end, on Ctrl-C or SIGTERM)"""
    stop_after: int = 0
    """stop with a checkpoint after this many updates of the run (0: run them all); the schedule still spans
    --total-timesteps, so --resume goes on as if the run had never stopped"""

    # Gridworld (Sec. 3.1.1, Appendix A)
    grid_size: int = 8
    """W: the grid is W x W cells (paper: 16; 8 with two blocks is the task our agents learn on 2 cores, README)"""
    num_blocks: int = 2
    """X: coloured blocks per level, one goal and X - 1 traps (paper: 3)"""
    block_colours: int | None = None
    """K: the palette; each level draws X distinct colours from K (not given: K = X, each block its own colour). A
    curriculum from one block up gives every stage the same K, so that no stage teaches the policy one colour"""
    obs_size: int = 16
    """side of the RGB observation in pixels, a multiple of W (paper: 64; 16 draws each cell of W 16 as one pixel,
    of W 8 as 2 x 2)"""
    num_train_levels: int = 40000
    """training levels (paper: 40,000)"""
    num_test_levels: int = 500
    """held-out test levels for the final evaluation (paper: 500)"""
    trial_len: int = 80
    """T: steps per trial, also the episode step limit"""

    # Memory bank (Sec. 2)
    mem_size: int = 8
    """N: failed trajectories kept per level, oldest dropped first"""
    mem_len: int = 6
    """L: last steps of a failed episode that are stored"""
    mem_update: str | None = None
    """when training episodes enter the bank: episode (as each ends, as at test) or trial (at the trial's end, the
    paper); not given: episode for the agents with a bank, trial for the others (which have none to update)"""
    train_history: str | None = None
    """what the agents' SNAIL sees in training: episode (the current episode; earlier episodes reach the policy
    through the bank only, as at test with --test-history episode; with --mem-update episode the bank fills within
    the trial) or trial (every step of the trial so far, Sec. 2.3); not given: episode for the agents with a bank,
    trial for the others (SNAIL's only memory is the trial)"""
    bank_ram_mb: float = 2048.0
    """bound on the banks' frames in MiB; past it the least recently used level's bank is dropped"""

    # Agent (Sec. 2.1-2.3)
    agent: str = "memory"
    """memory (the paper's method), snail (no bank), snail-cat (SNAIL over the bank's frames
    concatenated before the trial), memory-sf (a second bank of successes), memory-sf-mix (one
    bank of successes and failures), ppo-finetune / ppo-finetune-attn (memoryless, fine-tuned at test)"""
    embed_dim: int = 64
    """E: embedding size"""
    cnn_channels: tuple[int, ...] = (16, 32, 32)
    """channels of the IMPALA CNN's stages, each halving the picture (paper: 16 32 32)"""
    cnn_blocks: int = 0
    """residual blocks per CNN stage (paper, IMPALA: 2; 0 costs a third as much, README)"""
    cnn_out: int = 256
    """the CNN's output features (paper, IMPALA: 256)"""
    snail_blocks: int = 1
    """(TC, attention) pairs in SNAIL (SNAIL's RL agents: 2)"""
    snail_filters: int = 16
    """filters per TC layer, and the attention's key and value size, in SNAIL"""
    num_heads: int = 4
    """attention heads of the Transformer and the memory read"""
    null_slot: bool = True
    """if toggled, the memory read also attends to a learned null trajectory in every bank, so a view no stored
    failure bears on can read it instead, and an empty bank reads it rather than giving m_o = 0 (Sec. 2.3).
    Not in the paper (README's departures); `--no-null-slot` is the paper's read. Agents without a bank have no read"""
    time_aware_value: bool = True
    """if toggled, the critic also sees the step's place in the trial, t / T: a trial's return shrinks as
    its steps run out, which nothing in the picture says (Pardo et al. 2018); the actor does not see it.
    Not in the paper; on the default task +0.029 held-out, higher on 5 paired seeds of 5 (README)"""
    value_norm: bool = True
    """if toggled, the critic learns the returns standardised by their running mean and standard deviation, and
    the value clip acts in standard deviations instead of return units (Sec. 2.3 of Yu et al. 2022, "ValueNorm");
    not in the paper; on the default task +0.031 held-out on 5 paired seeds, 0.6 reached sooner (README)"""

    # PPO (Appendix A)
    total_timesteps: int = 1_500_000
    """total environment steps of training"""
    learning_rate: float = 5e-4
    """the Adam learning rate (paper: 2.5e-4; 5e-4 recovers from more failures on two blocks, README)"""
    anneal_lr: bool = True
    """if toggled, the learning rate decays linearly to 0"""
    num_envs: int = 48
    """parallel envs, each running one trial per rollout (paper: 48 processes)"""
    trials_per_minibatch: int = 4
    """trials in one minibatch (paper's batch size: 12; 4 gives 3x the gradient steps per sample)"""
    update_epochs: int = 8
    """PPO epochs over each rollout (CleanRL: 4; 8 learns more per step, README)"""
    gamma: float = 0.99
    """discount factor (paper: 0.999; 0.99 learns to reach blocks sooner, docs/grid_levers.md)"""
    gae_lambda: float = 0.95
    """lambda of generalised advantage estimation"""
    episodic_gae: bool = False
    """if toggled, returns and advantages stop at each episode's end, not only at the trial's end"""
    norm_adv: str = "minibatch"
    """advantage normalisation: minibatch (CleanRL's), batch (once over the whole rollout), or off"""
    clip_coef: float = 0.2
    """the surrogate clipping coefficient"""
    clip_vloss: bool = True
    """if toggled, the value loss is clipped too"""
    ent_coef: float = 0.004
    """entropy coefficient"""
    vf_coef: float = 0.5
    """value loss coefficient"""
    max_grad_norm: float = 0.5
    """gradient norm clip"""
    target_kl: float | None = None
    """stop the epochs of an update once the approximate KL passes this"""

    # Evaluation (Sec. 3.1.2)
    eval_every: int = 50
    """evaluate every this many updates (0: only at the end)"""
    eval_levels: int = 200
    """held-out levels in the periodic evaluations (paper's Fig. 3c/d: 200)"""
    eval_episodes: int = 5
    """episodes per held-out level"""
    test_history: str = "episode"
    """what the memory agents' SNAIL sees at test: episode (the current episode; earlier failures
    reach it through the bank only, Sec. 3.1.2) or trial (all 5 episodes, as SNAIL's baseline does)"""
    eval_sample: bool = False
    """sample the test actions from the policy (seeded by --seed) instead of taking the most likely
    one; greedy is the default (DESIGN.md), but a memoryless greedy policy that comes back to a cell
    loops there until the step limit"""
    eval_split: str = "test"
    """levels --eval-only plays: test (the held-out levels) or train (the first --num-test-levels
    training levels, with the same empty bank at the start: held-out against training success tells
    levels learned by heart from a skill that carries over)"""
    eval_envs: int = 250
    """held-out levels run side by side in an evaluation (RAM: 3.6 GB peak at 250, 1.4 GB at 100)"""

    # filled in at run time
    batch_size: int = 0
    """steps per rollout (num_envs * trial_len)"""
    num_iterations: int = 0
    """PPO updates (total_timesteps // batch_size)"""

    def __post_init__(self):  # the defaults of the two history flags depend on whether the agent has a bank
        with_bank = self.agent in MEMORY_AGENTS
        self.mem_update = self.mem_update or ("episode" if with_bank else "trial")
        self.train_history = self.train_history or ("episode" if with_bank else "trial")
        self.null_slot = self.null_slot and with_bank


def check_args(args):
    """Stop with one line naming the flag, before any work starts."""
    problems = [
        (args.agent not in AGENTS, f"--agent must be one of {', '.join(AGENTS)}, got {args.agent!r}"),
        (args.grid_size < 2, f"--grid-size must be at least 2, got {args.grid_size}"),
        (args.num_blocks < 1, f"--num-blocks must be at least 1, got {args.num_blocks}"),
        (
            args.num_blocks >= args.grid_size**2,
            f"--num-blocks must be below grid-size^2 = {args.grid_size**2}, got {args.num_blocks}",
        ),
        (
            args.obs_size < args.grid_size or args.obs_size % args.grid_size,
            f"--obs-size must be a positive multiple of --grid-size {args.grid_size}, got {args.obs_size}",
        ),
        (
            args.block_colours is not None and args.block_colours < args.num_blocks,
            f"--block-colours must be at least --num-blocks {args.num_blocks}, got {args.block_colours}",
        ),
        (args.num_train_levels < 1, f"--num-train-levels must be positive, got {args.num_train_levels}"),
        (args.num_test_levels < 1, f"--num-test-levels must be positive, got {args.num_test_levels}"),
        (args.trial_len < 2, f"--trial-len must be at least 2, got {args.trial_len}"),
        (args.mem_size < 1, f"--mem-size must be positive, got {args.mem_size}"),
        (
            not 1 <= args.mem_len <= args.trial_len,
            f"--mem-len must be between 1 and --trial-len {args.trial_len}, got {args.mem_len}",
        ),
        (
            args.mem_update not in ("trial", "episode"),
            f"--mem-update must be trial or episode, got {args.mem_update!r}",
        ),
        (
            args.mem_update == "episode" and args.agent not in MEMORY_AGENTS,
            f"--mem-update episode needs an agent that reads its bank (memory, memory-sf, memory-sf-mix), not {args.agent}",
        ),
        (not args.bank_ram_mb > 0, f"--bank-ram-mb must be positive, got {args.bank_ram_mb}"),
        (args.embed_dim < 1 or args.embed_dim % max(args.num_heads, 1), "--embed-dim must be a multiple of --num-heads"),
        (args.num_heads < 1, f"--num-heads must be positive, got {args.num_heads}"),
        (args.total_timesteps < 1, f"--total-timesteps must be positive, got {args.total_timesteps}"),
        (not 0 < args.learning_rate <= 1, f"--learning-rate must be in (0, 1], got {args.learning_rate}"),
        (args.num_envs < 1, f"--num-envs must be positive, got {args.num_envs}"),
        (args.trials_per_minibatch < 1, f"--trials-per-minibatch must be positive, got {args.trials_per_minibatch}"),
        (args.update_epochs < 1, f"--update-epochs must be positive, got {args.update_epochs}"),
        (not 0 <= args.gamma <= 1, f"--gamma must be in [0, 1], got {args.gamma}"),
        (not 0 <= args.gae_lambda <= 1, f"--gae-lambda must be in [0, 1], got {args.gae_lambda}"),
        (not args.cnn_channels or min(args.cnn_channels) < 1,
         f"--cnn-channels must be one or more positive numbers, got {' '.join(map(str, args.cnn_channels))}"),
        (args.cnn_blocks < 0, f"--cnn-blocks must be 0 or positive, got {args.cnn_blocks}"),
        (args.cnn_out < 1, f"--cnn-out must be positive, got {args.cnn_out}"),
        (args.snail_blocks < 1, f"--snail-blocks must be positive, got {args.snail_blocks}"),
        (args.snail_filters < 1, f"--snail-filters must be positive, got {args.snail_filters}"),
        (
            args.norm_adv not in ("minibatch", "batch", "off"),
            f"--norm-adv must be minibatch, batch or off, got {args.norm_adv!r}",
        ),
        (args.eval_every < 0, f"--eval-every must be 0 or positive, got {args.eval_every}"),
        (args.eval_levels < 1, f"--eval-levels must be positive, got {args.eval_levels}"),
        (args.eval_episodes < 1, f"--eval-episodes must be positive, got {args.eval_episodes}"),
        (args.eval_envs < 1, f"--eval-envs must be positive, got {args.eval_envs}"),
        (
            args.train_history not in ("episode", "trial"),
            f"--train-history must be trial or episode, got {args.train_history!r}",
        ),
        (
            args.train_history == "episode" and args.agent not in MEMORY_AGENTS,
            f"--train-history episode needs a memory agent (its bank carries the earlier episodes), got --agent {args.agent}",
        ),
        (
            args.test_history not in ("episode", "trial"),
            f"--test-history must be episode or trial, got {args.test_history!r}",
        ),
        (args.threads < 0, f"--threads must be 0 or positive, got {args.threads}"),
        (not 0 <= args.seed < 2**32, f"--seed must be in [0, 2^32), got {args.seed}"),
        (not 0 < args.clip_coef < math.inf, f"--clip-coef must be positive, got {args.clip_coef}"),
        (not 0 <= args.ent_coef < math.inf, f"--ent-coef must be 0 or positive, got {args.ent_coef}"),
        (not 0 <= args.vf_coef < math.inf, f"--vf-coef must be 0 or positive, got {args.vf_coef}"),
        (not args.max_grad_norm > 0, f"--max-grad-norm must be positive, got {args.max_grad_norm}"),
        (args.target_kl is not None and not args.target_kl > 0, f"--target-kl must be positive, got {args.target_kl}"),
        (not args.checkpoint_minutes >= 0, f"--checkpoint-minutes must be 0 or positive, got {args.checkpoint_minutes}"),
        (args.stop_after < 0, f"--stop-after must be 0 or positive, got {args.stop_after}"),
        (args.eval_only and args.checkpoint is None, "--eval-only needs --checkpoint PATH"),
        (args.eval_split not in SPLITS, f"--eval-split must be test or train, got {args.eval_split!r}"),
        (args.eval_split != "test" and not args.eval_only, "--eval-split is read by --eval-only only"),
        (
            args.checkpoint is not None and not args.eval_only,
            "--checkpoint is read by --eval-only only; to continue a training run give --resume PATH",
        ),
        (args.eval_only and args.resume is not None, "--resume continues a training run and --eval-only evaluates: give one"),
        (args.init_from is not None and (args.eval_only or args.resume is not None),
         "--init-from starts a new training run: it goes with neither --eval-only nor --resume"),
    ]
    for flag, path in (("--checkpoint", args.checkpoint), ("--resume", args.resume), ("--init-from", args.init_from)):
        if path is not None and not os.path.isfile(path):
            problems.append((True, f"{flag} {path} {'is not a file' if os.path.exists(path) else 'does not exist'}"))
    for bad, message in problems:
        if bad:
            sys.exit(f"{os.path.basename(__file__)}: error: {message}")


# ---------------------------------------------------------------------------------------------
# Gridworld (Sec. 3.1.1, Appendix A), in numpy after mazelab's conventions: named objects (free
# cells, the agent, the blocks) each drawn in its RGB colour, one pixel per cell before scaling;
# moves are von Neumann steps and an action into the border is not taken.
# ---------------------------------------------------------------------------------------------
FREE_RGB = np.array([255, 255, 255], np.uint8)
AGENT_RGB = np.array([0, 0, 0], np.uint8)
MOVES = np.array([[0, -1], [0, 1], [-1, 0], [1, 0]])  # left, right, up, down as (row, col)
GOAL_REWARD, TRAP_REWARD = 5.0, -1.0
SPLITS = {"train": 0, "test": 1}


def block_palette(num_blocks):
    """X distinct saturated colours, evenly spaced in hue (never black or white)."""
    hues = np.arange(num_blocks) / num_blocks
    return np.array([colorsys.hsv_to_rgb(h, 0.9, 0.9) for h in hues]) * 255


def make_levels(split, num_levels, grid_size, num_blocks, num_colours=None):
    """Level id -> (agent start, block cells, block colours, goal block). Row i of each table is
    drawn from streams seeded by the split alone, in level order, so level i is the same every
    time, whatever the number of levels asked for; train and test use different seeds. Colours:
    X distinct ones of a palette of `num_colours` (default X)."""
    num_colours = num_colours or num_blocks
    streams = [np.random.default_rng([SPLITS[split], k]) for k in range(3)]
    cells = streams[0].random((num_levels, grid_size * grid_size)).argsort(1)[:, : num_blocks + 1]
    rows, cols = np.divmod(cells, grid_size)
    palette = block_palette(num_colours).astype(np.uint8)
    return dict(
        starts=np.stack([rows[:, 0], cols[:, 0]], 1),
        blocks=np.stack([rows[:, 1:], cols[:, 1:]], 2),
        colours=palette[streams[1].random((num_levels, num_colours)).argsort(1)[:, :num_blocks]],
        goals=streams[2].integers(num_blocks, size=num_levels),
    )


def task_levels(args, split, num_levels):
    """The first `num_levels` levels of a split on a run's task: its grid, number of blocks and palette."""
    return make_levels(split, num_levels, args.grid_size, args.num_blocks, args.block_colours)


class GridWorld(gym.Env):
    """One gridworld, stepped the way a mazelab env is. `reset(options={"level": i})` picks the
    level; without it a level of the split is drawn from the env's RNG."""

    metadata = {"render_modes": ["rgb_array"]}

    def __init__(self, levels, grid_size=16, obs_size=16, max_episode_steps=80, render_mode=None):
        self.levels, self.grid_size, self.obs_size = levels, grid_size, obs_size
        self.max_episode_steps, self.render_mode = max_episode_steps, render_mode
        self.observation_space = gym.spaces.Box(0, 255, (obs_size, obs_size, 3), np.uint8)
        self.action_space = gym.spaces.Discrete(len(MOVES))
        self.level = 0

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        if options and "level" in options:
            self.level = int(options["level"])
        else:
            self.level = int(self.np_random.integers(len(self.levels["goals"])))
        self.agent = tuple(self.levels["starts"][self.level])
        self.blocks = [tuple(b) for b in self.levels["blocks"][self.level]]
        self.goal = int(self.levels["goals"][self.level])
        self.steps = 0
        return self.render(), {"level": self.level}

    def step(self, action):
        row, col = self.agent[0] + MOVES[action][0], self.agent[1] + MOVES[action][1]
        if 0 <= row < self.grid_size and 0 <= col < self.grid_size:
            self.agent = (row, col)
        self.steps += 1
        hit = self.blocks.index(self.agent) if self.agent in self.blocks else -1
        reward = 0.0 if hit < 0 else GOAL_REWARD if hit == self.goal else TRAP_REWARD
        terminated = hit >= 0
        truncated = not terminated and self.steps >= self.max_episode_steps
        return self.render(), reward, terminated, truncated, {"hit": hit, "success": hit == self.goal}

    def render(self):
        cells = np.tile(FREE_RGB, (self.grid_size, self.grid_size, 1))
        for (row, col), colour in zip(self.blocks, self.levels["colours"][self.level]):
            cells[row, col] = colour
        cells[self.agent] = AGENT_RGB
        scale = self.obs_size // self.grid_size
        return cells.repeat(scale, 0).repeat(scale, 1)


class BatchedGridWorld:
    """Every env of the rollout in one numpy call: the same rules and pictures as `GridWorld`.
    An episode that ends restarts the same level at once (the trial goes on); `set_levels`
    starts new trials."""

    def __init__(self, levels, num_envs, grid_size=16, obs_size=16, max_episode_steps=80):
        self.levels, self.num_envs, self.grid_size = levels, num_envs, grid_size
        self.scale, self.max_episode_steps = obs_size // grid_size, max_episode_steps
        self.rows = np.arange(num_envs)
        self.level_ids = np.zeros(num_envs, np.int64)
        self.agent = np.zeros((num_envs, 2), np.int64)
        self.steps = np.zeros(num_envs, np.int64)
        self.canvas = np.tile(FREE_RGB, (num_envs, grid_size, grid_size, 1))

    def set_levels(self, level_ids, env_ids=None):
        env_ids = self.rows if env_ids is None else env_ids
        self.level_ids[env_ids] = level_ids
        self.agent[env_ids] = self.levels["starts"][level_ids]
        self.steps[env_ids] = 0
        self.blocks = self.levels["blocks"][self.level_ids]
        self.goals = self.levels["goals"][self.level_ids]
        canvas = np.tile(FREE_RGB, (len(env_ids), self.grid_size, self.grid_size, 1))
        blocks = self.levels["blocks"][level_ids]
        canvas[np.arange(len(env_ids))[:, None], blocks[..., 0], blocks[..., 1]] = self.levels["colours"][level_ids]
        self.canvas[env_ids] = canvas
        return self.observe()

    def observe(self):
        cells = self.canvas.copy()
        cells[self.rows, self.agent[:, 0], self.agent[:, 1]] = AGENT_RGB
        return cells.repeat(self.scale, 1).repeat(self.scale, 2)

    def step(self, actions):
        self.agent = np.clip(self.agent + MOVES[actions], 0, self.grid_size - 1)
        self.steps += 1
        on_block = (self.agent[:, None, :] == self.blocks).all(-1)
        terminated = on_block.any(1)
        hit = np.where(terminated, on_block.argmax(1), -1)
        success = hit == self.goals
        reward = np.where(success, GOAL_REWARD, np.where(terminated, TRAP_REWARD, 0.0))
        truncated = ~terminated & (self.steps >= self.max_episode_steps)
        done = terminated | truncated
        self.agent[done] = self.levels["starts"][self.level_ids[done]]
        self.steps[done] = 0
        return self.observe(), reward, terminated, truncated, {"hit": hit, "success": success}


# ---------------------------------------------------------------------------------------------
# Memory bank (Sec. 2, DESIGN.md Sec. 4): per level a FIFO of the last L steps of failed episodes
# ---------------------------------------------------------------------------------------------
class BankView(NamedTuple):
    """Stored trajectories of a batch of levels as the network reads them: frames (B, M, L, H, W, 3),
    actions, rewards and valid steps (B, M, L), an empty slot with no valid step; for the update
    also `visible` (B, T, M), the slots each step of the trial saw (the bank can grow in a trial)."""

    frames: Any
    actions: Any
    rewards: Any
    valid: Any
    visible: Any = None

    def to(self, device, rows=slice(None)):
        """As tensors on `device`, only the batch rows `rows`."""
        return BankView(*(None if x is None else torch.as_tensor(x)[rows].to(device) for x in self))


class MemoryBank:
    """`banks[level]` holds at most N trajectories of (frames, actions, rewards, valid), each L
    steps long and padded at the front when its episode was shorter. Frames are bounded by
    `ram_bytes`: past it, the bank of the least recently used level is dropped whole."""

    save_chunk_bytes = 2**26  # bytes of frames in each tensor that state_dict writes

    def __init__(self, mem_size, mem_len, obs_shape, ram_bytes, clear_when_full=False):
        self.mem_size, self.mem_len, self.obs_shape, self.ram_bytes = mem_size, mem_len, obs_shape, ram_bytes
        self.clear_when_full = clear_when_full  # Sec. 3.4: the success bank is emptied once full
        self.traj_bytes = mem_len * int(np.prod(obs_shape))
        self.banks = OrderedDict()
        self.num_trajectories = 0
        self.evicted = set()  # levels whose bank the RAM bound dropped, each counted once

    def add(self, level, frames, actions, rewards):
        """Store the last L steps of one episode of `level`; a full bank drops its oldest, or
        everything when `clear_when_full`."""
        frames, actions, rewards = frames[-self.mem_len :], actions[-self.mem_len :], rewards[-self.mem_len :]
        pad = self.mem_len - len(actions)
        trajectory = (
            np.concatenate([np.zeros((pad, *self.obs_shape), np.uint8), frames]),
            np.concatenate([np.zeros(pad, np.int64), actions]),
            np.concatenate([np.zeros(pad, np.float32), rewards]),
            np.arange(self.mem_len) >= pad,
        )
        bank = self.banks.setdefault(level, [])
        if self.clear_when_full and len(bank) == self.mem_size:
            self.num_trajectories -= len(bank)
            bank.clear()
        bank.append(trajectory)
        self.num_trajectories += 1
        if len(bank) > self.mem_size:
            bank.pop(0)
            self.num_trajectories -= 1
        self.banks.move_to_end(level)
        while self.nbytes > self.ram_bytes and len(self.banks) > 1:
            dropped_level, dropped = self.banks.popitem(last=False)
            self.num_trajectories -= len(dropped)
            self.evicted.add(dropped_level)

    @property
    def nbytes(self):
        return self.num_trajectories * self.traj_bytes

    @property
    def evicted_levels(self):
        return len(self.evicted)

    def state_dict(self):
        """Everything a resumed run needs, as tensors: the levels in LRU order, how many
        trajectories each holds, the trajectories oldest first (frames stacked in chunks of about
        64 MiB: torch.save and torch.load pay per tensor, and one tensor a trajectory made 40,000
        full gridworld banks take minutes to read back; actions, rewards, valid steps stacked),
        the evicted levels."""
        trajectories = [trajectory for bank in self.banks.values() for trajectory in bank]
        chunk = max(1, self.save_chunk_bytes // self.traj_bytes)
        stacked = [np.stack([t[i] for t in trajectories]) if trajectories else np.zeros((0, self.mem_len), dtype)
                   for i, dtype in ((1, np.int64), (2, np.float32), (3, bool))]
        return dict(
            levels=torch.tensor(list(self.banks), dtype=torch.long),
            counts=torch.tensor([len(bank) for bank in self.banks.values()], dtype=torch.long),
            frames=[torch.from_numpy(np.stack([t[0] for t in trajectories[i : i + chunk]]))
                    for i in range(0, len(trajectories), chunk)],
            actions=torch.from_numpy(stacked[0]),
            rewards=torch.from_numpy(stacked[1]),
            valid=torch.from_numpy(stacked[2]),
            evicted=torch.tensor(sorted(self.evicted), dtype=torch.long),
        )

    def load_state_dict(self, state):
        # a checkpoint from before the chunks holds one (L, H, W, C) tensor a trajectory
        frames = (row for chunk in state["frames"] for row in chunk.view(-1, self.mem_len, *self.obs_shape).numpy())
        steps = zip(frames, *(state[key].numpy() for key in ("actions", "rewards", "valid")))
        self.banks = OrderedDict(
            (int(level), [next(steps) for _ in range(int(count))])
            for level, count in zip(state["levels"], state["counts"])
        )
        self.num_trajectories = sum(len(bank) for bank in self.banks.values())
        self.evicted = set(state["evicted"].tolist())

    def get(self, levels):
        """The banks of `levels` as a BankView of arrays with N slots."""
        return TrialMemory(self, levels).arrays(self.mem_size)

    def trajectories(self, level):
        """The trajectories stored for `level`, oldest first; reading a level marks it used."""
        if level in self.banks:
            self.banks.move_to_end(level)
        return self.banks.get(level, [])


class TrialMemory:
    """One bank as the envs of a trial see it, step by step: the trajectories it held when the
    trial began, then those stored during the trial (`--mem-update episode`), each visible from
    the step after it was stored until the bank drops it (FIFO, clearing, RAM eviction)."""

    NEVER = 1 << 30

    def __init__(self, bank, levels):
        self.bank, self.levels = bank, levels
        self.slots = [list(bank.trajectories(level)) for level in levels]
        self.added = [[0] * len(slots) for slots in self.slots]
        self.removed = [[self.NEVER] * len(slots) for slots in self.slots]

    def store(self, env, t, frames, actions, rewards):
        """The episode of `env` that ended with the transition of step t enters the bank now and
        is seen from step t + 1; what the bank dropped to make room is gone from step t + 1."""
        level = self.levels[env]
        self.bank.add(level, frames, actions, rewards)
        live = {id(trajectory) for trajectory in self.bank.banks.get(level, ())}
        for j, trajectory in enumerate(self.slots[env]):
            if self.removed[env][j] == self.NEVER and id(trajectory) not in live:
                self.removed[env][j] = t + 1
        self.slots[env].append(self.bank.banks[level][-1])
        self.added[env].append(t + 1)
        self.removed[env].append(self.NEVER)
        return len(self.slots[env]) - 1

    def visible(self, num_slots, steps):
        """(B, len(steps), num_slots) bool: slot j is in the bank at step t."""
        added = np.full((len(self.levels), num_slots), self.NEVER)
        removed = np.full((len(self.levels), num_slots), self.NEVER)
        for env, (a, r) in enumerate(zip(self.added, self.removed)):
            added[env, : len(a)], removed[env, : len(r)] = a, r
        steps = np.asarray(steps)[None, :, None]
        return (added[:, None] <= steps) & (steps < removed[:, None])

    def arrays(self, num_slots):
        """The trajectories as a BankView of arrays with `num_slots` slots."""
        length, shape = self.bank.mem_len, self.bank.obs_shape
        frames = np.zeros((len(self.levels), num_slots, length, *shape), np.uint8)
        actions = np.zeros((len(self.levels), num_slots, length), np.int64)
        rewards = np.zeros((len(self.levels), num_slots, length), np.float32)
        valid = np.zeros((len(self.levels), num_slots, length), bool)
        for env, slots in enumerate(self.slots):
            for j, trajectory in enumerate(slots):
                frames[env, j], actions[env, j], rewards[env, j], valid[env, j] = trajectory
        return BankView(frames, actions, rewards, valid)


def rollout_levels(level_rng, num_train_levels, num_envs):
    """The training levels of one rollout, one per env: distinct, as two envs on one level would
    write its bank twice in one trial (repeats only when there are fewer levels than envs)."""
    return level_rng.choice(num_train_levels, num_envs, replace=num_train_levels < num_envs)


def next_step_inputs(actions, rewards, done, restarts):
    """SNAIL's previous action, previous reward and episode-start flag for the next step, from this
    step's (torch tensors; `done` bool). When an ended episode restarts SNAIL (`restarts`: the memory
    agents' episode history) the next one begins as a trial does, with no previous action or
    reward: the last episode's outcome reaches it through the bank only (at test, an episode's
    first step would otherwise differ with how the last one ended, and a greedy policy with it)."""
    if restarts:
        return actions * ~done, rewards * ~done, done.float()
    return actions, rewards, done.float()


def ended_episodes(terminated, truncated, success):
    """Yield (env, start, end, succeeded) of each episode that ended in a rollout of shape
    (envs, steps); f(tau) = 0 for one that hit a trap or ran its step limit. The episode still
    running when the trial ends is cut off: neither a success nor a failure, never stored."""
    num_envs, num_steps = terminated.shape
    for env in range(num_envs):
        start = 0
        for t in range(num_steps):
            if terminated[env, t] or truncated[env, t]:
                yield env, start, t + 1, bool(success[env, t])
                start = t + 1


def first_episode_success(terminated, truncated, success):
    """Success of each trial's first episode, the one played with no news of the level in the trial
    (what test episode 1 measures; later training episodes weigh a found goal repeated many times);
    a trial whose first episode was cut off by its end counts as a failure."""
    ended = terminated | truncated
    first = ended.argmax(1)
    return float((ended.any(1) & success[np.arange(len(first)), first]).mean())


def goal_after_a_failure(terminated, truncated, success):
    """Of the trials whose first episode failed, the share whose second reached the goal (a cut-off
    second episode counts as a miss): the training twin of the test's "goal after a first failure",
    the memory's work, which episode success hides when a found goal is repeated many times a trial.
    NaN when no first episode failed."""
    ended = terminated | truncated
    rows = np.arange(len(ended))
    first = ended.argmax(1)
    failed = ended.any(1) & ~success[rows, first]
    later = ended & (np.arange(ended.shape[1]) > first[:, None])
    second = later.argmax(1)
    reached = later.any(1) & success[rows, second]
    return float(reached[failed].mean()) if failed.any() else float("nan")


def bank_for(agent_name, succeeded):
    """The bank an episode enters, or None. Sec. 2: failures; Sec. 3.4: memory-sf keeps successes
    in a second bank, memory-sf-mix keeps both in one; snail has no bank."""
    if agent_name in ("snail", "ppo-finetune", "ppo-finetune-attn"):
        return None
    if not succeeded or agent_name == "memory-sf-mix":
        return 0
    return 1 if agent_name == "memory-sf" else None


def store_episode(banks, agent_name, level, succeeded, frames, actions, rewards):
    index = bank_for(agent_name, succeeded)
    if index is not None:
        banks[index].add(level, frames, actions, rewards)


def make_banks(args, obs_shape, ram_bytes):
    """[failures], or for memory-sf [failures, successes], sharing the RAM bound equally."""
    if args.agent != "memory-sf":
        return [MemoryBank(args.mem_size, args.mem_len, obs_shape, ram_bytes)]
    return [MemoryBank(args.mem_size, args.mem_len, obs_shape, ram_bytes / 2),
            MemoryBank(args.mem_size, args.mem_len, obs_shape, ram_bytes / 2, clear_when_full=True)]


# ---------------------------------------------------------------------------------------------
# Agent (Sec. 2.1-2.3): CNN -> Phi, trajectory embedding, memory read, SNAIL, heads
# ---------------------------------------------------------------------------------------------
def distinct_rows(rows):
    """`torch.unique(rows, dim=0, return_inverse=True)` for uint8 rows (n, D): the distinct rows in the same
    (lexicographic) order and the index of each row's. On a CPU numpy sorts each row as one D-byte key, 5x faster
    than torch's row-by-row comparison, which took 16% of a 40-trial minibatch's forward + backward."""
    if rows.device.type != "cpu":
        return torch.unique(rows, dim=0, return_inverse=True)
    keys = rows.contiguous().numpy().view(np.dtype((np.void, rows.shape[1]))).ravel()
    distinct, inverse = np.unique(keys, return_inverse=True)
    return torch.from_numpy(distinct.view(np.uint8).reshape(-1, rows.shape[1])), torch.from_numpy(inverse)


class ValueNorm(nn.Module):
    """--value-norm: running moments of the value targets, so that the critic learns standardised returns while
    every value it gives (rollout, GAE, logs) is in return units. The moments are a debiased exponential average
    over updates: the default task's trial returns climb from ~3 to ~60 as the agent learns, and the critic
    should follow them, not their average over the whole run. Before the first update it is the identity."""

    def __init__(self, decay=0.99):
        super().__init__()
        self.decay = decay
        # sums of decay^k * (mean, mean of squares, 1) over past updates; a buffer, so checkpoints carry it
        self.register_buffer("moments", torch.zeros(3, dtype=torch.float64))

    def update(self, returns):
        returns = returns.double()
        batch = torch.stack([returns.mean(), returns.square().mean(), returns.new_ones(())])
        self.moments.mul_(self.decay).add_(batch, alpha=1 - self.decay)

    def mean_std(self):
        mean, square, weight = self.moments.unbind()
        seen = weight > 0  # no branch on a tensor's value: no host sync on a GPU
        mean = torch.where(seen, mean / weight.clamp_min(1e-12), 0.0)
        var = torch.where(seen, square / weight.clamp_min(1e-12) - mean.square(), 1.0)
        return mean.float(), var.clamp_min(1e-4).sqrt().float()

    def normalize(self, values, mean_std=None):
        """`mean_std`: moments already computed, as an update that holds them fixed passes them."""
        mean, std = mean_std or self.mean_std()
        return (values - mean) / std

    def denormalize(self, values):
        mean, std = self.mean_std()
        return values * std + mean


class Agent(nn.Module):
    """memory: SNAIL over the trial + a reader of the failure bank (the paper's method).
    snail: SNAIL alone. snail-cat: SNAIL over the bank's frames concatenated before the trial
    (Sec. 3.1.4). memory-sf: a second bank of successes with its own reader; memory-sf-mix:
    one bank of both (Sec. 3.4). ppo-finetune: a policy on o_t alone; ppo-finetune-attn: with
    attention over the past steps of the episode (Sec. 3, both fine-tuned at test)."""

    def __init__(self, args, num_actions):
        super().__init__()
        self.name, self.num_actions, self.embed_dim = args.agent, num_actions, args.embed_dim
        self.num_readers = {"memory": 1, "memory-sf-mix": 1, "memory-sf": 2}.get(args.agent, 0)
        self.use_memory = self.num_readers > 0
        self.prefix_len = args.mem_size * args.mem_len if args.agent == "snail-cat" else 0
        self.memoryless = args.agent in ("ppo-finetune", "ppo-finetune-attn")
        embed_dim = args.embed_dim
        self.cnn = ImpalaCNN(args.obs_size, channels=args.cnn_channels, out_dim=args.cnn_out, blocks=args.cnn_blocks)
        # v'_o = MLP(CNN(o_t)): the query of the memory read and the observation input of SNAIL
        self.obs_embed = nn.Sequential(layer_init(nn.Linear(args.cnn_out, embed_dim)), nn.ReLU())
        # SNAIL's input per step: v'_o, previous action, previous reward, episode-start flag
        # (snail-cat: and a flag for the bank's steps)
        trial_in = embed_dim + num_actions + 2 + (1 if self.prefix_len else 0)
        if not self.memoryless:
            size = args.snail_filters
            self.snail = SNAIL(trial_in, embed_dim, args.trial_len + self.prefix_len, size, size, size, args.snail_blocks)
        if args.agent == "ppo-finetune-attn":
            self.episode_attention = CausalAttentionBlock(embed_dim, 32, 32)
            self.episode_out = nn.Sequential(layer_init(nn.Linear(self.episode_attention.out_dim, embed_dim)), nn.ReLU())
        self.trial_mlp = nn.Sequential(layer_init(nn.Linear(embed_dim, embed_dim)), nn.ReLU())
        # per bank: Phi(o, a, r) of a stored step, the trajectory embedding (Sec. 2.1), the read (Sec. 2.2)
        self.step_embed = nn.ModuleList(
            nn.Sequential(layer_init(nn.Linear(args.cnn_out + num_actions + 1, embed_dim)), nn.ReLU(),
                          layer_init(nn.Linear(embed_dim, embed_dim)))
            for _ in range(self.num_readers)
        )
        self.traj_embed = nn.ModuleList(
            TrajectoryEmbedding(embed_dim, args.num_heads, num_layers=2, max_len=args.mem_len)
            for _ in range(self.num_readers)
        )
        self.memory_read = nn.ModuleList(MemoryReader(embed_dim, args.num_heads, args.null_slot) for _ in range(self.num_readers))
        # pi: MLP[MLP(v_o) (+) m_o] (Sec. 2.3); memory-sf concatenates both reads (Fig. C.2)
        self.trunk = nn.Sequential(layer_init(nn.Linear((1 + self.num_readers) * embed_dim, 256)), nn.ReLU())
        self.actor = layer_init(nn.Linear(256, num_actions), std=0.01)
        self.trial_len, self.time_aware = args.trial_len, args.time_aware_value
        self.episode_history = args.train_history == "episode"
        self.critic = layer_init(nn.Linear(256 + self.time_aware, 1), std=1.0)
        self.value_norm = ValueNorm() if args.value_norm else None

    def encode(self, *frame_sets):
        """CNN(o) of each set of frames (..., H, W, 3), run once per distinct frame across the sets: a gridworld
        trial comes back to the same cells, and its bank holds frames of its own failed episodes, so most of a
        minibatch's frames repeat (README, "Each distinct frame once"). A repeated frame's gradient sums its uses."""
        shape = frame_sets[0].shape[-3:]
        distinct, inverse = distinct_rows(torch.cat([f.reshape(-1, shape.numel()) for f in frame_sets]))
        features = self.cnn(distinct.view(-1, *shape))[inverse].split([f.shape[:-3].numel() for f in frame_sets])
        return [x.reshape(*f.shape[:-3], x.shape[-1]) for x, f in zip(features, frame_sets)]

    def embed_memory(self, bank, reader=0, features=None):
        """Sec. 2.1: v_tau for every slot of a BankView -> (B, N, E), and the slots that hold a
        trajectory. Only filled slots go through the CNN (or come with their `features`) and the Transformer."""
        frames, actions, rewards, valid = bank.frames, bank.actions, bank.rewards, bank.valid
        slots = valid.any(-1)
        memory = torch.zeros(*slots.shape, self.embed_dim, device=frames.device)
        if slots.any():
            features = self.encode(frames[slots])[0] if features is None else features
            steps = torch.cat(
                [features, F.one_hot(actions[slots], self.num_actions).float(), rewards[slots, :, None]], -1
            )
            memory[slots] = self.traj_embed[reader](self.step_embed[reader](steps), valid[slots])
        return memory, slots

    def read_banks(self, banks, features=None):
        features = features or [None] * self.num_readers
        return [self.embed_memory(bank, i, f) for i, (bank, f) in enumerate(zip(banks[: self.num_readers], features))]

    def trial_input(self, obs_embed, prev_actions, prev_rewards, episode_starts):
        onehot = F.one_hot(prev_actions, self.num_actions).float()
        parts = [obs_embed, onehot, prev_rewards[..., None], episode_starts[..., None].float()]
        if self.prefix_len:
            parts.append(torch.zeros_like(prev_rewards)[..., None])
        return torch.cat(parts, -1)

    def memory_prefix(self, bank):
        """snail-cat: the bank's steps as SNAIL inputs (B, N * L, in), each step with its own
        action and reward; empty steps are all zero."""
        frames, actions, rewards, valid = bank.frames, bank.actions, bank.rewards, bank.valid
        first = valid & ~F.pad(valid, (1, 0))[..., :-1]  # where a stored trajectory starts
        steps = torch.cat([self.obs_embed(self.cnn(frames)), F.one_hot(actions, self.num_actions).float(),
                           rewards[..., None], first[..., None].float(), torch.ones_like(rewards)[..., None]], -1)
        return (steps * valid[..., None]).flatten(1, 2)

    def begin_trial(self, banks, batch_size, max_len):
        """What a trial needs before its first step: the bank reads (computed once, Sec. 2.1),
        the SNAIL cache, and for snail-cat the cache filled with the bank's steps."""
        device = self.actor.weight.device
        if self.name == "ppo-finetune":
            return None, []
        if self.memoryless:  # ppo-finetune-attn keeps the episode's keys, values and ids
            kv = self.episode_attention.init_cache(batch_size, max_len, device)
            return dict(kv=kv, episode=torch.zeros(batch_size, max_len, dtype=torch.long, device=device)), []
        memories = self.read_banks(banks)
        cache = self.snail.init_cache(batch_size, self.prefix_len + max_len, device)
        if self.prefix_len:
            prefix = self.memory_prefix(banks[0])
            for t in range(self.prefix_len):
                self.snail.step(prefix[:, t], cache, t)
        return cache, memories

    def heads(self, trial_features, obs_embed, memories, steps):
        """Logits and values; `steps` is the position in the trial: the rollout's t, or (T,) for whole trials."""
        hidden = [self.trial_mlp(trial_features)]
        query = obs_embed if obs_embed.dim() == 3 else obs_embed[:, None]
        for read, (memory, slots) in zip(self.memory_read, memories):
            hidden.append(read(query, memory, slots).reshape(obs_embed.shape))
        hidden = self.trunk(torch.cat(hidden, -1))
        if self.time_aware:
            place = torch.as_tensor(steps, dtype=hidden.dtype, device=hidden.device).expand(hidden.shape[:-1])
            values = self.critic(torch.cat([hidden, place[..., None] / self.trial_len], -1)).squeeze(-1)
        else:
            values = self.critic(hidden).squeeze(-1)
        return self.actor(hidden), values if self.value_norm is None else self.value_norm.denormalize(values)

    def step(self, frames, prev_actions, prev_rewards, episode_starts, trial_state, t):
        """One step of every env, position t of its trial: logits and value (rollout, eval)."""
        cache, memories = trial_state
        obs_embed = self.obs_embed(self.cnn(frames))
        if self.name == "ppo-finetune":
            return self.heads(obs_embed, obs_embed, memories, t)
        if self.name == "ppo-finetune-attn":
            episode = (cache["episode"][:, t - 1] if t else 0) + episode_starts.long()
            cache["episode"][:, t] = episode
            same_episode = cache["episode"][:, : t + 1] == episode[:, None]
            read = self.episode_attention.step(obs_embed, cache["kv"], t, same_episode)
            return self.heads(self.episode_out(read), obs_embed, memories, t)
        x = self.trial_input(obs_embed, prev_actions, prev_rewards, episode_starts)
        return self.heads(self.snail.step(x, cache, self.prefix_len + t), obs_embed, memories, t)

    def get_action_and_value(self, frames, prev_actions, prev_rewards, episode_starts, banks, actions=None):
        """Whole trials (B, T, ...) at once, as the PPO update sees them; each bank a BankView with `visible`."""
        read = banks[: self.num_readers]
        # one CNN pass over the trials' frames and their banks' filled slots, which hold frames of the same trials
        obs_features, *bank_features = self.encode(frames, *(bank.frames[bank.valid.any(-1)] for bank in read))
        obs_embed = self.obs_embed(obs_features)
        if self.name == "ppo-finetune":
            trial_features = obs_embed
        elif self.name == "ppo-finetune-attn":
            episode = episode_starts.long().cumsum(1)
            same_episode = episode[:, :, None] == episode[:, None, :]
            trial_features = self.episode_out(self.episode_attention(obs_embed, same_episode))
        else:
            x = self.trial_input(obs_embed, prev_actions, prev_rewards, episode_starts)
            if self.prefix_len:
                x = torch.cat([self.memory_prefix(banks[0]), x], 1)
            # --train-history episode: SNAIL restarts at each episode (the rollout calls `restart`)
            trial_features = self.snail(x, episode_starts if self.episode_history else None)[:, self.prefix_len :]
        # which slots each step saw, as the bank may grow during the trial
        memories = [(memory, filled[:, None] & bank.visible)
                    for (memory, filled), bank in zip(self.read_banks(read, bank_features), read)]
        logits, values = self.heads(trial_features, obs_embed, memories, torch.arange(frames.shape[1]))
        dist = Categorical(logits=logits)
        if actions is None:
            actions = dist.sample()
        return actions, dist.log_prob(actions), dist.entropy(), values


# ---------------------------------------------------------------------------------------------
# PPO (Appendix A) over whole sequences: the training trials, and at test ppo-finetune's episodes
# ---------------------------------------------------------------------------------------------
def compute_gae(rewards, values, gamma, gae_lambda, ends=None, last_values=None):
    """Advantages and returns of (B, T) sequences whose last step ends them, or, given `last_values` (B,),
    whose return goes on from that value; `ends` (B, T) bool marks more steps after which the return
    stops (episode ends, with --episodic-gae)."""
    with torch.no_grad():
        advantages = torch.zeros_like(rewards)
        last_gae = torch.zeros_like(rewards[:, 0])
        go_on = torch.ones_like(rewards) if ends is None else 1.0 - ends.to(rewards.dtype)
        after_last = torch.zeros_like(last_gae) if last_values is None else last_values
        for t in reversed(range(rewards.shape[1])):
            next_value = values[:, t + 1] * go_on[:, t] if t + 1 < rewards.shape[1] else after_last
            delta = rewards[:, t] + gamma * next_value - values[:, t]
            last_gae = delta + gamma * gae_lambda * go_on[:, t] * last_gae
            advantages[:, t] = last_gae
    return advantages, advantages + values


def ppo_update(agent, optimizer, args, batch, device):
    """`update_epochs` epochs of clipped PPO over the sequences in `batch` (tensors (B, T, ...)),
    `trials_per_minibatch` whole sequences a minibatch. Returns the losses of the last one."""
    clipfracs = []
    # --value-norm: the value loss and its clip in standard deviations of the returns, as the critic learns them
    scale = lambda values: values  # noqa: E731
    if agent.value_norm is not None:
        agent.value_norm.update(batch["returns"].to(device))
        # fixed for the whole update: computed once
        scale = functools.partial(agent.value_norm.normalize, mean_std=agent.value_norm.mean_std())
    if args.norm_adv == "batch":  # with sparse rewards many minibatches hold no success to normalise by
        advantages = batch["advantages"]
        batch = dict(batch, advantages=(advantages - advantages.mean()) / (advantages.std() + 1e-8))
    for epoch in range(args.update_epochs):
        for idx in torch.randperm(len(batch["actions"])).split(args.trials_per_minibatch):
            _, newlogprob, entropy, newvalue = agent.get_action_and_value(
                batch["frames"][idx].to(device), batch["prev_actions"][idx].to(device),
                batch["prev_rewards"][idx].to(device), batch["starts"][idx].to(device),
                [bank.to(device, idx) for bank in batch["banks"]], batch["actions"][idx].to(device),
            )
            mb_logprobs, mb_advantages = batch["logprobs"][idx].to(device), batch["advantages"][idx].to(device)
            mb_returns, mb_values = scale(batch["returns"][idx].to(device)), scale(batch["values"][idx].to(device))
            newvalue = scale(newvalue)
            logratio = newlogprob - mb_logprobs
            ratio = logratio.exp()
            with torch.no_grad():
                old_approx_kl = (-logratio).mean()
                approx_kl = ((ratio - 1) - logratio).mean()
                clipfracs.append(((ratio - 1.0).abs() > args.clip_coef).float().mean().item())
            if args.norm_adv == "minibatch" and mb_advantages.numel() > 1:
                mb_advantages = (mb_advantages - mb_advantages.mean()) / (mb_advantages.std() + 1e-8)

            pg_loss = torch.max(
                -mb_advantages * ratio, -mb_advantages * torch.clamp(ratio, 1 - args.clip_coef, 1 + args.clip_coef)
            ).mean()
            if args.clip_vloss:
                v_clipped = mb_values + torch.clamp(newvalue - mb_values, -args.clip_coef, args.clip_coef)
                v_loss = 0.5 * torch.max((newvalue - mb_returns) ** 2, (v_clipped - mb_returns) ** 2).mean()
            else:
                v_loss = 0.5 * ((newvalue - mb_returns) ** 2).mean()
            entropy_loss = entropy.mean()
            loss = pg_loss - args.ent_coef * entropy_loss + v_loss * args.vf_coef

            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(agent.parameters(), args.max_grad_norm)
            optimizer.step()
        if args.target_kl is not None and approx_kl > args.target_kl:
            break
    return dict(value_loss=v_loss.item(), policy_loss=pg_loss.item(), entropy=entropy_loss.item(),
                old_approx_kl=old_approx_kl.item(), approx_kl=approx_kl.item(), clipfrac=float(np.mean(clipfracs)))


# ---------------------------------------------------------------------------------------------
# Evaluation (Sec. 3.1.2): held-out levels, empty bank, 5 greedy episodes (--eval-sample: sampled), failures stored as
# they happen; success of episode k, mean return and the error modes of Fig. 3c/d
# ---------------------------------------------------------------------------------------------
ERROR_MODES = ("success", "fail_hit_end_diff", "fail_hit_end_same", "no_hit")


def error_modes(success, hits):
    """Per level over its episodes (Fig. 3c/d): success in any episode; else no block hit in any;
    else the same trap hit in every episode; else different end states."""
    solved = success.any(1)
    no_hit = ~solved & (hits < 0).all(1)
    end_same = ~solved & ~no_hit & (hits == hits[:, :1]).all(1)
    end_diff = ~solved & ~no_hit & ~end_same
    return dict(zip(ERROR_MODES, (solved, end_diff, end_same, no_hit)))


def bayes_optimal(num_blocks, episodes):
    """An agent that walks straight to an untried block each episode: min(k, X) / X."""
    return [min(k, num_blocks) / num_blocks for k in range(1, episodes + 1)]


def test_actions(logits, generator=None):
    """The most likely action, or with a generator (--eval-sample) one drawn from the policy."""
    if generator is None:
        return logits.argmax(-1)
    return torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(-1)


def test_generator(args, device):
    """Each evaluation draws the same stream, apart from training's RNG, so that it does not move
    a run's training (or a resumed run's)."""
    return torch.Generator(device=device).manual_seed(args.seed) if args.eval_sample else None


@torch.no_grad()
def evaluate(agent, args, test_levels, level_ids, device, video_path=None, banks=None):
    """Run `eval_episodes` greedy (or --eval-sample: sampled) episodes on each level; returns per-level arrays.
    `banks`: the levels' banks to start from and add to (a level that comes back with what an earlier visit
    stored, as in training); None: the test's, empty for every level."""
    if agent.memoryless:
        return evaluate_finetune(agent, args, test_levels, level_ids, device, video_path)
    episodes, limit = args.eval_episodes, args.trial_len
    success = np.zeros((len(level_ids), episodes), bool)
    hits = np.full((len(level_ids), episodes), -1)
    returns = np.zeros(len(level_ids))
    video_frames, generator = [], test_generator(args, device)
    # --test-history episode: SNAIL starts anew with each episode, earlier ones reach the policy through the bank only
    restarts = agent.use_memory and args.test_history == "episode"
    for chunk_start in range(0, len(level_ids), args.eval_envs):
        chunk = level_ids[chunk_start : chunk_start + args.eval_envs]
        rows = np.arange(len(chunk))
        envs = BatchedGridWorld(test_levels, len(chunk), args.grid_size, args.obs_size, limit)
        frames = envs.set_levels(chunk)
        level_banks = make_banks(args, frames.shape[1:], float("inf")) if banks is None else banks
        cache, memories = agent.begin_trial(bank_tensors(level_banks, chunk, device), len(chunk), episodes * limit)
        episode = np.zeros(len(chunk), np.int64)
        # the current episode of every env, kept to store it in the bank if it fails
        ep_frames = np.zeros((len(chunk), limit, *frames.shape[1:]), np.uint8)
        ep_actions = np.zeros((len(chunk), limit), np.int64)
        ep_rewards = np.zeros((len(chunk), limit), np.float32)
        ep_len = np.zeros(len(chunk), np.int64)
        prev_actions = torch.zeros(len(chunk), dtype=torch.long, device=device)
        prev_rewards = torch.zeros(len(chunk), device=device)
        starts = torch.ones(len(chunk), device=device)
        for t in range(episodes * limit):
            obs = torch.as_tensor(frames, device=device)
            logits, _ = agent.step(obs, prev_actions, prev_rewards, starts, (cache, memories), t)
            actions = test_actions(logits, generator).cpu().numpy()
            if video_path is not None and chunk_start == 0:
                video_frames.append(video_frame(frames[:3], level_banks[0].get(chunk[:3])))
            ep_frames[rows, ep_len], ep_actions[rows, ep_len] = frames, actions
            frames, rewards, terminated, truncated, info = envs.step(actions)
            ep_rewards[rows, ep_len] = rewards
            ep_len += 1
            running = episode < episodes
            returns[chunk_start + rows[running]] += rewards[running]
            ended = np.flatnonzero((terminated | truncated) & running)
            for i in ended:
                success[chunk_start + i, episode[i]] = info["success"][i]
                hits[chunk_start + i, episode[i]] = info["hit"][i]
                if agent.use_memory:  # at test an episode enters the bank as soon as it ends
                    n = ep_len[i]
                    store_episode(level_banks, args.agent, chunk[i], info["success"][i], ep_frames[i, :n],
                                  ep_actions[i, :n], ep_rewards[i, :n])
                episode[i] += 1
            if agent.use_memory and len(ended):  # only the levels whose episode ended are read anew
                rows_ended = torch.as_tensor(ended, device=device)
                for (memory, filled), (fresh, fresh_filled) in zip(memories, agent.read_banks(
                        bank_tensors(level_banks, chunk[ended], device))):
                    memory[rows_ended], filled[rows_ended] = fresh, fresh_filled
                if restarts:
                    agent.snail.restart(cache, rows_ended, t + 1)
            ep_len[terminated | truncated] = 0
            if (episode >= episodes).all():
                break
            prev_actions, prev_rewards, starts = next_step_inputs(
                torch.as_tensor(actions, device=device), torch.as_tensor(rewards, dtype=torch.float32, device=device),
                torch.as_tensor(terminated | truncated, device=device), restarts)
    if video_path is not None:
        write_video(video_path, video_frames)
    return dict(success=success, hits=hits, returns=returns)


def evaluate_finetune(agent, args, test_levels, level_ids, device, video_path=None):
    """PPO-finetune (Sec. 3): on each held-out level, starting from the trained weights, greedy
    episodes, each followed by PPO on its own steps (advantages not normalised); the trained weights
    come back after every level and at the end."""
    trained = copy.deepcopy(agent.state_dict())
    # an update sees one episode: normalised, its advantages would lose their sign, which is all it has to say
    args = copy.copy(args)
    args.norm_adv = "off"
    episodes, limit = args.eval_episodes, args.trial_len
    success = np.zeros((len(level_ids), episodes), bool)
    hits = np.full((len(level_ids), episodes), -1)
    returns = np.zeros(len(level_ids))
    env = GridWorld(test_levels, args.grid_size, args.obs_size, limit)
    video_frames, no_bank = [], MemoryBank(1, 1, env.observation_space.shape, 0).get([0])
    generator = test_generator(args, device)
    for n, level in enumerate(level_ids):
        agent.load_state_dict(trained)
        optimizer = optim.Adam(agent.parameters(), lr=args.learning_rate, eps=1e-5, fused=True)
        for k in range(episodes):
            obs, _ = env.reset(options={"level": int(level)})
            steps = dict(frames=[], actions=[], logprobs=[], values=[], rewards=[])
            with torch.no_grad():
                trial_state = agent.begin_trial([], 1, limit)
                zero = torch.zeros(1, device=device)
                for t in range(limit):
                    if video_path is not None and n < 3:  # no bank: an empty panel beside the view
                        video_frames.append(video_frame(obs[None], no_bank))
                    frame = torch.as_tensor(obs, device=device)[None]
                    logits, value = agent.step(frame, zero.long(), zero, zero + (t == 0), trial_state, t)
                    action = test_actions(logits, generator)
                    obs, reward, terminated, truncated, info = env.step(int(action))
                    for key, x in zip(steps, (frame[0], action[0], torch.log_softmax(logits, -1)[0, action[0]],
                                              value[0], torch.tensor(reward, dtype=torch.float32))):
                        steps[key].append(x.cpu())
                    if terminated or truncated:
                        break
            success[n, k], hits[n, k] = info["success"], info["hit"]
            returns[n] += sum(steps["rewards"]).item()
            episode = {key: torch.stack(x)[None] for key, x in steps.items()}
            # the critic learned trial returns: after a block the trial goes on from the level's start, whose
            # value is this episode's first (cut there instead, a success's advantages fall below zero)
            after = episode["values"][:, 0] if terminated else torch.zeros(1)
            advantages, episode_returns = compute_gae(episode["rewards"], episode["values"], args.gamma,
                                                      args.gae_lambda, last_values=after)
            num_steps = episode["actions"].shape[1]
            batch = dict(frames=episode["frames"], prev_actions=torch.zeros(1, num_steps, dtype=torch.long),
                         prev_rewards=torch.zeros(1, num_steps), starts=F.pad(torch.ones(1, 1), (0, num_steps - 1)),
                         banks=[], actions=episode["actions"], logprobs=episode["logprobs"], advantages=advantages,
                         returns=episode_returns, values=episode["values"])
            with torch.enable_grad():
                ppo_update(agent, optimizer, args, batch, device)
    agent.load_state_dict(trained)
    if video_path is not None:
        write_video(video_path, video_frames)
    return dict(success=success, hits=hits, returns=returns)


def bank_tensors(banks, levels, device):
    return [bank.get(levels).to(device) for bank in banks]


def failures_seen(view):
    """How many stored trajectories each step of a trial read, (B, T), from a BankView with `visible`. The reader's
    query and key projections learn only from steps that read two or more: with one, softmax gives it all the weight."""
    return (view.visible & view.valid.any(-1)[:, None, :]).sum(-1)


def summarize(result, num_blocks):
    per_episode = result["success"].mean(0)
    summary = {f"success_ep{k + 1}": float(s) for k, s in enumerate(per_episode)}
    summary["mean_success"] = float(per_episode.mean())
    summary["mean_return"] = float(result["returns"].mean())
    summary.update({mode: float(v.mean()) for mode, v in error_modes(result["success"], result["hits"]).items()})
    summary["bayes_optimal_mean"] = float(np.mean(bayes_optimal(num_blocks, len(per_episode))))
    # the paper's claim in one number: of the levels whose first episode missed the goal, the share whose second
    # reached it (Bayes-optimal 1 / (X - 1); a memoryless greedy policy walks the same path again: 0)
    missed = ~result["success"][:, 0]
    second = result["success"][missed, 1] if result["success"].shape[1] > 1 else []
    summary["goal_after_first_failure"] = float(second.mean()) if len(second) else float("nan")
    # with three blocks, the read of two failures: of the levels whose first two episodes hit two different traps,
    # the share whose third reached the goal (Bayes-optimal 1; avoiding only one of the two traps, 1/2 at best)
    success, hits = result["success"], result["hits"]
    if num_blocks > 2 and success.shape[1] > 2:
        two = ~success[:, :2].any(1) & (hits[:, :2] >= 0).all(1) & (hits[:, 0] != hits[:, 1])
        summary["goal_after_two_failures"] = float(success[two, 2].mean()) if two.any() else float("nan")
    return summary


def print_table(summary, num_blocks, title):
    episodes = sum(key.startswith("success_ep") for key in summary)
    optimal = bayes_optimal(num_blocks, episodes)
    print(f"\n{title}")
    print("episode        " + " ".join(f"{k:>6}" for k in range(1, episodes + 1)) + "   mean")
    print("success        " + " ".join(f"{summary[f'success_ep{k}']:6.3f}" for k in range(1, episodes + 1)), end="")
    print(f" {summary['mean_success']:6.3f}")
    print("bayes-optimal  " + " ".join(f"{p:6.3f}" for p in optimal) + f" {np.mean(optimal):6.3f}")
    print(f"mean return {summary['mean_return']:.3f} | " + " | ".join(f"{m} {summary[m]:.3f}" for m in ERROR_MODES)
          + f" | goal after a first failure {summary['goal_after_first_failure']:.3f}"
          + (f" | after two {summary['goal_after_two_failures']:.3f}" if "goal_after_two_failures" in summary else ""))


def video_frame(frames, bank):
    """The agent's view (left, enlarged) beside the frames in its bank (one row per stored
    trajectory, up to 4, their last 6 steps left to right; padding grey), for a few test levels
    stacked vertically. `bank` is what `MemoryBank.get` returns for those levels."""
    tile = 48

    def resize(images, side):  # nearest neighbour, any size
        index = np.arange(side) * images.shape[-2] // side
        return images[..., index, :, :][..., index, :]

    stored = np.where(bank.valid[..., None, None, None], bank.frames, 128)[:, :4, -6:]
    rows = []
    for view, trajectories in zip(frames, resize(stored, tile)):
        grid = np.full((4 * tile, 6 * tile, 3), 128, np.uint8)
        k, length = trajectories.shape[:2]
        grid[: k * tile, : length * tile] = trajectories.transpose(0, 2, 1, 3, 4).reshape(k * tile, length * tile, 3)
        rows.append(np.concatenate([resize(view, 4 * tile), np.full((4 * tile, 4, 3), 255, np.uint8), grid], 1))
    return np.concatenate(rows, 0)


def write_video(path, frames):
    import imageio.v2 as imageio

    os.makedirs(os.path.dirname(path), exist_ok=True)
    imageio.mimsave(path, frames, duration=0.1)


def log_eval(writer, summary, global_step):
    for key, value in summary.items():
        writer.add_scalar(f"eval/{key}", value, global_step)


def wandb_mode():
    """Online with a W&B login, else offline with a message, never an interactive prompt."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    try:
        if netrc.netrc().authenticators("api.wandb.ai"):
            return "online"
    except (FileNotFoundError, netrc.NetrcParseError):
        pass
    print("W&B: no login found (run `wandb login` or set WANDB_API_KEY); logging offline, `wandb sync` uploads later")
    return "offline"


# ---------------------------------------------------------------------------------------------
# Checkpoints: written whole or not at all, read back with one line for any file that cannot be
# used, and holding everything a stopped run needs to go on as if it had never stopped
# ---------------------------------------------------------------------------------------------
CHECKPOINT_SCRIPT, CHECKPOINT_FORMAT = "grid_failmem.py", 1  # the maker's mark, and the layout of the contents
ARCHITECTURE = ("agent", "grid_size", "num_blocks", "block_colours", "obs_size", "trial_len", "mem_size", "mem_len",
                "embed_dim", "num_heads", "cnn_channels", "cnn_blocks", "cnn_out", "snail_blocks", "snail_filters",
                "time_aware_value", "value_norm", "null_slot")
# flags a resumed run takes from its own command line: speed, logging, when to checkpoint; every other flag
# must be the checkpoint's, as it changes what the run computes
RESUME_FREE = ("threads", "cuda", "track", "wandb_project_name", "wandb_entity", "capture_video", "eval_envs",
               "eval_only", "checkpoint", "resume", "checkpoint_minutes", "stop_after", "batch_size", "num_iterations")


def save_checkpoint(path, state):
    """torch.save into a file beside `path`, flushed to disk, then renamed over it: a kill at any
    moment leaves the previous checkpoint or the new one, never a part of one."""
    partial = f"{path}.partial"
    with open(partial, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(partial, path)
    directory = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
    try:
        os.fsync(directory)  # the rename itself reaches the disk
    finally:
        os.close(directory)


# what runs did before these flags existed, for checkpoints older than them (their defaults have changed since)
PREDATED_FLAGS = dict(cnn_channels=(16, 32, 32), cnn_blocks=2, cnn_out=256, snail_blocks=2, snail_filters=32,
                      mem_update="trial", train_history="trial", test_history="trial", time_aware_value=False,
                      value_norm=False, null_slot=False)


def checkpoint_args(checkpoint):
    """The flags a checkpoint was made with, as Args (fields it predates: PREDATED_FLAGS, or their defaults)."""
    names = {field.name for field in fields(Args)}
    return Args(**{key: value for key, value in {**PREDATED_FLAGS, **checkpoint["args"]}.items() if key in names})


def first_misfit(error):
    """The line of load_state_dict's error that names the first weight that does not fit."""
    lines = str(error).strip().splitlines()
    return " ".join(lines[1:2] or lines[:1]).strip()


def read_checkpoint(path, flag="--checkpoint"):
    """The checkpoint at `path`, checked before any work: whole, written by this script, its weights
    fitting the agent its flags describe, and for --resume holding the training state of a run
    with updates left. Anything else stops the script with one line naming the file."""

    def fail(problem):
        sys.exit(f"{os.path.basename(__file__)}: error: {flag} {path} {problem}")

    if os.path.getsize(path) == 0:
        fail("is empty (0 bytes)")
    try:  # weights_only: a file that is not ours is refused, never run as a pickle
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a truncated zip, random bytes, a foreign pickle: many types, one meaning
        fail(f"cannot be read: damaged (cut short?) or not a torch checkpoint ({type(error).__name__})")
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("args"), dict) or "model" not in checkpoint:
        fail(f"is not a checkpoint of {CHECKPOINT_SCRIPT}: it holds no model and flags (a bare state dict?)")
    if checkpoint.get("script", CHECKPOINT_SCRIPT) != CHECKPOINT_SCRIPT:  # those before the mark were ours
        fail(f"was written by {checkpoint['script']}, not by {CHECKPOINT_SCRIPT}")
    if checkpoint.get("format", 0) > CHECKPOINT_FORMAT:
        fail("was written by a newer version of this script")
    saved = checkpoint_args(checkpoint)
    if saved.agent not in AGENTS:
        fail(f"holds an agent this script does not have: {saved.agent}")
    try:
        Agent(saved, len(MOVES)).load_state_dict(checkpoint["model"])
    except Exception as error:  # missing or unexpected weights, wrong shapes: the first one named
        fail(f"holds weights that do not fit the {saved.agent} agent its flags describe ({first_misfit(error)})")
    if flag == "--resume":
        if not {"optimizer", "iteration", "global_step", "rng", "banks", "run_name"} <= checkpoint.keys():
            fail("holds the weights only, not the training state --resume needs (--eval-only --checkpoint reads it)")
        if len(checkpoint["banks"]) != (2 if saved.agent == "memory-sf" else 1):
            fail(f"holds {len(checkpoint['banks'])} banks, its {saved.agent} agent has another number")
        num_iterations = max(1, saved.total_timesteps // (saved.num_envs * saved.trial_len))
        if checkpoint["iteration"] >= num_iterations:
            fail(f"is of a run that has finished (update {checkpoint['iteration']}/{num_iterations}): nothing to resume")
    return checkpoint


def resumed_args(args, checkpoint):
    """The flags of a resumed run: the checkpoint's, but for RESUME_FREE, which come from the
    command line. A flag given that would change the run stops the script with one line."""
    saved = checkpoint_args(checkpoint)
    given = tyro.cli(Args, default=saved)  # the command line again, with the checkpoint's flags as defaults
    for name in (field.name for field in fields(Args)):
        if name in RESUME_FREE:
            setattr(saved, name, getattr(args, name))
        elif getattr(given, name) != getattr(saved, name):
            flag = f"--{name.replace('_', '-')}"
            sys.exit(f"{os.path.basename(__file__)}: error: --resume {args.resume} was made with {flag} "
                     f"{getattr(saved, name)}, not {getattr(given, name)}; a resumed run keeps its flags")
    return saved


def training_state(args, run_name, agent, optimizer, banks, level_rng, iteration, global_step, wandb_id):
    """Everything --resume needs to go on bit for bit, as tensors and plain values. The envs hold
    nothing across updates: every rollout starts each of them afresh with `set_levels`."""
    numpy_state = np.random.get_state()
    rng = dict(python=random.getstate(), torch=torch.get_rng_state(), level=level_rng.bit_generator.state,
               numpy=(numpy_state[0], torch.from_numpy(numpy_state[1].astype(np.int64)), *numpy_state[2:]),
               cuda=torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [])
    return dict(script=CHECKPOINT_SCRIPT, format=CHECKPOINT_FORMAT, args=vars(args), run_name=run_name,
                model=agent.state_dict(), optimizer=optimizer.state_dict(), iteration=iteration,
                global_step=global_step, rng=rng, banks=[bank.state_dict() for bank in banks], wandb_id=wandb_id)


def restore_training_state(checkpoint, agent, optimizer, banks, level_rng):
    """Put a run back as `training_state` found it; returns the next update and the global step."""
    agent.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    for bank, state in zip(banks, checkpoint["banks"]):
        bank.load_state_dict(state)
    rng = checkpoint["rng"]
    random.setstate(rng["python"])
    name, keys, *rest = rng["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    level_rng.bit_generator.state = rng["level"]
    return checkpoint["iteration"] + 1, checkpoint["global_step"]


class StopSignals:
    """SIGINT (Ctrl-C) and SIGTERM, without a traceback. While training the first lets the update in
    progress finish, and the loop then checkpoints and exits; a second, or any one when not
    `graceful` (--eval-only), stops at once with one line saying what is kept. Forked env workers
    inherit the handler and leave the signal to the main process."""

    def __init__(self, graceful, kept):
        self.graceful, self.kept, self.received, self.pid = graceful, kept, None, os.getpid()
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self.handle)

    def handle(self, signum, frame):
        if os.getpid() != self.pid:
            return
        name = signal.Signals(signum).name
        if self.graceful and self.received is None:
            self.received = signum
            # os.write, not print: the signal may have come in the middle of a print
            notice = f"\n{name}: stopping after the update in progress, with a checkpoint ({name} again: at once)\n"
            os.write(1, notice.encode())
            return
        raise SystemExit(f"{os.path.basename(__file__)}: stopped by {name}; {self.kept}")


class Checkpoints:
    """When a training run writes its checkpoint: every `minutes` of wall time, when an update asks
    (evaluations, the end), and before it stops early (--stop-after, SIGINT, SIGTERM)."""

    def __init__(self, path, minutes, stop_after, kept):
        self.path, self.interval, self.stop_after, self.saved_at = path, 60 * minutes, stop_after, time.time()
        self.signals, self.stopped = StopSignals(graceful=True, kept=kept), None

    def after_update(self, iteration, asked, state):
        """Write the checkpoint if it is due (`state()` builds it); True when the run stops here."""
        if self.signals.received is not None:
            self.stopped = f"by {signal.Signals(self.signals.received).name}"
        elif 0 < self.stop_after <= iteration:
            self.stopped = "as --stop-after asks"
        if asked or self.stopped or time.time() - self.saved_at >= self.interval:
            save_checkpoint(self.path, state())
            self.saved_at, self.signals.kept = time.time(), f"the last checkpoint is {self.path} (update {iteration})"
        return self.stopped is not None

    def last_line(self, iteration, num_iterations):
        if self.stopped is None or iteration == num_iterations:
            return f"checkpoint: {self.path}"
        return (f"stopped {self.stopped} after update {iteration}/{num_iterations}; checkpoint: {self.path} "
                f"(--resume {self.path} goes on)")

    @property
    def exit_code(self):
        return 128 + self.signals.received if self.signals.received is not None else 0


def stop_if_not_finite(agent, losses, iteration, kept):
    """A NaN or infinite loss ends the run at once: its weights are not saved, the last good checkpoint stays."""
    bad = [name for name, value in losses.items() if not math.isfinite(value)]
    if bad or not all(torch.isfinite(parameter).all() for parameter in agent.parameters()):
        what = f"loss became NaN or infinite ({', '.join(bad)})" if bad else "weights became NaN or infinite"
        sys.exit(f"{os.path.basename(__file__)}: error: update {iteration}: the {what}; its weights are not saved, {kept}")


def init_weights(args, path):
    """The weights of the checkpoint at `path`, checked to fit the agent the command line's flags
    describe (the grid and the number of blocks may differ: the network does not depend on them; so may
    --time-aware-value, the critic's t / T input added with weight 0, the same critic, or dropped; and
    --value-norm, the critic's return moments started unseen or dropped)."""
    def fail(problem):
        sys.exit(f"{os.path.basename(__file__)}: error: --init-from {path} {problem}")

    checkpoint = read_checkpoint(path, "--init-from")
    trained_as = checkpoint_args(checkpoint)
    if trained_as.agent != args.agent:
        fail(f"holds a {trained_as.agent} agent, not the {args.agent} agent --agent asks for")
    model = dict(checkpoint["model"])
    if trained_as.time_aware_value != args.time_aware_value:  # every agent has a critic
        critic = model["critic.weight"]  # t / T is the critic's last input
        model["critic.weight"] = F.pad(critic, (0, 1)) if args.time_aware_value else critic[:, :-1]
        change = "gets a t / T input, with weight 0" if args.time_aware_value else "loses its t / T input"
        print(f"--init-from: the checkpoint's critic {change} (--{'' if args.time_aware_value else 'no-'}time-aware-value)")
    if trained_as.value_norm != args.value_norm:  # a critic in return units is one whose moments are unseen
        if args.value_norm:
            model["value_norm.moments"] = torch.zeros(3, dtype=torch.float64)
        else:
            model.pop("value_norm.moments")
        print(f"--init-from: the critic {'starts' if args.value_norm else 'stops'} learning standardised returns "
              f"(--{'' if args.value_norm else 'no-'}value-norm)")
    try:
        Agent(args, len(MOVES)).load_state_dict(model)
    except Exception as error:  # the first weight whose shape the flags change, named
        fail(f"holds weights that do not fit the network the flags describe ({first_misfit(error)[:200]})")
    return model


def load_checkpoint(path, args, num_actions, device, checkpoint=None):
    """Rebuild the agent the checkpoint was trained as; its architecture flags win. `checkpoint`:
    the file already read by `read_checkpoint`."""
    checkpoint = checkpoint or read_checkpoint(path)
    saved = checkpoint_args(checkpoint)
    for key in ARCHITECTURE + ("train_history",):  # and how its SNAIL reads whole trials
        setattr(args, key, getattr(saved, key))
    agent = Agent(args, num_actions).to(device)
    agent.load_state_dict(checkpoint["model"])
    return agent


if __name__ == "__main__":
    args = tyro.cli(Args)
    check_args(args)
    StopSignals(graceful=False, kept="nothing was trained yet")  # Ctrl-C while starting up: one line, no traceback
    # a checkpoint to evaluate or to go on from is read and checked before any work
    saved = read_checkpoint(args.resume, "--resume") if args.resume else None
    saved = read_checkpoint(args.checkpoint) if args.checkpoint else saved
    if args.resume:
        args = resumed_args(args, saved)
    # a resumed run's weights come from its own checkpoint, not from the one it was started from
    initial_weights = init_weights(args, args.init_from) if args.init_from and not args.resume else None
    args.batch_size = args.num_envs * args.trial_len
    args.num_iterations = max(1, args.total_timesteps // args.batch_size)
    run_name = f"grid__{args.exp_name}__{args.agent}__{args.seed}__{int(time.time())}"
    run_name = saved["run_name"] if args.resume else run_name  # a resumed run goes on in its own directory

    # seeding
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    # NaN logits reach the loss check after the update (one line, the last good checkpoint kept),
    # not Categorical's argument check, which would stop inside the update with a traceback
    torch.distributions.Distribution.set_default_validate_args(False)
    torch.set_num_threads(args.threads or os.cpu_count())
    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")
    level_rng = np.random.default_rng(args.seed)

    num_actions = len(MOVES)
    if args.eval_only:  # the checkpoint's grid and network flags win over the command line's
        trained_on = checkpoint_args(saved).num_train_levels
        if args.eval_split == "train" and args.num_test_levels > trained_on:
            sys.exit(f"grid_failmem.py: error: --num-test-levels {args.num_test_levels} with --eval-split train asks "
                     f"for more levels than the checkpoint trained on ({trained_on})")
        agent = load_checkpoint(args.checkpoint, args, num_actions, device, saved)
    # row i of a split is the same whatever the number asked: with --eval-split train, the first levels it trained on
    test_levels = task_levels(args, args.eval_split, args.num_test_levels)

    if args.eval_only:
        StopSignals(graceful=False, kept="the evaluation did not finish")
        run_name = f"grid__{args.exp_name}__eval__{args.agent}__{int(time.time())}"
        writer = SummaryWriter(f"runs/{run_name}")
        video = f"videos/{run_name}/eval.gif" if args.capture_video else None
        result = evaluate(agent, args, test_levels, np.arange(args.num_test_levels), device, video)
        summary = summarize(result, args.num_blocks)
        log_eval(writer, summary, 0)
        which = "held-out" if args.eval_split == "test" else "training"
        print_table(summary, args.num_blocks, f"{args.checkpoint}: {args.num_test_levels} {which} levels")
        writer.close()
        sys.exit(0)

    # logging
    if args.track:
        import wandb

        wandb.init(
            project=args.wandb_project_name,
            entity=args.wandb_entity,
            sync_tensorboard=True,
            config=vars(args),
            name=run_name,
            mode=wandb_mode(),
            save_code=True,
            id=saved["wandb_id"] if args.resume else None,  # a resumed run goes on in the same W&B run
            resume="allow",
        )
    wandb_id = wandb.run.id if args.track else None
    # a resumed run writes on into its own log; what was logged after its checkpoint is purged
    writer = SummaryWriter(f"runs/{run_name}", purge_step=saved["global_step"] + 1 if args.resume else None)
    if not args.resume:
        writer.add_text(
            "hyperparameters",
            "|param|value|\n|-|-|\n%s" % ("\n".join([f"|{key}|{value}|" for key, value in vars(args).items()])),
        )
    checkpoint = f"runs/{run_name}/agent.pt"
    kept = f"the checkpoint {args.resume} (update {saved['iteration']}) is kept" if args.resume else "no checkpoint yet"
    checkpoints = Checkpoints(checkpoint, args.checkpoint_minutes, args.stop_after, kept)  # and Ctrl-C's handler

    train_levels = task_levels(args, "train", args.num_train_levels)
    envs = BatchedGridWorld(train_levels, args.num_envs, args.grid_size, args.obs_size, args.trial_len)
    obs_shape = (args.obs_size, args.obs_size, 3)
    banks = make_banks(args, obs_shape, args.bank_ram_mb * 2**20)  # [failures] or [failures, successes]

    agent = Agent(args, num_actions).to(device)
    if initial_weights is not None:
        agent.load_state_dict(initial_weights)
    optimizer = optim.Adam(agent.parameters(), lr=args.learning_rate, eps=1e-5, fused=True)  # one kernel: 5x faster a step on a CPU
    print(f"{run_name}: {sum(p.numel() for p in agent.parameters()):,} parameters, {args.num_iterations} updates, "
          f"on {device}")

    # storage: one whole trial per env
    shape = (args.num_envs, args.trial_len)
    frames_buf = torch.zeros(*shape, *obs_shape, dtype=torch.uint8)
    actions_buf = torch.zeros(shape, dtype=torch.long)
    logprobs_buf, rewards_buf, values_buf = torch.zeros(shape), torch.zeros(shape), torch.zeros(shape)
    prev_actions_buf, prev_rewards_buf, starts_buf = torch.zeros(shape, dtype=torch.long), torch.zeros(shape), torch.zeros(shape)
    terminated_buf, truncated_buf, success_buf = (np.zeros(shape, bool) for _ in range(3))

    global_step, first_iteration = 0, 1
    if args.resume:
        first_iteration, global_step = restore_training_state(saved, agent, optimizer, banks, level_rng)
        print(f"resumed from {args.resume} at update {first_iteration}/{args.num_iterations}")
    start_time, start_step = time.time(), global_step
    for iteration in range(first_iteration, args.num_iterations + 1):
        if args.anneal_lr:
            optimizer.param_groups[0]["lr"] = (1.0 - (iteration - 1.0) / args.num_iterations) * args.learning_rate

        # rollout: one trial of T steps per env on a freshly drawn training level
        rollout_start = time.time()
        levels = rollout_levels(level_rng, args.num_train_levels, args.num_envs)
        frames = envs.set_levels(levels)
        trial_memories = [TrialMemory(bank, levels) for bank in banks]
        # slots a trial can see: the bank's N, and with --mem-update episode one per episode it stores
        num_slots = args.mem_size + (args.trial_len if args.mem_update == "episode" else 0)
        episode_begin = np.zeros(args.num_envs, np.int64)
        with torch.no_grad():
            start = [tm.arrays(num_slots).to(device) for tm in trial_memories]
            cache, memories = agent.begin_trial(start, args.num_envs, args.trial_len)  # Sec. 2.1: once per trial
            prev_actions = torch.zeros(args.num_envs, dtype=torch.long)
            prev_rewards, starts = torch.zeros(args.num_envs), torch.ones(args.num_envs)
            for t in range(args.trial_len):
                frames_buf[:, t] = torch.from_numpy(frames)
                prev_actions_buf[:, t], prev_rewards_buf[:, t], starts_buf[:, t] = prev_actions, prev_rewards, starts
                seen = []
                for (memory, filled), tm in zip(memories, trial_memories):
                    used = max(1, max(map(len, tm.slots)))  # no env has stored past this slot: the rest is not read
                    visible = torch.as_tensor(tm.visible(used, [t])[:, 0], device=device)
                    seen.append((memory[:, :used], filled[:, :used] & visible))
                logits, value = agent.step(
                    frames_buf[:, t].to(device), prev_actions.to(device), prev_rewards.to(device),
                    starts.to(device), (cache, seen), t,
                )
                dist = Categorical(logits=logits)
                action = dist.sample()
                actions_buf[:, t], logprobs_buf[:, t], values_buf[:, t] = action.cpu(), dist.log_prob(action).cpu(), value.cpu()
                frames, reward, terminated, truncated, info = envs.step(action.cpu().numpy())
                rewards_buf[:, t] = torch.from_numpy(reward)
                terminated_buf[:, t], truncated_buf[:, t], success_buf[:, t] = terminated, truncated, info["success"]
                done = terminated | truncated
                prev_actions, prev_rewards, starts = next_step_inputs(action.cpu(), rewards_buf[:, t], torch.from_numpy(done),
                                                                      agent.episode_history)
                if agent.episode_history and done.any():
                    agent.snail.restart(cache, torch.as_tensor(np.flatnonzero(done), device=device), t + 1)
                if args.mem_update == "episode":  # the episode enters the bank now, seen from the next step
                    stored = [[] for _ in banks]  # (env, slot) of each episode stored, per bank
                    for env in np.flatnonzero(done):
                        index = bank_for(args.agent, info["success"][env])
                        if index is None:
                            continue
                        steps = slice(episode_begin[env], t + 1)
                        slot = trial_memories[index].store(env, t, frames_buf[env, steps].numpy(),
                                                           actions_buf[env, steps].numpy(), rewards_buf[env, steps].numpy())
                        stored[index].append((env, slot))
                    for index, (tm, entries) in enumerate(zip(trial_memories, stored)):
                        if entries:  # Sec. 2.1 for the step's new trajectories, in one batch
                            env_ids, slot_ids = map(list, zip(*entries))
                            new = BankView(*(torch.as_tensor(np.stack(x), device=device)[:, None]
                                             for x in zip(*(tm.slots[env][slot] for env, slot in entries))))
                            vectors, filled = memories[index]
                            vectors[env_ids, slot_ids], filled[env_ids, slot_ids] = agent.embed_memory(new, index)[0][:, 0], True
                episode_begin[done] = t + 1
        global_step += args.batch_size

        # Sec. 2: by default the trial's failed episodes enter their level's bank at its end
        if args.mem_update == "trial":
            for env, begin, end, succeeded in ended_episodes(terminated_buf, truncated_buf, success_buf):
                store_episode(banks, args.agent, levels[env], succeeded, frames_buf[env, begin:end].numpy(),
                              actions_buf[env, begin:end].numpy(), rewards_buf[env, begin:end].numpy())
        # what the update reads: every slot the trial saw, and at which steps it saw it
        update_slots = max([args.mem_size] + [len(slots) for tm in trial_memories for slots in tm.slots])
        trial_banks = [tm.arrays(update_slots)._replace(visible=tm.visible(update_slots, range(args.trial_len))).to("cpu")
                       for tm in trial_memories]

        # GAE over the trial: episodes inside it are not terminal, the trial's end is
        ends = torch.from_numpy(terminated_buf | truncated_buf) if args.episodic_gae else None
        advantages, returns = compute_gae(rewards_buf, values_buf, args.gamma, args.gae_lambda, ends)
        trials = dict(frames=frames_buf, prev_actions=prev_actions_buf, prev_rewards=prev_rewards_buf, starts=starts_buf,
                      banks=trial_banks, actions=actions_buf, logprobs=logprobs_buf, advantages=advantages,
                      returns=returns, values=values_buf)
        update_start = time.time()
        stats = ppo_update(agent, optimizer, args, trials, device)
        stop_if_not_finite(agent, stats, iteration, checkpoints.signals.kept)
        rollout_s, update_s = update_start - rollout_start, time.time() - update_start

        y_pred, y_true = values_buf.flatten().numpy(), returns.flatten().numpy()
        var_y = np.var(y_true)
        explained_var = np.nan if var_y == 0 else 1 - np.var(y_true - y_pred) / var_y

        # logging
        episodes_done = terminated_buf.sum() + truncated_buf.sum()
        train_success = success_buf.sum() / max(episodes_done, 1)
        trial_return = rewards_buf.sum(1).mean().item()
        sps = int((global_step - start_step) / (time.time() - start_time))
        writer.add_scalar("charts/learning_rate", optimizer.param_groups[0]["lr"], global_step)
        writer.add_scalar("charts/trial_return", trial_return, global_step)
        writer.add_scalar("charts/episode_success", train_success, global_step)
        writer.add_scalar("charts/episodes_per_trial", episodes_done / args.num_envs, global_step)
        writer.add_scalar("charts/first_episode_success", first_episode_success(terminated_buf, truncated_buf, success_buf),
                          global_step)
        recovered = goal_after_a_failure(terminated_buf, truncated_buf, success_buf)
        writer.add_scalar("charts/goal_after_a_failure", recovered, global_step)
        # the other two endings: a wrong object (reward -1) or the step limit
        writer.add_scalar("charts/episode_wrong_touch", (rewards_buf < 0).sum().item() / max(episodes_done, 1), global_step)
        writer.add_scalar("charts/SPS", sps, global_step)
        writer.add_scalar("perf/rollout_seconds", rollout_s, global_step)
        writer.add_scalar("perf/update_seconds", update_s, global_step)
        for key, value in stats.items():
            writer.add_scalar(f"losses/{key}", value, global_step)
        writer.add_scalar("losses/explained_variance", explained_var, global_step)
        for name, bank, trial_bank in zip(("bank", "success_bank"), banks, trial_banks):
            writer.add_scalar(f"memory/{name}_levels", len(bank.banks), global_step)
            writer.add_scalar(f"memory/{name}_trajectories", bank.num_trajectories, global_step)
            writer.add_scalar(f"memory/{name}_mb", bank.nbytes / 2**20, global_step)
            writer.add_scalar(f"memory/{name}_evicted_levels", bank.evicted_levels, global_step)
            filled = trial_bank.valid.any(-1)  # (envs, slots)
            writer.add_scalar(f"memory/{name}_filled_slots_per_trial", filled.sum(1).float().mean(), global_step)
            writer.add_scalar(f"memory/{name}_steps_reading_two_or_more", (failures_seen(trial_bank) >= 2).float().mean(),
                              global_step)
            if filled.any():  # what the reader saw: stored episodes that ended on a wrong object, not the step limit
                touched = (trial_bank.rewards < 0).any(-1)
                writer.add_scalar(f"memory/{name}_wrong_touch_share", touched[filled].float().mean(), global_step)
        print(
            f"update {iteration}/{args.num_iterations} | step {global_step} | SPS {sps} "
            f"(rollout {rollout_s:.1f} s, update {update_s:.1f} s) | "
            f"trial return {trial_return:.2f} | episode success {train_success:.3f} | goal after a failure {recovered:.2f} | "
            f"bank {banks[0].num_trajectories} trajectories, {sum(b.nbytes for b in banks) / 2**20:.1f} MiB"
        )

        # periodic evaluation on held-out levels
        final = iteration == args.num_iterations
        if final or (args.eval_every and iteration % args.eval_every == 0):
            num_levels = args.num_test_levels if final else min(args.eval_levels, args.num_test_levels)
            video = f"videos/{run_name}/step{global_step}.gif" if args.capture_video else None
            agent.eval()
            result = evaluate(agent, args, test_levels, np.arange(num_levels), device, video)
            agent.train()
            summary = summarize(result, args.num_blocks)
            log_eval(writer, summary, global_step)
            print_table(summary, args.num_blocks, f"evaluation at step {global_step} on {num_levels} held-out levels")

        # the checkpoint: every --checkpoint-minutes, at every evaluation, at the end, and before stopping early
        evaluated = final or (args.eval_every and iteration % args.eval_every == 0)
        if checkpoints.after_update(iteration, evaluated, lambda: training_state(
                args, run_name, agent, optimizer, banks, level_rng, iteration, global_step, wandb_id)):
            break

    print(checkpoints.last_line(iteration, args.num_iterations))
    writer.close()
    sys.exit(checkpoints.exit_code)

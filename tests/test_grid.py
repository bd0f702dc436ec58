"""grid_failmem.py: the gridworld's rules, the memory bank's rules, the agent, the evaluation,
then end-to-end runs of the script on tiny settings in a subprocess."""

import dataclasses
import glob
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import common  # noqa: E402
import grid_failmem as gf  # noqa: E402
from test_common import with_old_snail_names  # noqa: E402

torch.set_num_threads(1)  # the in-process tests; many small ops run slower on 2 threads of a busy machine

W, X = 16, 3
LEFT, RIGHT, UP, DOWN = 0, 1, 2, 3


def custom_levels(start, blocks, goal, grid_size=W):
    """A one-level table with the given layout."""
    num_blocks = len(blocks)
    return dict(
        starts=np.array([start]),
        blocks=np.array([blocks]),
        colours=gf.block_palette(num_blocks).astype(np.uint8)[None],
        goals=np.array([goal]),
    )


# --- gridworld -----------------------------------------------------------------------------
def test_moves_and_border():
    env = gf.GridWorld(custom_levels((0, 0), [(5, 5), (6, 6), (7, 7)], 0))
    env.reset(options={"level": 0})
    for action, expected in [(LEFT, (0, 0)), (UP, (0, 0)), (RIGHT, (0, 1)), (DOWN, (1, 1)), (LEFT, (1, 0))]:
        _, reward, terminated, truncated, _ = env.step(action)
        assert env.agent == expected and reward == 0 and not terminated and not truncated
    env = gf.GridWorld(custom_levels((W - 1, W - 1), [(5, 5), (6, 6), (7, 7)], 0))
    env.reset(options={"level": 0})
    env.step(RIGHT)
    env.step(DOWN)
    assert env.agent == (W - 1, W - 1)


def test_goal_and_trap_rewards_end_the_episode():
    levels = custom_levels((3, 3), [(3, 4), (3, 2), (2, 3)], goal=0)
    env = gf.GridWorld(levels)
    env.reset(options={"level": 0})
    _, reward, terminated, truncated, info = env.step(RIGHT)
    assert (reward, terminated, truncated, info["success"], info["hit"]) == (5.0, True, False, True, 0)
    env.reset(options={"level": 0})
    _, reward, terminated, truncated, info = env.step(LEFT)
    assert (reward, terminated, truncated, info["success"], info["hit"]) == (-1.0, True, False, False, 1)


def test_episode_step_limit_truncates():
    env = gf.GridWorld(custom_levels((0, 0), [(5, 5), (6, 6), (7, 7)], 0), max_episode_steps=10)
    env.reset(options={"level": 0})
    for _ in range(9):
        assert env.step(LEFT)[3] is False
    _, reward, terminated, truncated, _ = env.step(LEFT)
    assert truncated and not terminated and reward == 0


def test_observation_draws_agent_and_blocks():
    levels = custom_levels((1, 2), [(5, 5), (6, 6), (7, 7)], 0)
    for obs_size in (16, 64):
        env = gf.GridWorld(levels, obs_size=obs_size)
        obs, _ = env.reset(options={"level": 0})
        scale = obs_size // W
        assert obs.shape == (obs_size, obs_size, 3) and obs.dtype == np.uint8
        assert (obs[scale * 1 : scale * 2, scale * 2 : scale * 3] == 0).all()  # the agent, black
        for (row, col), colour in zip(levels["blocks"][0], levels["colours"][0]):
            assert (obs[scale * row : scale * (row + 1), scale * col : scale * (col + 1)] == colour).all()
        assert (obs == 255).all(-1).sum() == (W * W - 4) * scale * scale  # the rest is free


def test_goal_colour_is_not_in_the_picture():
    # the goal is a uniform draw independent of the colours: no colour marks it
    levels = gf.make_levels("train", 6000, W, X)
    goal_colours = levels["colours"][np.arange(6000), levels["goals"]]
    for colour in gf.block_palette(X).astype(np.uint8):
        assert abs((goal_colours == colour).all(1).mean() - 1 / X) < 0.03
    assert len({tuple(c) for c in gf.block_palette(X).astype(np.uint8)}) == X


def test_block_colours_draw_x_distinct_colours_of_a_palette_of_k():
    # K = X is the paper's levels, unchanged; with K = 3 a one-block stage meets all three colours
    assert all((gf.make_levels("train", 200, W, X, X)[key] == gf.make_levels("train", 200, W, X)[key]).all()
               for key in ("starts", "blocks", "colours", "goals"))
    palette = [tuple(c) for c in gf.block_palette(3).astype(np.uint8)]
    for blocks in (1, 2, 3):
        levels = gf.make_levels("train", 3000, W, blocks, 3)
        colours = [[palette.index(tuple(c)) for c in level] for level in levels["colours"]]
        assert all(len(set(level)) == blocks for level in colours)
        assert np.allclose(np.bincount(np.ravel(colours), minlength=3) / (3000 * blocks), 1 / 3, atol=0.03)
        assert (gf.make_levels("train", 3000, W, blocks)["blocks"] == levels["blocks"]).all()  # only the colours move


def test_task_levels_are_a_runs_own_grid_blocks_and_palette():
    # what a run trains on and what the benchmarks test its checkpoint on: the palette too, not X colours
    args = gf.Args(grid_size=W, num_blocks=2, block_colours=3)
    levels, expected = gf.task_levels(args, "test", 50), gf.make_levels("test", 50, W, 2, 3)
    assert all((levels[key] == expected[key]).all() for key in ("starts", "blocks", "colours", "goals"))
    assert not (levels["colours"] == gf.make_levels("test", 50, W, 2)["colours"]).all()


def test_levels_are_deterministic_and_independent_of_count():
    a = gf.make_levels("train", 300, W, X)
    b = gf.make_levels("train", 50, W, X)
    for key in a:
        assert (a[key][:50] == b[key]).all()
    env = gf.GridWorld(a)
    first, _ = env.reset(options={"level": 17})
    env.step(RIGHT)
    again, _ = env.reset(options={"level": 17})
    assert (first == again).all()
    # every level is a valid layout: X + 1 distinct cells inside the grid
    cells = np.concatenate([a["starts"][:, None], a["blocks"]], 1)
    assert ((cells >= 0) & (cells < W)).all()
    assert all(len({tuple(c) for c in level}) == X + 1 for level in cells)


def test_train_and_test_levels_never_overlap():
    train = gf.make_levels("train", 40000, W, X)
    test = gf.make_levels("test", 500, W, X)

    def layouts(levels):
        flat = [levels[k].reshape(len(levels["goals"]), -1) for k in ("starts", "blocks", "colours")]
        return {row.tobytes() for row in np.concatenate(flat + [levels["goals"][:, None]], 1).astype(np.int64)}

    assert len(layouts(test)) == 500
    assert not layouts(train) & layouts(test)


def test_single_and_batched_envs_agree():
    levels = gf.make_levels("train", 20, W, X)
    rng = np.random.default_rng(0)
    level_ids = np.array([3, 7, 7, 12, 0, 19])
    for obs_size in (16, 32):
        batched = gf.BatchedGridWorld(levels, len(level_ids), W, obs_size, max_episode_steps=30)
        singles = [gf.GridWorld(levels, W, obs_size, max_episode_steps=30) for _ in level_ids]
        obs_b = batched.set_levels(level_ids)
        obs_s = np.stack([env.reset(options={"level": int(i)})[0] for env, i in zip(singles, level_ids)])
        assert (obs_b == obs_s).all()
        dones = 0
        for _ in range(200):
            actions = rng.integers(4, size=len(level_ids))
            obs_b, rew_b, term_b, trunc_b, info_b = batched.step(actions)
            for i, env in enumerate(singles):
                obs, reward, terminated, truncated, info = env.step(int(actions[i]))
                assert (reward, terminated, truncated) == (rew_b[i], term_b[i], trunc_b[i])
                assert info["hit"] == info_b["hit"][i] and info["success"] == info_b["success"][i]
                if terminated or truncated:  # the batched env restarts the level at once
                    obs, _ = env.reset(options={"level": int(level_ids[i])})
                    dones += 1
                assert (obs == obs_b[i]).all()
        assert dones > 0


def test_batched_env_set_levels_of_some_envs():
    levels = gf.make_levels("train", 20, W, X)
    batched = gf.BatchedGridWorld(levels, 3, W, 16)
    batched.set_levels(np.array([1, 2, 3]))
    batched.step(np.array([0, 0, 0]))
    obs = batched.set_levels(np.array([5]), env_ids=np.array([1]))
    single = gf.GridWorld(levels)
    assert (obs[1] == single.reset(options={"level": 5})[0]).all()
    assert list(batched.level_ids) == [1, 5, 3]


def test_env_checker():
    env = gf.GridWorld(gf.make_levels("train", 10, W, X))
    check_env(env, skip_render_check=True)
    obs, info = env.reset(seed=3)
    assert env.observation_space.contains(obs) and 0 <= info["level"] < 10


# --- memory bank (its own rules, once per script: test_bank.py) ----------------------------
def trajectory(length, value, obs_shape=(4, 4, 3)):
    frames = np.full((length, *obs_shape), value, np.uint8)
    return frames, np.arange(length) % 4, np.full(length, -1.0, np.float32)


def test_ended_episodes_and_cut_off_ones():
    # env 0: trap at t=2, success at t=5, limit reached at t=8, cut off by the trial's end
    # env 1: no episode ends at all (one cut-off episode)
    terminated = np.zeros((2, 10), bool)
    truncated = np.zeros((2, 10), bool)
    success = np.zeros((2, 10), bool)
    terminated[0, 2] = terminated[0, 5] = success[0, 5] = True
    truncated[0, 8] = True
    episodes = list(gf.ended_episodes(terminated, truncated, success))
    assert episodes == [(0, 0, 3, False), (0, 3, 6, True), (0, 6, 9, False)]
    assert gf.first_episode_success(terminated, truncated, success) == 0.0  # env 0 failed first, env 1 never ended
    success[0, 2] = True  # now env 0's first episode is a success; env 1 still counts as a failure
    assert gf.first_episode_success(terminated, truncated, success) == 0.5


def test_goal_after_a_failure_reads_the_episode_after_a_failed_first():
    terminated, truncated, success = (np.zeros((4, 10), bool) for _ in range(3))
    terminated[0, [2, 5]] = success[0, 5] = True  # trap, then the goal: recovered
    terminated[1, [2, 5, 7]] = success[1, 7] = True  # trap, trap, goal: the second episode missed
    terminated[2, 3] = True  # trap, then cut off by the trial's end: missed
    terminated[3, [1, 4]] = success[3, [1, 4]] = True  # first episode a success: not counted
    assert gf.goal_after_a_failure(terminated, truncated, success) == 1 / 3
    truncated[1, 2], terminated[1, 2] = True, False  # a first episode ended by the step limit is a failure too
    assert gf.goal_after_a_failure(terminated, truncated, success) == 1 / 3
    assert np.isnan(gf.goal_after_a_failure(terminated[3:], truncated[3:], success[3:]))


def test_trial_memory_shows_each_stored_episode_from_the_next_step():
    bank = gf.MemoryBank(mem_size=2, mem_len=4, obs_shape=(4, 4, 3), ram_bytes=float("inf"))
    bank.add(5, *trajectory(5, 1))
    trial = gf.TrialMemory(bank, [5, 6])
    assert trial.store(0, 3, *trajectory(4, 2)) == 1  # env 0 (level 5) fails at step 3
    assert trial.store(0, 7, *trajectory(4, 3)) == 2  # and at step 7: the bank drops trajectory 1
    assert trial.store(1, 0, *trajectory(1, 4)) == 0  # env 1 (level 6) fails at step 0
    visible = trial.visible(4, range(10))
    assert visible.shape == (2, 10, 4)
    assert visible[0, :, 0].tolist() == [True] * 8 + [False] * 2  # in the bank until step 7's episode
    assert visible[0, :, 1].tolist() == [False] * 4 + [True] * 6
    assert visible[0, :, 2].tolist() == [False] * 8 + [True] * 2
    assert visible[1, :, 0].tolist() == [False] + [True] * 9
    assert not visible[:, :, 3].any() and not visible[1, :, 1:].any()
    frames, actions, rewards, valid, _ = trial.arrays(4)
    assert [frames[0, j, -1, 0, 0, 0] for j in range(3)] == [1, 2, 3]
    assert valid[1, 0].tolist() == [False, False, False, True]  # padded at the front
    assert [t[0][-1, 0, 0, 0] for t in bank.banks[5]] == [2, 3]  # the bank itself is a FIFO of N = 2


def test_trial_memory_follows_the_success_bank_clearing():
    bank = gf.MemoryBank(mem_size=2, mem_len=4, obs_shape=(4, 4, 3), ram_bytes=float("inf"), clear_when_full=True)
    trial = gf.TrialMemory(bank, [0])
    for t, value in ((1, 1), (2, 2), (5, 3)):
        trial.store(0, t, *trajectory(3, value))
    visible = trial.visible(3, [2, 3, 6])
    assert visible[0].tolist() == [[True, False, False], [True, True, False], [False, False, True]]


# --- agent ---------------------------------------------------------------------------------
def small_args(**overrides):
    small = dict(grid_size=W, num_blocks=X, obs_size=16, trial_len=12, mem_size=3, mem_len=4, embed_dim=16, num_heads=4)
    return gf.Args(**{**small, **overrides})


@pytest.mark.parametrize("num_rows", [0, 1, 50])
def test_distinct_rows_is_torch_unique_over_rows(num_rows):
    """The CPU path (numpy, each row one byte key) gives torch.unique(dim=0)'s rows, order and inverse: the CNN then
    sees the same batch, so the numbers do not move. Rows that differ only in a late byte, or by a byte above 127,
    must not merge or reorder."""
    generator = torch.Generator().manual_seed(0)
    distinct = torch.randint(0, 256, (6, 12), dtype=torch.uint8, generator=generator)
    distinct[1] = distinct[0]
    distinct[1, -1] ^= 1  # differs from row 0 in its last byte only
    distinct[2, 0] = 200  # a byte a signed comparison would order first
    rows = distinct[torch.randint(0, 6, (num_rows,), generator=generator)]
    expected_rows, expected_inverse = torch.unique(rows, dim=0, return_inverse=True)
    got_rows, got_inverse = gf.distinct_rows(rows)
    assert torch.equal(got_rows, expected_rows) and torch.equal(got_inverse, expected_inverse)
    assert torch.equal(got_rows[got_inverse], rows)


def test_encode_runs_the_cnn_once_per_distinct_frame_with_the_same_features_and_gradients():
    """The trials' frames and their banks' go through the CNN together, each distinct frame once; features and
    the CNN's gradients are those of running it on every frame."""
    torch.manual_seed(0)
    agent = gf.Agent(small_args(), 4)
    distinct = torch.randint(0, 256, (5, 16, 16, 3), dtype=torch.uint8)
    trials = distinct[torch.tensor([[0, 1, 1, 0, 2, 2, 2], [3, 3, 0, 1, 1, 3, 3]])]  # frames repeat within trials
    bank = distinct[torch.tensor([[[0, 1], [2, 2]], [[3, 3], [4, 4]]])]  # and a bank repeats its trial's
    sizes, cnn_forward = [], agent.cnn.forward
    agent.cnn.forward = lambda frames: sizes.append(len(frames)) or cnn_forward(frames)
    encoded = agent.encode(trials, bank)
    assert sizes == [5]
    expected = [cnn_forward(trials.flatten(0, 1)).view(2, 7, -1), cnn_forward(bank.flatten(0, 2)).view(2, 2, 2, -1)]
    weights = [torch.randn_like(x) for x in expected]
    gradients = []
    for outputs in (encoded, expected):
        assert [x.shape for x in outputs] == [x.shape for x in expected]
        agent.zero_grad()
        sum((w * x).sum() for w, x in zip(weights, outputs)).backward()
        gradients.append([p.grad.clone() for p in agent.cnn.parameters()])
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(encoded, expected))
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(*gradients))
    assert agent.encode(trials, bank[:0])[1].shape == (0, 2, 2, agent.cnn.out_dim)  # no filled slot


@pytest.mark.parametrize("time_aware", [False, True])
@pytest.mark.parametrize("agent_name, null_slot", [(name, False) for name in gf.AGENTS] + [("memory", True), ("memory-sf", True)])
def test_step_mode_matches_whole_trial(agent_name, null_slot, time_aware):
    """The rollout's per-step outputs and the update's whole-trial outputs are the same numbers,
    so PPO's first ratio is 1."""
    torch.manual_seed(0)
    args = small_args(agent=agent_name, time_aware_value=time_aware, train_history="trial", null_slot=null_slot)
    agent = gf.Agent(args, 4)
    B, T = 3, args.trial_len
    frames = torch.randint(0, 256, (B, T, 16, 16, 3), dtype=torch.uint8)
    prev_actions = torch.randint(0, 4, (B, T))
    prev_rewards = torch.randn(B, T)
    starts = (torch.rand(B, T) < 0.2).float()
    banks = []
    for _ in range(2):
        bank = gf.BankView(
            frames=torch.randint(0, 256, (B, 3, 4, 16, 16, 3), dtype=torch.uint8),
            actions=torch.randint(0, 4, (B, 3, 4)),
            rewards=torch.randn(B, 3, 4),
            valid=torch.ones(B, 3, 4, dtype=torch.bool),
            visible=torch.ones(B, T, 3, dtype=torch.bool),  # every slot seen at every step
        )
        bank.valid[0] = False  # env 0 has an empty bank
        bank.valid[1, 2] = False
        bank.valid[2, :, :2] = False
        banks.append(bank)
    actions = torch.randint(0, 4, (B, T))
    with torch.no_grad():
        _, logprob, _, value = agent.get_action_and_value(frames, prev_actions, prev_rewards, starts, banks, actions)
        trial_state = agent.begin_trial(banks, B, T)
        for t in range(T):
            logits, v = agent.step(frames[:, t], prev_actions[:, t], prev_rewards[:, t], starts[:, t], trial_state, t)
            step_logprob = torch.log_softmax(logits, -1).gather(1, actions[:, t : t + 1]).squeeze(1)
            assert torch.allclose(step_logprob, logprob[:, t], atol=1e-5)
            assert torch.allclose(v, value[:, t], atol=1e-5)


def test_episode_history_steps_match_whole_trial_and_hide_earlier_episodes():
    """--train-history episode: the update's whole trials give the rollout's numbers when the rollout
    restarts SNAIL at each episode, and a step's output does not depend on an earlier episode."""
    torch.manual_seed(0)
    agent = gf.Agent(small_args(agent="memory", train_history="episode"), 4)
    B, T = 2, 12
    frames = torch.randint(0, 256, (B, T, 16, 16, 3), dtype=torch.uint8)
    prev_actions, prev_rewards = torch.randint(0, 4, (B, T)), torch.randn(B, T)
    starts = torch.zeros(B, T)
    starts[:, 0], starts[0, 5], starts[1, 3], starts[1, 4] = 1, 1, 1, 1
    bank = gf.BankView(torch.randint(0, 256, (B, 3, 4, 16, 16, 3), dtype=torch.uint8), torch.randint(0, 4, (B, 3, 4)),
                       torch.randn(B, 3, 4), torch.ones(B, 3, 4, dtype=torch.bool), torch.ones(B, T, 3, dtype=torch.bool))
    actions = torch.randint(0, 4, (B, T))
    with torch.no_grad():
        _, logprob, _, value = agent.get_action_and_value(frames, prev_actions, prev_rewards, starts, [bank], actions)
        cache, memories = agent.begin_trial([bank], B, T)
        for t in range(T):
            rows = torch.nonzero(starts[:, t]).flatten()
            if t and len(rows):
                agent.snail.restart(cache, rows, t)
            logits, v = agent.step(frames[:, t], prev_actions[:, t], prev_rewards[:, t], starts[:, t], (cache, memories), t)
            torch.testing.assert_close(torch.log_softmax(logits, -1).gather(1, actions[:, t : t + 1])[:, 0], logprob[:, t],
                                       atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(v, value[:, t], atol=1e-5, rtol=1e-5)
        other = frames.clone()
        other[0, :5] = torch.randint(0, 256, (5, 16, 16, 3), dtype=torch.uint8)  # env 0's first episode
        # the values (the actor starts near uniform, so its log-probs barely move)
        changed = agent.get_action_and_value(other, prev_actions, prev_rewards, starts, [bank], actions)[3]
        torch.testing.assert_close(changed[0, 5:], value[0, 5:])
        assert not torch.allclose(changed[0, :5], value[0, :5], atol=1e-4)
        trial = gf.Agent(small_args(agent="memory", train_history="trial"), 4)
        trial.load_state_dict(agent.state_dict())
        seen = trial.get_action_and_value(other, prev_actions, prev_rewards, starts, [bank], actions)[3]
        before = trial.get_action_and_value(frames, prev_actions, prev_rewards, starts, [bank], actions)[3]
        assert not torch.allclose(seen[0, 5:], before[0, 5:], atol=1e-4)  # with the trial's history it does depend on it


@pytest.mark.parametrize("time_aware", [False, True])
def test_time_aware_critic_sees_the_step_and_the_actor_does_not(time_aware):
    torch.manual_seed(0)
    args = small_args(agent="snail", time_aware_value=time_aware)
    agent = gf.Agent(args, 4)
    features, obs = torch.randn(2, 5, args.embed_dim), torch.randn(2, 5, args.embed_dim)
    with torch.no_grad():
        logits0, values0 = agent.heads(features, obs, [], 0)
        logits1, values1 = agent.heads(features, obs, [], args.trial_len)
    assert torch.equal(logits0, logits1)
    # t / T enters the critic's last layer: its weight on it times the change of 1
    expected = agent.critic.weight[0, -1].item() if time_aware else 0.0
    torch.testing.assert_close(values1 - values0, torch.full((2, 5), expected))


def test_which_agents_read_which_bank():
    torch.manual_seed(0)
    B = 2
    frames = torch.randint(0, 256, (B, 12, 16, 16, 3), dtype=torch.uint8)
    zeros = torch.zeros(B, 12, dtype=torch.long), torch.zeros(B, 12), torch.zeros(B, 12)
    seen = torch.ones(B, 12, 3, dtype=torch.bool)
    empty = gf.BankView(torch.zeros(B, 3, 4, 16, 16, 3, dtype=torch.uint8), torch.zeros(B, 3, 4, dtype=torch.long),
                        torch.zeros(B, 3, 4), torch.zeros(B, 3, 4, dtype=torch.bool), seen)
    full = gf.BankView(torch.randint(0, 256, empty.frames.shape, dtype=torch.uint8), empty.actions, -torch.ones(B, 3, 4),
                       torch.ones(B, 3, 4, dtype=torch.bool), seen)
    actions = torch.zeros(B, 12, dtype=torch.long)
    expected = {"memory": True, "snail": False, "snail-cat": True, "memory-sf": True, "memory-sf-mix": True,
                "ppo-finetune": False, "ppo-finetune-attn": False}
    for name, changes in expected.items():
        agent = gf.Agent(small_args(agent=name), 4)
        with torch.no_grad():
            out_empty = agent.get_action_and_value(frames, *zeros, [empty, empty], actions)[1]
            out_full = agent.get_action_and_value(frames, *zeros, [full, empty], actions)[1]
            out_success = agent.get_action_and_value(frames, *zeros, [empty, full], actions)[1]
        assert (not torch.allclose(out_empty, out_full)) == changes, name
        # only memory-sf reads a second (success) bank
        assert (not torch.allclose(out_empty, out_success)) == (name == "memory-sf"), name


def test_finetune_agents_see_only_the_current_episode():
    """ppo-finetune acts on o_t alone, ppo-finetune-attn on the steps of the current episode;
    SNAIL sees the whole trial."""
    torch.manual_seed(0)
    B, T = 2, 12
    frames = torch.randint(0, 256, (B, T, 16, 16, 3), dtype=torch.uint8)
    other = frames.clone()
    other[:, :5] = torch.randint(0, 256, (B, 5, 16, 16, 3), dtype=torch.uint8)  # change episode 1 only
    other[:, 6] = torch.randint(0, 256, (B, 16, 16, 3), dtype=torch.uint8)  # and one step of episode 2
    starts = torch.zeros(B, T)
    starts[:, 0] = starts[:, 5] = 1  # episode 2 starts at step 5
    zeros = torch.zeros(B, T, dtype=torch.long), torch.zeros(B, T)
    actions = torch.zeros(B, T, dtype=torch.long)
    for name in ("ppo-finetune", "ppo-finetune-attn", "snail"):
        agent = gf.Agent(small_args(agent=name), 4)
        with torch.no_grad():
            a = agent.get_action_and_value(frames, *zeros, starts, [], actions)[3]  # values: the actor
            b = agent.get_action_and_value(other, *zeros, starts, [], actions)[3]  # starts near uniform
        assert torch.allclose(a[:, 5], b[:, 5]) == (name != "snail"), name  # episode 1 unseen from episode 2
        assert torch.allclose(a[:, 7], b[:, 7]) == (name == "ppo-finetune"), name  # step 6 seen by attention


def test_finetune_evaluation_trains_per_episode_and_restores_the_weights(monkeypatch):
    torch.manual_seed(0)
    args = small_args(agent="ppo-finetune-attn", trial_len=20, eval_episodes=3, learning_rate=1e-2)
    agent = gf.Agent(args, 4)
    trained = {k: v.clone() for k, v in agent.state_dict().items()}
    levels = gf.make_levels("test", 2, W, X)
    calls, changed = [], []
    original = gf.ppo_update

    def counting_update(model, optimizer, update_args, batch, device):
        before = [p.clone() for p in model.parameters()]
        stats = original(model, optimizer, update_args, batch, device)
        changed.append(any(not torch.equal(p, q) for p, q in zip(before, model.parameters())))
        calls.append(batch["actions"].shape)
        return stats

    monkeypatch.setattr(gf, "ppo_update", counting_update)
    result = gf.evaluate(agent, args, levels, np.arange(2), "cpu")
    assert len(calls) == 2 * 3 and all(changed)  # PPO after every episode of every level
    assert all(shape[0] == 1 and 1 <= shape[1] <= 20 for shape in calls)
    assert result["success"].shape == (2, 3)
    for key, value in agent.state_dict().items():  # the trained weights are untouched afterwards
        assert torch.equal(value, trained[key]), key


@pytest.mark.parametrize("agent_name", ["ppo-finetune", "ppo-finetune-attn"])
def test_finetune_returns_go_on_after_a_block_as_the_trial_would(monkeypatch, agent_name):
    """The critic learned trial returns, where a block is followed by a new episode from the level's start: an
    episode that ends at a block gets r + gamma V(start) at its last step; one cut by the step limit ends the trial.
    And an update of one episode keeps its advantages' sign: not normalised, whatever the run's --norm-adv."""
    torch.manual_seed(1)  # a seed whose untrained agents both hit blocks and run out of steps (asserted below)
    args = small_args(agent=agent_name, grid_size=4, trial_len=20, eval_episodes=3, gamma=0.9)
    agent = gf.Agent(args, 4)
    batches, norms = [], []
    original = gf.ppo_update

    def recording_update(model, optimizer, update_args, batch, device):
        batches.append(batch)
        norms.append(update_args.norm_adv)
        return original(model, optimizer, update_args, batch, device)

    monkeypatch.setattr(gf, "ppo_update", recording_update)
    result = gf.evaluate(agent, args, gf.make_levels("test", 4, 4, X), np.arange(4), "cpu")
    assert args.norm_adv == "minibatch" and set(norms) == {"off"}  # the run's own args are left as they were
    ended_at_block, success = (result["hits"] >= 0).reshape(-1), result["success"].reshape(-1)
    assert ended_at_block.any() and not ended_at_block.all() and len(batches) == len(ended_at_block)
    for batch, at_block, goal in zip(batches, ended_at_block, success):
        last_reward = gf.GOAL_REWARD if goal else gf.TRAP_REWARD if at_block else 0.0
        # the episode's first frame is the level's start, valued by the same weights before the update
        after = args.gamma * batch["values"][0, 0] if at_block else 0.0
        assert batch["returns"][0, -1].item() == pytest.approx(float(last_reward + after), abs=1e-5)


def test_gae_goes_on_from_the_value_given_after_the_last_step():
    rewards, values = torch.tensor([[0.0, 1.0, 0.0, 5.0]]), torch.tensor([[0.5, 0.2, 0.3, 0.4]])
    full, _ = gf.compute_gae(rewards, values, 0.9, 0.0)  # TD(0): each step sees one value ahead
    cut, _ = gf.compute_gae(rewards[:, :2], values[:, :2], 0.9, 0.0, last_values=values[:, 2])
    torch.testing.assert_close(cut, full[:, :2])
    ended, _ = gf.compute_gae(rewards[:, :2], values[:, :2], 0.9, 0.0)
    assert ended[0, 1] == pytest.approx(1.0 - 0.2) and cut[0, 1] == pytest.approx(1.0 + 0.9 * 0.3 - 0.2)


@pytest.mark.parametrize("norm_adv, moves", [("minibatch", False), ("batch", True)])
def test_advantage_normalisation_scope(norm_adv, moves):
    """One trial per minibatch, each trial with its own constant advantage: normalised per
    minibatch every advantage becomes 0 and the policy gets no gradient; normalised over the
    rollout they stay apart and the policy moves."""
    torch.manual_seed(0)
    args = small_args(agent="ppo-finetune", norm_adv=norm_adv, trials_per_minibatch=1, update_epochs=1,
                      vf_coef=0.0, ent_coef=0.0)
    agent = gf.Agent(args, 4)
    optimizer = torch.optim.Adam(agent.parameters(), lr=1e-2)
    B, T = 4, args.trial_len
    frames = torch.randint(0, 256, (B, T, 16, 16, 3), dtype=torch.uint8)
    zeros = torch.zeros(B, T)
    actions = torch.randint(0, 4, (B, T))
    with torch.no_grad():
        _, logprobs, _, values = agent.get_action_and_value(frames, actions, zeros, zeros, [], actions)
    advantages = torch.tensor([1.0, -1.0, 2.0, -2.0])[:, None].expand(B, T).clone()
    batch = dict(frames=frames, prev_actions=actions, prev_rewards=zeros, starts=zeros, banks=[], actions=actions,
                 logprobs=logprobs, advantages=advantages, returns=values, values=values)
    before = agent.actor.weight.clone()
    gf.ppo_update(agent, optimizer, args, batch, "cpu")
    assert (not torch.allclose(agent.actor.weight, before)) == moves


# --- evaluation ----------------------------------------------------------------------------
def test_error_modes_partition_the_levels():
    success = np.array([[0, 0, 1, 1, 1], [0] * 5, [0] * 5, [0] * 5, [0] * 5], bool)
    hits = np.array([[1, 2, 0, 0, 0], [-1] * 5, [2] * 5, [1, 1, 1, 1, 2], [-1, 1, 1, 1, 1]])
    modes = gf.error_modes(success, hits)
    assert modes["success"].tolist() == [True, False, False, False, False]
    assert modes["no_hit"].tolist() == [False, True, False, False, False]
    assert modes["fail_hit_end_same"].tolist() == [False, False, True, False, False]
    assert modes["fail_hit_end_diff"].tolist() == [False, False, False, True, True]
    assert (sum(m.astype(int) for m in modes.values()) == 1).all()


def test_bayes_optimal_line():
    assert gf.bayes_optimal(3, 5) == [1 / 3, 2 / 3, 1, 1, 1]
    assert np.isclose(np.mean(gf.bayes_optimal(3, 5)), 0.8)


class ScriptedAgent(torch.nn.Module):
    """Walks to block k in episode k (an agent that never repeats a failed block when X = 3
    and the blocks are visited in order): tests the evaluation loop, not a network."""

    use_memory, memoryless = True, False

    def __init__(self, levels, level_ids):
        super().__init__()
        self.levels, self.level_ids = levels, level_ids
        self.bank_sizes, self.bank_frames = [], []
        self.episode = np.zeros(len(level_ids), np.int64)

    def read_banks(self, banks):
        self.bank_sizes.append(banks[0].valid.any(-1).sum(1).tolist())
        self.bank_frames.append(banks[0].frames)
        return []

    def begin_trial(self, banks, batch_size, max_len):
        return None, self.read_banks(banks)

    def step(self, frames, prev_actions, prev_rewards, starts, trial_state, t):
        frames = frames.numpy()
        self.episode += (starts.numpy() > 0) & (t > 0)
        logits = torch.zeros(len(frames), 4)
        for i, level in enumerate(self.level_ids):
            row, col = np.argwhere((frames[i] == 0).all(-1))[0]
            target = self.levels["blocks"][level][min(self.episode[i], 2)]
            move = 3 if target[0] > row else 2 if target[0] < row else 1 if target[1] > col else 0
            logits[i, move] = 1.0
        return logits, torch.zeros(len(frames))


def test_evaluation_stores_failures_as_they_happen():
    # levels where the straight path to each block is free of other blocks
    levels = custom_levels((0, 0), [(0, 5), (5, 5), (10, 10)], goal=2)
    # the scripted agent has no SNAIL to restart
    args = small_args(trial_len=80, mem_size=8, mem_len=6, eval_episodes=5, eval_envs=4, agent="memory", test_history="trial")
    agent = ScriptedAgent(levels, [0])
    result = gf.evaluate(agent, args, levels, np.array([0]), "cpu")
    # episodes 1, 2 hit the traps 0 and 1, episode 3 and later reach the goal
    assert result["success"][0].tolist() == [False, False, True, True, True]
    assert result["hits"][0].tolist() == [0, 1, 2, 2, 2]
    assert result["returns"][0] == -1 - 1 + 5 * 3
    # read at the start and again after each of the 5 episodes; it grows after each failure, at once
    assert agent.bank_sizes == [[0], [1], [2], [2], [2], [2]]
    summary = gf.summarize(result, 3)
    assert summary["success_ep3"] == 1.0 and summary["mean_success"] == 0.6 and summary["success"] == 1.0
    assert summary["goal_after_first_failure"] == 0.0  # episode 2 hit the second trap
    assert summary["goal_after_two_failures"] == 1.0  # ... and episode 3 went to the block neither named


def test_evaluation_given_banks_starts_from_and_adds_to_them():
    levels = custom_levels((0, 0), [(0, 5), (5, 5), (10, 10)], goal=2)
    args = small_args(trial_len=80, mem_size=8, mem_len=6, eval_episodes=2, eval_envs=4, agent="memory", test_history="trial")
    banks = gf.make_banks(args, (16, 16, 3), float("inf"))
    first = ScriptedAgent(levels, [0])
    gf.evaluate(first, args, levels, np.array([0]), "cpu", banks=banks)
    assert first.bank_sizes == [[0], [1], [2]] and len(banks[0].trajectories(0)) == 2
    # the level comes back: its first read holds the two failures of the first visit
    again = ScriptedAgent(levels, [0])
    gf.evaluate(again, args, levels, np.array([0]), "cpu", banks=banks)
    assert again.bank_sizes[0] == [2] and len(banks[0].trajectories(0)) == 4


def test_goal_after_two_failures_counts_only_levels_whose_first_two_episodes_hit_different_traps():
    success = np.array([[False, False, True], [False, False, False], [False, False, True], [True, False, False],
                        [False, False, True], [False, True, True]])
    hits = np.array([[0, 1, 2], [1, 0, 1], [0, 0, 2], [2, 0, 1], [-1, 1, 2], [0, 2, 2]])
    # counted: levels 0 (reached) and 1 (missed); not 2 (the same trap twice), 3 and 5 (a success first), 4 (no hit)
    summary = gf.summarize(dict(success=success, hits=hits, returns=np.zeros(6)), 3)
    assert summary["goal_after_two_failures"] == 0.5
    assert np.isnan(gf.summarize(dict(success=success[2:3], hits=hits[2:3], returns=np.zeros(1)), 3)["goal_after_two_failures"])
    assert "goal_after_two_failures" not in gf.summarize(dict(success=success[:, :2], hits=hits[:, :2], returns=np.zeros(6)), 3)
    assert "goal_after_two_failures" not in gf.summarize(dict(success=success, hits=hits.clip(max=1), returns=np.zeros(6)), 2)


def test_goal_after_first_failure_counts_only_levels_that_missed_in_episode_1():
    success = np.array([[True, False], [False, True], [False, False], [False, True]])
    result = dict(success=success, hits=np.where(success, 0, 1), returns=np.zeros(4))
    assert gf.summarize(result, 2)["goal_after_first_failure"] == 2 / 3
    assert np.isnan(gf.summarize(dict(result, success=success[:, :1], hits=success[:, :1] * 0), 2)["goal_after_first_failure"])


def test_the_bank_keeps_the_frame_each_step_was_taken_on():
    levels = custom_levels((0, 0), [(0, 5), (5, 5), (10, 10)], goal=2)
    args = small_args(trial_len=80, mem_size=8, mem_len=6, eval_episodes=2, eval_envs=4, agent="memory",
                      test_history="trial")
    agent = ScriptedAgent(levels, [0])
    gf.evaluate(agent, args, levels, np.array([0]), "cpu")
    # episode 1 walked right from (0, 0) into the trap at (0, 5): five steps, padded at the front to L = 6
    stored = agent.bank_frames[1][0, 0].numpy()
    agent_cells = [tuple(np.argwhere((frame == gf.AGENT_RGB).all(-1))[0]) for frame in stored[1:]]
    assert agent_cells == [(0, col) for col in range(5)]  # the last one beside the trap, which is still drawn
    assert (stored[-1] == levels["colours"][0][0]).all(-1).any()


@pytest.mark.parametrize("agent_name", ["memory", "ppo-finetune"])
def test_eval_sample_draws_seeded_actions_and_greedy_takes_the_most_likely(agent_name):
    logits = torch.tensor([[0.0, 2.0, 1.0, -1.0]]).repeat(400, 1)
    assert (gf.test_actions(logits) == 1).all()
    draws = gf.test_actions(logits, torch.Generator().manual_seed(3))
    assert set(draws.tolist()) == {0, 1, 2, 3}
    assert torch.equal(draws, gf.test_actions(logits, torch.Generator().manual_seed(3)))
    # whole evaluations: sampled ones repeat under one seed, and leave training's RNG where it was
    torch.manual_seed(0)
    args = small_args(agent=agent_name, trial_len=10, eval_episodes=2, num_blocks=3, grid_size=8, eval_sample=True)
    agent = gf.Agent(args, 4)
    levels = gf.make_levels("test", 6, 8, 3)
    state = torch.get_rng_state()
    first = gf.evaluate(agent, args, levels, np.arange(6), "cpu")
    assert torch.equal(torch.get_rng_state(), state) or agent_name == "ppo-finetune"  # its test-time PPO shuffles
    again = gf.evaluate(agent, args, levels, np.arange(6), "cpu")
    assert all(np.array_equal(first[key], again[key]) for key in first)


@pytest.mark.parametrize("test_history", ["episode", "trial"])
def test_evaluation_reads_only_ended_levels_and_restarts_snail_per_episode(test_history, monkeypatch):
    """Each ended episode re-reads only its own level's bank; with --test-history episode the
    memory agent's SNAIL starts anew with each episode (earlier ones reach it through the bank)."""
    torch.manual_seed(0)
    args = small_args(agent="memory", eval_episodes=3, eval_envs=4, test_history=test_history)
    agent = gf.Agent(args, 4).eval()
    # level 0: blocks on every side of the start, so its episodes end after one step; levels 1
    # and 2: blocks in the far corner, out of reach in a 12-step episode, so theirs run out together
    near, far = custom_levels((5, 5), [(4, 5), (6, 5), (5, 4), (5, 6)], 0), custom_levels(
        (0, 0), [(15, 15), (15, 14), (14, 15), (13, 15)], 0)
    levels = {key: np.concatenate([near[key], far[key], far[key]]) for key in near}
    reads, restarts, inputs = [], [], []
    read_banks, restart, step = agent.read_banks, agent.snail.restart, agent.step
    monkeypatch.setattr(agent, "read_banks", lambda banks: reads.append(len(banks[0][0])) or read_banks(banks))
    monkeypatch.setattr(agent.snail, "restart", lambda cache, rows, t: restarts.append((rows.tolist(), t))
                        or restart(cache, rows, t))
    monkeypatch.setattr(agent, "step", lambda frames, actions, rewards, starts, state, t:
                        inputs.append((actions[0].item(), rewards[0].item(), starts[0].item())) or
                        step(frames, actions, rewards, starts, state, t))
    result = gf.evaluate(agent, args, levels, np.arange(3), "cpu")
    assert reads == [3, 1, 1, 1, 2, 2, 2]  # the trial's start, level 0 alone after steps 1-3, then 1 and 2 together
    # level 0's episodes 2 and 3 begin at steps 1 and 2, right after a block's reward
    assert [start for _, _, start in inputs[:3]] == [1, 1, 1]
    if test_history == "trial":
        assert restarts == []
        assert all(reward != 0 for _, reward, _ in inputs[1:3])  # the last episode's reward goes on into the next
    else:
        assert restarts == [([0], 1), ([0], 2), ([0], 3), ([1, 2], 12), ([1, 2], 24), ([1, 2], 36)]
        assert inputs[:3] == [(0, 0.0, 1.0)] * 3  # each episode begins as the first: no previous action or reward
    assert (result["hits"][0] >= 0).all() and (result["hits"][1:] == -1).all()


def test_a_restarted_episode_begins_with_no_previous_action_or_reward():
    actions, rewards, done = torch.tensor([2, 3, 1]), torch.tensor([-1.0, 0.5, 1.0]), torch.tensor([True, False, True])
    prev_actions, prev_rewards, starts = gf.next_step_inputs(actions, rewards, done, restarts=True)
    assert prev_actions.tolist() == [0, 3, 0] and prev_rewards.tolist() == [0, 0.5, 0] and starts.tolist() == [1, 0, 1]
    prev_actions, prev_rewards, starts = gf.next_step_inputs(actions, rewards, done, restarts=False)
    assert prev_actions.tolist() == [2, 3, 1] and prev_rewards.tolist() == [-1, 0.5, 1] and starts.tolist() == [1, 0, 1]


def test_episodic_gae_stops_the_return_at_episode_ends():
    """--episodic-gae: the advantages of a trial with an episode end after step 2 are those of
    its two episodes computed apart; without it the first episode's returns see the second's."""
    rewards = torch.tensor([[0.0, 0.0, -1.0, 0.0, 5.0]])
    values = torch.tensor([[0.1, 0.2, 0.3, 0.4, 0.5]])
    ends = torch.tensor([[False, False, True, False, False]])
    adv, ret = gf.compute_gae(rewards, values, 0.9, 0.8, ends)
    first, _ = gf.compute_gae(rewards[:, :3], values[:, :3], 0.9, 0.8)
    second, _ = gf.compute_gae(rewards[:, 3:], values[:, 3:], 0.9, 0.8)
    torch.testing.assert_close(adv, torch.cat([first, second], 1))
    torch.testing.assert_close(ret, adv + values)
    across, _ = gf.compute_gae(rewards, values, 0.9, 0.8)
    assert across[0, 2] > adv[0, 2]  # across episodes the trap's step sees the goal after it


def test_video_frame_shows_the_view_beside_the_bank():
    bank = gf.MemoryBank(mem_size=8, mem_len=6, obs_shape=(16, 16, 3), ram_bytes=float("inf"))
    bank.add(0, *trajectory(2, 7, obs_shape=(16, 16, 3)))
    image = gf.video_frame(np.full((1, 16, 16, 3), 200, np.uint8), bank.get([0]))
    tile = 48
    assert image.shape == (4 * tile, 4 * tile + 4 + 6 * tile, 3) and image.dtype == np.uint8
    assert (image[:, : 4 * tile] == 200).all()  # the agent's view, enlarged
    panel = image[:, 4 * tile + 4 :]
    assert (panel[:tile, 4 * tile :] == 7).all()  # the stored failure's 2 steps, last on the right
    assert (panel[:tile, : 4 * tile] == 128).all()  # its front padding is grey
    assert (panel[tile:] == 128).all()  # empty slots


# --- the script end to end -----------------------------------------------------------------
TINY = ["--num-envs", "4", "--trial-len", "20", "--total-timesteps", "160", "--trials-per-minibatch", "2",
        "--num-train-levels", "2", "--num-test-levels", "3", "--eval-episodes", "2", "--eval-every", "1",
        "--eval-levels", "2", "--mem-size", "3", "--embed-dim", "16", "--threads", "1"]


def run_script(*flags, cwd, env=None):
    return subprocess.run([sys.executable, str(ROOT / "grid_failmem.py"), *flags], cwd=cwd, capture_output=True,
                          text=True, timeout=300, env=env)


def scalars(run_dir, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(run_dir))
    accumulator.Reload()
    return [event.value for event in accumulator.Scalars(tag)]


@pytest.mark.parametrize("agent_name", gf.AGENTS)
def test_script_trains_checkpoints_and_evaluates(agent_name, tmp_path):
    out = run_script("--agent", agent_name, "--capture-video", *TINY, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    # the device is said, never chosen silently
    assert "updates, on cpu" in out.stdout or "updates, on cuda" in out.stdout
    [run_dir] = glob.glob(str(tmp_path / "runs" / f"grid__*__{agent_name}__1__*"))
    assert glob.glob(run_dir + "/events.out.tfevents.*")
    assert len(scalars(run_dir, "losses/value_loss")) == 2
    assert len(scalars(run_dir, "eval/mean_success")) == 2
    assert all(0 <= x <= 1 for x in scalars(run_dir, "charts/first_episode_success"))
    assert len(scalars(run_dir, "charts/first_episode_success")) == 2
    assert len(scalars(run_dir, "charts/goal_after_a_failure")) == 2
    assert scalars(run_dir, "memory/bank_trajectories")[-1] <= 2 * 3  # 2 levels, N = 3
    assert len(glob.glob(str(tmp_path / "videos" / "*" / "*.gif"))) == 2
    checkpoint = Path(run_dir) / "agent.pt"
    assert checkpoint.exists()
    out = run_script("--eval-only", "--checkpoint", str(checkpoint), "--num-test-levels", "3", "--eval-episodes", "2",
                     "--threads", "1", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "bayes-optimal" in out.stdout and "3 held-out levels" in out.stdout


@pytest.mark.parametrize("mem_update, train_history", [("trial", "trial"), ("episode", "trial"), ("episode", "episode")])
def test_same_seed_gives_the_same_losses_and_rollout_matches_update(mem_update, train_history, tmp_path):
    flags = [*TINY, "--update-epochs", "1", "--trials-per-minibatch", "4", "--eval-every", "0", "--seed", "7",
             "--mem-update", mem_update, "--train-history", train_history]
    runs = []
    for name in ("a", "b"):
        assert run_script(*flags, "--exp-name", name, cwd=tmp_path).returncode == 0
        [run_dir] = glob.glob(str(tmp_path / "runs" / f"grid__{name}__*"))
        runs.append({tag: scalars(run_dir, tag) for tag in ("losses/value_loss", "losses/policy_loss",
                                                           "losses/entropy", "losses/approx_kl",
                                                           "memory/bank_filled_slots_per_trial",
                                                           "memory/bank_steps_reading_two_or_more")})
    assert runs[0] == runs[1]
    assert all(0 <= share <= 1 for share in runs[0]["memory/bank_steps_reading_two_or_more"])
    if mem_update == "trial":  # the first trial's bank fills only at its end
        assert runs[0]["memory/bank_steps_reading_two_or_more"][0] == 0
    # one epoch of one minibatch: the update's log-probs equal the rollout's, bank included
    assert max(abs(kl) for kl in runs[0]["losses/approx_kl"]) < 1e-6
    # with --mem-update episode the first trial already reads failures stored during it
    assert (runs[0]["memory/bank_filled_slots_per_trial"][0] > 0) == (mem_update == "episode")
    # the rollout's bank keeps the frame each step was taken on: a trap hit's last frame still draws every block
    bank = torch.load(Path(run_dir) / "agent.pt", weights_only=True)["banks"][0]
    palette = gf.block_palette(gf.Args().num_blocks).astype(np.uint8)
    trajectories = zip(torch.cat(bank["frames"]), bank["rewards"])  # the frames are saved in chunks
    trap_ends = [frames[-1].numpy() for frames, rewards in trajectories if rewards[-1] < 0]
    assert trap_ends
    colours_drawn = {sum(bool((frame == colour).all(-1).any()) for colour in palette) for frame in trap_ends}
    assert colours_drawn == {len(palette)}


def test_the_null_slot_is_the_bank_agents_default_and_its_checkpoint_evaluates_as_trained(tmp_path):
    assert gf.Args().null_slot and gf.Args(agent="memory-sf").null_slot
    assert not gf.Args(agent="snail").null_slot  # no bank, no read to add it to
    out = run_script(*TINY, "--eval-every", "0", "--exp-name", "null", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    [checkpoint] = glob.glob(str(tmp_path / "runs" / "grid__null__*" / "agent.pt"))
    saved = torch.load(checkpoint, weights_only=True)
    assert saved["args"]["null_slot"] and "memory_read.0.null" in saved["model"]
    # the flag is the checkpoint's: --eval-only with --no-null-slot still rebuilds the reader with its null slot
    out = run_script("--eval-only", "--checkpoint", checkpoint, "--num-test-levels", "2", "--eval-episodes", "2",
                     "--threads", "1", "--no-null-slot", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    out = run_script(*TINY, "--eval-every", "0", "--exp-name", "paper", "--no-null-slot", cwd=tmp_path)  # the paper's read
    [checkpoint] = glob.glob(str(tmp_path / "runs" / "grid__paper__*" / "agent.pt"))
    saved = torch.load(checkpoint, weights_only=True)
    assert not saved["args"]["null_slot"] and not any(".null" in key for key in saved["model"])


def test_track_without_login_goes_offline(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB")}
    env.update(HOME=str(tmp_path), WANDB_DIR=str(tmp_path), WANDB_SILENT="true")
    out = run_script("--track", *TINY, "--eval-every", "0", cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr
    assert "logging offline" in out.stdout
    assert glob.glob(str(tmp_path / "wandb" / "offline-run-*"))


BAD_FLAGS = [
    (dict(agent="lstm"), "--agent"),
    (dict(grid_size=-4), "--grid-size"),
    (dict(num_blocks=256), "--num-blocks"),
    (dict(num_blocks=-1), "--num-blocks"),
    (dict(num_blocks=3, block_colours=2), "--block-colours"),
    (dict(obs_size=20), "--obs-size"),
    (dict(mem_len=81), "--mem-len"),
    (dict(train_history="all"), "--train-history"),
    (dict(train_history="episode", agent="snail"), "--train-history"),
    (dict(mem_len=0), "--mem-len"),
    (dict(mem_size=-8), "--mem-size"),
    (dict(num_envs=0), "--num-envs"),
    (dict(bank_ram_mb=-1), "--bank-ram-mb"),
    (dict(num_train_levels=0), "--num-train-levels"),
    (dict(trial_len=1), "--trial-len"),
    (dict(mem_update="step"), "--mem-update"),
    (dict(norm_adv="yes"), "--norm-adv"),
    (dict(mem_update="episode", agent="snail"), "--mem-update"),
    (dict(mem_update="episode", agent="snail-cat"), "--mem-update"),
    (dict(cnn_channels=()), "--cnn-channels"),
    (dict(cnn_channels=(16, 0)), "--cnn-channels"),
    (dict(cnn_blocks=-1), "--cnn-blocks"),
    (dict(cnn_out=0), "--cnn-out"),
    (dict(snail_blocks=0), "--snail-blocks"),
    (dict(snail_filters=0), "--snail-filters"),
    (dict(test_history="all"), "--test-history"),
    (dict(eval_split="valid", eval_only=True, checkpoint=str(ROOT / "README.md")), "--eval-split must be test or train"),
    (dict(eval_split="train"), "--eval-split is read by --eval-only only"),
    (dict(eval_only=True), "--checkpoint"),
    (dict(eval_only=True, checkpoint="missing.pt"), "--checkpoint"),
    (dict(ent_coef=-1), "--ent-coef"),
    (dict(clip_coef=-0.5), "--clip-coef"),
    (dict(vf_coef=-1), "--vf-coef"),
    (dict(max_grad_norm=-1), "--max-grad-norm"),
    (dict(max_grad_norm=0), "--max-grad-norm"),
    (dict(target_kl=0.0), "--target-kl"),
    (dict(learning_rate=float("nan")), "--learning-rate"),
    (dict(learning_rate=10.0), "--learning-rate"),
    (dict(bank_ram_mb=float("nan")), "--bank-ram-mb"),
    (dict(seed=-1), "--seed"),
    (dict(checkpoint_minutes=-1), "--checkpoint-minutes"),
    (dict(stop_after=-1), "--stop-after"),
    (dict(checkpoint=str(ROOT / "README.md")), "--checkpoint is read by --eval-only only"),
    (dict(eval_only=True, checkpoint=str(ROOT / "README.md"), resume=str(ROOT / "README.md")), "--resume"),
    (dict(resume="missing.pt"), "--resume missing.pt does not exist"),
    (dict(eval_only=True, checkpoint=str(ROOT)), f"--checkpoint {ROOT} is not a file"),
    (dict(resume=str(ROOT)), f"--resume {ROOT} is not a file"),
    (dict(init_from="missing.pt"), "--init-from missing.pt does not exist"),
    (dict(init_from=str(ROOT / "README.md"), resume=str(ROOT / "README.md")), "--init-from starts a new training run"),
    (dict(init_from=str(ROOT / "README.md"), eval_only=True, checkpoint=str(ROOT / "README.md")), "--init-from"),
]


@pytest.mark.parametrize("fields,name", BAD_FLAGS)
def test_bad_flag_value_is_named_in_one_line(fields, name):
    with pytest.raises(SystemExit) as stop:
        gf.check_args(gf.Args(**fields))
    message = str(stop.value.code)
    assert "\n" not in message and name in message and message.startswith("grid_failmem.py: error:")


def test_good_flags_pass_the_check():
    gf.check_args(gf.Args())
    gf.check_args(gf.Args(mem_len=80, obs_size=64, agent="snail"))


@pytest.mark.parametrize("flags,name", [(["--agent", "lstm"], "--agent"), (["--mem-len", "81"], "--mem-len"),
                                        (["--eval-only", "--checkpoint", "missing.pt"], "--checkpoint"),
                                        (["--ent-coef", "-1"], "--ent-coef")])
def test_bad_flag_stops_the_script_with_one_line(flags, name, tmp_path):
    out = run_script(*flags, cwd=tmp_path)
    assert out.returncode != 0
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and name in lines[0], out.stderr
    assert not (tmp_path / "runs").exists()  # no work started


# --- checkpoints: resumable bit for bit, checked before any work (saves: test_bank.py) -------
RESUME = [*TINY, "--total-timesteps", "240", "--eval-every", "2", "--mem-update", "episode", "--bank-ram-mb", "0.001"]


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory):
    """A tiny run of 3 updates stopped after the first, as --stop-after does: (cwd, checkpoint)."""
    cwd = tmp_path_factory.mktemp("stopped")
    out = run_script(*RESUME, "--exp-name", "stopped", "--stop-after", "1", cwd=cwd)
    assert out.returncode == 0, out.stderr
    assert "stopped as --stop-after asks after update 1/3" in out.stdout
    return cwd, Path(out.stdout.split("checkpoint: ")[-1].split()[0])


def all_scalars(run_dir):
    """Every logged scalar as (step, value) lists, but timings, which differ from run to run."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {tag: [(event.step, event.value) for event in accumulator.Scalars(tag)]
            for tag in accumulator.Tags()["scalars"] if not tag.startswith(("perf/", "charts/SPS"))}


def test_resume_ends_bit_identical_to_an_uninterrupted_run(stopped_run, tmp_path):
    """The memory agent with --mem-update episode and a RAM bound that evicts: 3 updates straight
    against 1 update, a stop and --resume to 3 (the same learning-rate schedule, over 3 updates)."""
    cwd, checkpoint = stopped_run
    resumed = shutil.copytree(cwd, tmp_path / "resumed")
    out = run_script(*RESUME, "--exp-name", "stopped", "--resume", str(checkpoint), cwd=resumed)
    assert out.returncode == 0, out.stderr
    assert "resumed from" in out.stdout and "update 2/3" in out.stdout and "update 1/3" not in out.stdout
    straight = run_script(*RESUME, "--exp-name", "straight", cwd=tmp_path)
    assert straight.returncode == 0, straight.stderr
    [straight_dir] = glob.glob(str(tmp_path / "runs" / "grid__straight__*"))
    mine, theirs = (torch.load(Path(d) / "agent.pt", weights_only=True) for d in (resumed / checkpoint.parent, straight_dir))
    assert mine["model"].keys() == theirs["model"].keys()
    assert all(torch.equal(mine["model"][key], theirs["model"][key]) for key in mine["model"])
    assert mine["iteration"] == theirs["iteration"] == 3 and mine["banks"][0]["evicted"].tolist()
    logged, expected = all_scalars(resumed / checkpoint.parent), all_scalars(straight_dir)
    assert logged.keys() == expected.keys() and "eval/mean_success" in logged
    np.testing.assert_equal(logged, expected)  # NaN (explained variance of a flat return) equals NaN


def test_resume_keeps_the_flags_of_its_run(stopped_run):
    cwd, checkpoint = stopped_run
    out = run_script("--resume", str(checkpoint), "--num-envs", "8", cwd=cwd)
    assert out.returncode != 0 and out.stderr.strip().splitlines() == [
        f"grid_failmem.py: error: --resume {checkpoint} was made with --num-envs 4, not 8; a resumed run keeps its flags"]


def test_init_from_starts_a_new_run_from_the_weights_on_another_grid(stopped_run, tmp_path):
    """A curriculum's second stage: the stopped run's weights (3 blocks) go on with 2 blocks at an
    lr too small to move them, so the new run ends where it began; without --init-from it does not."""
    cwd, checkpoint = stopped_run
    start = torch.load(cwd / checkpoint, weights_only=True)["model"]
    flags = [*TINY, "--num-blocks", "2", "--learning-rate", "1e-12", "--eval-every", "0"]
    for name, extra in (("warm", ["--init-from", str(cwd / checkpoint)]), ("cold", [])):
        out = run_script(*flags, "--exp-name", name, *extra, cwd=tmp_path)
        assert out.returncode == 0, out.stderr
    warm, cold = (torch.load(glob.glob(str(tmp_path / "runs" / f"grid__{name}__*" / "agent.pt"))[0],
                          weights_only=True)["model"] for name in ("warm", "cold"))
    # the critic's return moments (--value-norm) are running statistics of the data, which no lr holds still
    weights = [key for key in start if key != "value_norm.moments"]
    assert all(torch.allclose(warm[key].float(), start[key].float(), atol=1e-6) for key in weights)
    assert not all(torch.allclose(cold[key].float(), start[key].float(), atol=1e-6) for key in weights)
    assert not torch.equal(warm["value_norm.moments"], start["value_norm.moments"])


@pytest.mark.parametrize("made_with,run_with", [(False, True), (True, False)])
def test_init_from_gives_the_critic_a_time_input_or_takes_it_away(stopped_run, tmp_path, capsys, made_with, run_with):
    """A checkpoint made with the other --time-aware-value starts a run, saying so: its critic gains t / T with
    weight 0, so it values every step as before, or loses it; every other weight is the checkpoint's."""
    cwd, checkpoint = stopped_run
    saved = torch.load(cwd / checkpoint, weights_only=True)
    made_args, run_args = (dataclasses.replace(gf.checkpoint_args(saved), time_aware_value=flag)
                           for flag in (made_with, run_with))
    made = gf.Agent(made_args, len(gf.MOVES)).state_dict()
    torch.save(dict(saved, args=vars(made_args), model=made), tmp_path / "made.pt")
    model = gf.init_weights(run_args, str(tmp_path / "made.pt"))
    assert ("gets a t / T input" if run_with else "loses its t / T input") in capsys.readouterr().out
    assert all(torch.equal(model[key], made[key]) for key in made if key != "critic.weight")
    width = made["critic.weight"].shape[1] - made_with
    assert model["critic.weight"].shape == (1, width + run_with)
    assert torch.equal(model["critic.weight"][:, :width], made["critic.weight"][:, :width])
    assert not run_with or model["critic.weight"][0, -1] == 0


@pytest.mark.parametrize("made_with,run_with", [(False, True), (True, False)])
def test_init_from_starts_or_drops_the_critics_return_moments(stopped_run, tmp_path, capsys, made_with, run_with):
    """A checkpoint made with the other --value-norm starts a run, saying so: with it the moments start unseen (the
    identity, so the critic values every step as before), without it they are dropped; every weight is kept."""
    cwd, checkpoint = stopped_run
    saved = torch.load(cwd / checkpoint, weights_only=True)
    made_args, run_args = (dataclasses.replace(gf.checkpoint_args(saved), value_norm=flag)
                           for flag in (made_with, run_with))
    made = gf.Agent(made_args, len(gf.MOVES)).state_dict()
    if made_with:
        made["value_norm.moments"] += torch.tensor([2.0, 9.0, 0.5], dtype=torch.float64)
    torch.save(dict(saved, args=vars(made_args), model=made), tmp_path / "made.pt")
    model = gf.init_weights(run_args, str(tmp_path / "made.pt"))
    assert ("starts" if run_with else "stops") + " learning standardised returns" in capsys.readouterr().out
    assert all(torch.equal(model[key], made[key]) for key in made if key != "value_norm.moments")
    assert ("value_norm.moments" in model) == run_with
    assert not run_with or not model["value_norm.moments"].any()


@pytest.mark.parametrize("flags,problem", [(["--embed-dim", "32"], "do not fit the network"),
                                           (["--agent", "snail"], "holds a memory agent, not the snail agent")])
def test_init_from_weights_that_do_not_fit_stop_with_one_line(stopped_run, flags, problem, tmp_path):
    cwd, checkpoint = stopped_run
    out = run_script(*TINY, "--init-from", str(cwd / checkpoint), *flags, cwd=tmp_path)
    lines = out.stderr.strip().splitlines()
    assert out.returncode != 0 and len(lines) == 1 and problem in lines[0] and "--init-from" in lines[0], out.stderr
    assert not (tmp_path / "runs").exists()  # no work started


def test_a_checkpoint_older_than_the_history_flags_is_read_as_made_per_trial(stopped_run, tmp_path):
    """Those flags came later and their defaults changed since: an old run updated bank and SNAIL per trial."""
    cwd, checkpoint = stopped_run
    saved = torch.load(cwd / checkpoint, weights_only=True)
    assert gf.checkpoint_args(saved).mem_update == "episode"  # the stopped run's own flags
    old = dict(saved, args={k: v for k, v in saved["args"].items() if k not in ("mem_update", "train_history")})
    assert (gf.checkpoint_args(old).mem_update, gf.checkpoint_args(old).train_history) == ("trial", "trial")
    torch.save(old, tmp_path / "old.pt")
    agent = gf.load_checkpoint(str(tmp_path / "old.pt"), gf.Args(), 4, "cpu")
    assert not agent.episode_history


def test_a_checkpoint_older_than_the_network_size_flags_loads_as_the_paper_sizes(stopped_run, tmp_path):
    """Before 2026-11-25 (826c7d9) runs had the paper's IMPALA and SNAIL sizes, SNAIL's pairs were named
    tc1, attn1, tc2, attn2, and the test SNAIL read the whole trial: such a checkpoint loads and evaluates."""
    cwd, checkpoint = stopped_run
    saved = torch.load(cwd / checkpoint, weights_only=True)
    newer = ("cnn_channels", "cnn_blocks", "cnn_out", "snail_blocks", "snail_filters", "mem_update", "train_history",
             "test_history", "time_aware_value", "episodic_gae", "null_slot")
    old_args = {k: v for k, v in saved["args"].items() if k not in newer}
    assert not gf.checkpoint_args(dict(saved, args=old_args)).time_aware_value  # the default since, off before
    assert not gf.checkpoint_args(dict(saved, args=old_args)).null_slot  # the same
    paper = gf.Agent(gf.checkpoint_args(dict(saved, args=old_args)), 4)
    assert sum(isinstance(m, common.ResidualBlock) for m in paper.cnn.modules()) == 3 * 2 and len(paper.snail.layers) == 4
    old_model = with_old_snail_names(paper.state_dict(), prefix="snail.")
    assert "snail.attn2.query.weight" in old_model
    torch.save(dict(saved, args=old_args, model=old_model), tmp_path / "old.pt")
    assert gf.checkpoint_args(torch.load(tmp_path / "old.pt", weights_only=True)).test_history == "trial"
    agent = gf.load_checkpoint(str(tmp_path / "old.pt"), gf.Args(), 4, "cpu")  # the lean defaults lose
    assert all(torch.equal(agent.state_dict()[key], value) for key, value in paper.state_dict().items())
    out = run_script("--eval-only", "--checkpoint", str(tmp_path / "old.pt"), "--num-test-levels", "2",
                     "--eval-episodes", "2", "--threads", "1", cwd=tmp_path)
    assert out.returncode == 0 and "2 held-out levels" in out.stdout, out.stderr[-3000:]


def damaged_checkpoints(checkpoint, folder):
    """(path, flag, what the line must say) for each kind of file no run can use."""
    saved = torch.load(checkpoint, weights_only=True)
    files = {"empty.pt": b"", "truncated.pt": checkpoint.read_bytes()[:4096], "random.pt": os.urandom(4096)}
    for name, data in files.items():
        (folder / name).write_bytes(data)
    torch.save(saved["model"], folder / "bare.pt")
    torch.save(dict(saved, script="reacher_failmem.py"), folder / "other.pt")
    torch.save(dict(saved, args=dict(saved["args"], embed_dim=32)), folder / "flags.pt")
    torch.save(dict(model=saved["model"], args=saved["args"], global_step=80), folder / "weights_only.pt")
    return [("empty.pt", "--checkpoint", "is empty"), ("truncated.pt", "--checkpoint", "damaged"),
            ("random.pt", "--checkpoint", "damaged"), ("bare.pt", "--checkpoint", "bare state dict"),
            ("other.pt", "--checkpoint", "written by reacher_failmem.py"), ("flags.pt", "--checkpoint", "do not fit"),
            ("weights_only.pt", "--resume", "weights only"), ("empty.pt", "--resume", "is empty")]


def test_each_unusable_checkpoint_is_named_in_one_line(stopped_run, tmp_path):
    cwd, checkpoint = stopped_run
    for name, flag, problem in damaged_checkpoints(cwd / checkpoint, tmp_path):
        with pytest.raises(SystemExit) as stop:
            gf.read_checkpoint(str(tmp_path / name), flag)
        message = str(stop.value.code)
        assert message.startswith(f"grid_failmem.py: error: {flag} {tmp_path / name} ") and problem in message
        assert "\n" not in message
    # and from the command line, before any work
    out = run_script("--eval-only", "--checkpoint", str(tmp_path / "truncated.pt"), cwd=tmp_path)
    assert out.returncode != 0 and len(out.stderr.strip().splitlines()) == 1 and "damaged" in out.stderr
    assert not (tmp_path / "runs").exists()


def test_a_nan_loss_stops_with_one_line_and_keeps_the_last_checkpoint(stopped_run, tmp_path):
    """An optimizer state that throws the weights to 1e30 on the first step: the update's loss is NaN."""
    cwd, checkpoint = stopped_run
    run = shutil.copytree(cwd, tmp_path / "nan")
    saved = torch.load(run / checkpoint, weights_only=True)
    for state in saved["optimizer"]["state"].values():
        state["exp_avg"].fill_(1e30)
        state["exp_avg_sq"].zero_()
    torch.save(saved, run / checkpoint)
    before = (run / checkpoint).read_bytes()
    out = run_script(*RESUME, "--exp-name", "stopped", "--resume", str(checkpoint), "--checkpoint-minutes", "0", cwd=run)
    assert out.returncode == 1
    assert out.stderr.strip().splitlines() == [
        f"grid_failmem.py: error: update 2: the loss became NaN or infinite (value_loss, policy_loss, entropy, "
        f"old_approx_kl, approx_kl); its weights are not saved, the checkpoint {checkpoint} (update 1) is kept"]
    assert (run / checkpoint).read_bytes() == before


def test_sigint_stops_after_the_update_with_a_checkpoint_and_no_traceback(tmp_path):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    run = subprocess.Popen([sys.executable, str(ROOT / "grid_failmem.py"), *TINY, "--total-timesteps", "80000",
                            "--eval-every", "0"], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
    for line in run.stdout:
        if line.startswith("update 1/"):
            break
    run.send_signal(signal.SIGINT)
    stdout, stderr = run.communicate(timeout=120)
    assert run.returncode == 130 and stderr == ""
    last = stdout.strip().splitlines()[-1]
    assert last.startswith("stopped by SIGINT after update ") and "/1000; checkpoint: runs/" in last
    checkpoint = last.split("checkpoint: ")[1].split()[0]
    assert gf.read_checkpoint(str(tmp_path / checkpoint), "--resume")["iteration"] >= 1


def test_a_signal_before_training_stops_with_one_line(tmp_path):
    """What the script installs right after checking its flags: Ctrl-C or SIGTERM while it starts up
    (reading a checkpoint, W&B, building the agent) ends it with one line, not a traceback."""
    code = (f"import os, signal, sys; sys.path.insert(0, {str(ROOT)!r}); import grid_failmem as gf\n"
            "gf.StopSignals(graceful=False, kept='nothing was trained yet')\n"
            "os.kill(os.getpid(), signal.SIGTERM)\n"
            "print('not stopped')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 1 and not out.stdout
    assert out.stderr.strip().splitlines() == ["grid_failmem.py: stopped by SIGTERM; nothing was trained yet"]


def test_eval_only_takes_the_grid_of_the_checkpoint(tmp_path):
    """A checkpoint trained on an 8 x 8 grid with 2 blocks is evaluated on 8 x 8 levels with 2 blocks
    when --eval-only is given no grid flags (it drew 16 x 16 levels and failed with an IndexError);
    `--eval-split train` plays the levels it trained on, and asks for no more of them than there were."""
    out = run_script(*TINY, "--grid-size", "8", "--num-blocks", "2", "--agent", "ppo-finetune", "--eval-every", "0",
                     cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    [checkpoint] = glob.glob(str(tmp_path / "runs" / "*" / "agent.pt"))
    out = run_script("--eval-only", "--checkpoint", checkpoint, "--num-test-levels", "3", "--threads", "1", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "3 held-out levels" in out.stdout and "0.500" in out.stdout  # Bayes-optimal, episode 1 of 2 blocks
    # its training levels: the first of the 2 it trained on, and no more than those
    out = run_script("--eval-only", "--checkpoint", checkpoint, "--eval-split", "train", "--num-test-levels", "2",
                     "--threads", "1", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "2 training levels" in out.stdout
    evaluations = glob.glob(str(tmp_path / "runs" / "*__eval__*"))
    out = run_script("--eval-only", "--checkpoint", checkpoint, "--eval-split", "train", "--num-test-levels", "3",
                     "--threads", "1", cwd=tmp_path)
    assert out.returncode == 1 and not out.stdout
    assert out.stderr.strip().splitlines() == [
        "grid_failmem.py: error: --num-test-levels 3 with --eval-split train asks for more levels than the checkpoint "
        "trained on (2)"]
    assert glob.glob(str(tmp_path / "runs" / "*__eval__*")) == evaluations  # stopped before any work


def test_a_rollout_draws_distinct_levels_unless_there_are_fewer_levels_than_envs():
    rng = np.random.default_rng(0)
    for _ in range(200):  # with replacement, 16 of 200 levels repeat one in about half the draws
        assert len(set(gf.rollout_levels(rng, 200, 16).tolist())) == 16
    few = gf.rollout_levels(rng, 3, 16)
    assert len(few) == 16 and set(few.tolist()) <= {0, 1, 2}


def test_failures_seen_counts_the_filled_slots_each_step_read():
    # two envs, a trial of 5 steps, 3 slots: env 0 stored a failure after step 0 and another after step 2; env 1 none
    valid = torch.zeros(2, 3, 4, dtype=torch.bool)
    valid[0, :2, 1:] = True
    visible = torch.zeros(2, 5, 3, dtype=torch.bool)
    visible[0, 1:, 0] = True
    visible[0, 3:, 1] = True
    visible[1, :, 2] = True  # a visible slot with nothing in it is not a read failure
    view = gf.BankView(None, None, None, valid, visible)
    assert gf.failures_seen(view).tolist() == [[0, 1, 1, 2, 2], [0, 0, 0, 0, 0]]

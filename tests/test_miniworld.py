"""Tests of miniworld_failmem.py: the room's rules first, then the script end to end in a
subprocess, as CleanRL tests its scripts. Headless (EGL); about 2.5 minutes on 2 busy cores."""

import math
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import common  # noqa: E402
import miniworld_failmem as mw  # noqa: E402

torch.set_num_threads(1)  # the env renders on the same cores; more threads only wait on each other

SCRIPT = os.path.join(ROOT, "miniworld_failmem.py")
TINY = [
    "--threads", "1", "--num-envs", "2", "--num-workers", "2", "--trial-len", "10", "--obs-size", "32",
    "--num-train-levels", "20", "--num-test-levels", "2", "--eval-episodes", "2", "--eval-levels", "2",
    "--trials-per-minibatch", "1", "--update-epochs", "1", "--mem-len", "3", "--embed-dim", "16",
]  # fmt: skip


@pytest.fixture(scope="module")
def levels():
    return mw.make_levels("train", 30)


def steer(env, box):
    """Turn until the agent faces box `box` within half a turn step, then go forward."""
    dx, dz = env.boxes[box].pos[[0, 2]] - env.agent.pos[[0, 2]]
    # miniworld's heading: dir_vec = (cos(dir), 0, -sin(dir)); turning left adds to dir
    error = (math.atan2(-dz, dx) - env.agent.dir + math.pi) % (2 * math.pi) - math.pi
    return mw.FORWARD if abs(error) <= math.radians(9) else mw.TURN_LEFT if error > 0 else mw.TURN_RIGHT


def drive_to(env, box, max_steps=80):
    """Steer at box `box`; the transitions (reward, terminated, truncated, info) until the end."""
    transitions = []
    for _ in range(max_steps):
        transitions.append(env.step(steer(env, box))[1:])
        if transitions[-1][1] or transitions[-1][2]:
            break
    return transitions


def test_touching_target_gives_plus_five_and_trap_minus_one(levels):
    env = mw.MiniworldFailmem(levels, obs_size=32, max_episode_steps=80)
    outcomes = {"goal": 0, "trap": 0, "aimed": 0}
    for level in range(10):
        for box in range(mw.NUM_BOXES):
            env.reset(options={"level": level})
            transitions = drive_to(env, box)
            *before, (reward, terminated, truncated, info) = transitions
            assert all(r == 0 and not te and not tr for r, te, tr, _ in before)
            assert terminated and not truncated, f"level {level}: the agent never reached box {box}"
            assert info["hit"] >= 0
            outcomes["aimed"] += info["hit"] == box  # another box may stand in the way
            if info["hit"] == env.goal:
                assert reward == 5.0 and info["success"]
                outcomes["goal"] += 1
            else:
                assert reward == -1.0 and not info["success"]
                outcomes["trap"] += 1
    assert outcomes["goal"] >= 5 and outcomes["trap"] >= 10 and outcomes["aimed"] >= 25, outcomes


def test_touch_needs_the_forward_move(levels):
    """Next to a box, turning in place never touches it; the forward move into it does."""
    env = mw.MiniworldFailmem(levels, obs_size=32)
    env.reset(options={"level": 0})
    transitions = drive_to(env, 0)
    steps = len(transitions)
    assert transitions[-1][3]["hit"] == 0
    env.reset(options={"level": 0})  # the same approach again, stopped one step short
    for _ in range(steps - 1):
        assert env.step(steer(env, 0))[1:3] == (0.0, False)
    assert steer(env, 0) == mw.FORWARD
    for _ in range(20):  # 20 x 18 deg: a full turn in place, back to the same heading
        _, reward, terminated, _, info = env.step(mw.TURN_LEFT)
        assert reward == 0 and not terminated and info["hit"] == -1
    _, reward, terminated, _, info = env.step(mw.FORWARD)
    assert terminated and info["hit"] == 0 and reward == (5.0 if env.goal == 0 else -1.0)


def test_timeout_truncates(levels):
    env = mw.MiniworldFailmem(levels, obs_size=32, max_episode_steps=10)
    env.reset(options={"level": 2})
    for t in range(10):
        _, reward, terminated, truncated, info = env.step(mw.TURN_LEFT)
        assert reward == 0 and not terminated and info["hit"] == -1
        assert truncated == (t == 9)


def test_a_level_is_the_same_every_time(levels):
    again = mw.make_levels("train", 30)
    for key in levels:
        np.testing.assert_array_equal(levels[key], again[key])
    actions = [0, 0, 1, 0, 2, 2, 0, 1, 0, 0]
    first, second = mw.MiniworldFailmem(levels, 32), mw.MiniworldFailmem(again, 32)
    for level in (0, 7):
        runs = []
        for env in (first, second, first):
            frames = [env.reset(options={"level": level})[0]] + [env.step(a)[0] for a in actions]
            runs.append(np.stack(frames))
        np.testing.assert_array_equal(runs[0], runs[1])
        np.testing.assert_array_equal(runs[0], runs[2])
    # and different levels look different
    assert not np.array_equal(first.reset(options={"level": 0})[0], first.reset(options={"level": 1})[0])


def test_train_and_test_levels_are_disjoint():
    train, test = mw.make_levels("train", 10000), mw.make_levels("test", 1000)

    def layouts(lv):  # agent start, box centres (m), box colours and target, one row per level
        return np.concatenate(
            [lv["starts"], lv["boxes"].reshape(len(lv["goals"]), -1), lv["colours"], lv["goals"][:, None]], 1
        )

    a, b = layouts(train), layouts(test)
    for chunk in np.array_split(b, 10):
        # no held-out layout within 5 cm of a training one in every coordinate
        diff = np.abs(chunk[:, None, :8] - a[None, :, :8]).max(-1)
        assert diff.min() > 0.05
    # the task itself differs too, not only its coordinates: box colours and the target vary
    assert len({tuple(row) for row in b[:, 8:]}) > 20


def test_observation_shape_and_dtype(levels):
    for size in (32, 64):
        env = mw.MiniworldFailmem(levels, obs_size=size)
        obs, info = env.reset(options={"level": 4})
        assert obs.shape == (size, size, 3) and obs.dtype == np.uint8
        assert env.observation_space.contains(obs) and info["level"] == 4
        assert obs.std() > 10  # a rendered room, not a blank frame
        assert env.step(mw.FORWARD)[0].shape == (size, size, 3)
        assert env.action_space.n == 3


def test_env_checker(levels):
    check_env(mw.MiniworldFailmem(levels, obs_size=32), skip_render_check=True)


def test_vector_matches_single_envs_and_restarts_the_level():
    """The worker processes give what single envs give; an episode end restarts the same level."""
    level_sets = {"train": mw.make_levels("train", 20), "test": mw.make_levels("test", 5)}
    vector = mw.MiniworldVector(level_sets, num_envs=4, num_workers=2, obs_size=32, max_episode_steps=6)
    singles = [mw.MiniworldFailmem(level_sets["test"], 32, 6) for _ in range(4)]
    try:
        ids = np.array([3, 1, 4, 0])
        frames = vector.set_levels(ids, split="test")
        expected = np.stack([env.reset(options={"level": int(i)})[0] for env, i in zip(singles, ids)])
        np.testing.assert_array_equal(frames, expected)
        rng = np.random.default_rng(0)
        ended = 0
        for _ in range(14):
            actions = rng.integers(3, size=4)
            frames, rewards, terminated, truncated, info = vector.step(actions)
            for k, (env, a) in enumerate(zip(singles, actions)):
                obs, reward, te, tr, single_info = env.step(int(a))
                if te or tr:
                    ended += 1
                    obs = env.reset(options={"level": int(ids[k])})[0]
                np.testing.assert_array_equal(frames[k], obs)
                assert (rewards[k], terminated[k], truncated[k], info["hit"][k]) == (reward, te, tr, single_info["hit"])
        assert ended >= 4  # every env ran past its 6-step limit at least once
    finally:
        vector.close()


# --- memory bank and agent: what the rollout steps through is what the update reads whole ---
def trajectory(length, value, obs_shape=(4, 4, 3)):
    return (np.full((length, *obs_shape), value, np.uint8), np.full(length, value % 3, np.int64),
            np.full(length, -1.0, np.float32))


def test_trial_memory_shows_each_stored_episode_from_the_next_step():
    bank = mw.MemoryBank(mem_size=2, mem_len=4, obs_shape=(4, 4, 3), ram_bytes=float("inf"))
    bank.add(5, *trajectory(5, 1))
    trial = mw.TrialMemory(bank, [5, 6])
    assert trial.store(0, 3, *trajectory(4, 2)) == 1  # env 0 (level 5) fails at step 3
    assert trial.store(0, 7, *trajectory(4, 3)) == 2  # and at step 7: the bank drops trajectory 1
    assert trial.store(1, 0, *trajectory(1, 4)) == 0  # env 1 (level 6) fails at step 0
    visible = trial.visible(4, range(10))
    assert visible[0, :, 0].tolist() == [True] * 8 + [False] * 2  # in the bank until step 7's episode
    assert visible[0, :, 1].tolist() == [False] * 4 + [True] * 6
    assert visible[0, :, 2].tolist() == [False] * 8 + [True] * 2
    assert visible[1, :, 0].tolist() == [False] + [True] * 9
    assert not visible[:, :, 3].any() and not visible[1, :, 1:].any()
    frames, _, _, valid, _ = trial.arrays(4)
    assert [frames[0, j, -1, 0, 0, 0] for j in range(3)] == [1, 2, 3]
    assert valid[1, 0].tolist() == [False, False, False, True]  # padded at the front
    assert [t[0][-1, 0, 0, 0] for t in bank.banks[5]] == [2, 3]  # the bank itself is a FIFO of N = 2
    # the success bank of memory-sf is emptied once full: its slots vanish together
    successes = mw.MemoryBank(mem_size=2, mem_len=4, obs_shape=(4, 4, 3), ram_bytes=float("inf"), clear_when_full=True)
    trial = mw.TrialMemory(successes, [0])
    for t, value in ((1, 1), (2, 2), (5, 3)):
        trial.store(0, t, *trajectory(3, value))
    assert trial.visible(3, [2, 3, 6])[0].tolist() == [[True, False, False], [True, True, False], [False, False, True]]


def test_which_episodes_enter_which_bank():
    assert [mw.bank_for(name, False) for name in mw.AGENTS] == [0, None, 0, 0, 0, None, None]
    assert [mw.bank_for(name, True) for name in mw.AGENTS] == [None, None, None, 1, 0, None, None]


def small_args(**overrides):
    small = dict(obs_size=16, trial_len=12, mem_size=3, mem_len=4, embed_dim=16, num_heads=4)
    return mw.Args(**{**small, **overrides})


def random_trials(batch, steps, num_slots=3, seed=0):
    """Frames, previous actions and rewards, episode starts and a bank (BankView) of random trials."""
    g = torch.Generator().manual_seed(seed)
    frames = torch.randint(0, 256, (batch, steps, 16, 16, 3), dtype=torch.uint8, generator=g)
    prev_actions, prev_rewards = torch.randint(0, 3, (batch, steps), generator=g), torch.randn(batch, steps, generator=g)
    starts = (torch.rand(batch, steps, generator=g) < 0.2).float()
    starts[:, 0] = 1
    bank = mw.BankView(torch.randint(0, 256, (batch, num_slots, 4, 16, 16, 3), dtype=torch.uint8, generator=g),
                       torch.randint(0, 3, (batch, num_slots, 4), generator=g), torch.randn(batch, num_slots, 4, generator=g),
                       torch.ones(batch, num_slots, 4, dtype=torch.bool), torch.ones(batch, steps, num_slots, dtype=torch.bool))
    return frames, prev_actions, prev_rewards, starts, bank


def step_through(agent, frames, prev_actions, prev_rewards, starts, banks, actions):
    """The rollout's way: one step at a time, SNAIL restarted at each episode with --train-history
    episode, each step reading the slots `visible` at it; log-probs and values (B, T)."""
    logprobs, values = [], []
    cache, memories = agent.begin_trial(banks, frames.shape[0], frames.shape[1])
    for t in range(frames.shape[1]):
        rows = torch.nonzero(starts[:, t]).flatten()
        if agent.episode_history and t and len(rows):
            agent.snail.restart(cache, rows, t)
        seen = [(memory, filled & bank.visible[:, t]) for (memory, filled), bank in zip(memories, banks)]
        logits, value = agent.step(frames[:, t], prev_actions[:, t], prev_rewards[:, t], starts[:, t], (cache, seen), t)
        logprobs.append(torch.log_softmax(logits, -1).gather(1, actions[:, t : t + 1])[:, 0])
        values.append(value)
    return torch.stack(logprobs, 1), torch.stack(values, 1)


@pytest.mark.parametrize("time_aware", [False, True])
@pytest.mark.parametrize("agent_name", mw.AGENTS)
def test_step_mode_matches_whole_trial(agent_name, time_aware):
    """The rollout's per-step outputs and the update's whole-trial outputs are the same numbers,
    so PPO's first ratio is 1; some banks empty or part filled."""
    torch.manual_seed(0)
    agent = mw.Agent(small_args(agent=agent_name, time_aware_value=time_aware), 3)
    frames, prev_actions, prev_rewards, starts, bank = random_trials(3, 12)
    bank.valid[0], bank.valid[1, 2], bank.valid[2, :, :2] = False, False, False
    banks = [bank, bank._replace(valid=bank.valid.flip(0))]
    actions = torch.randint(0, 3, (3, 12))
    with torch.no_grad():
        _, logprob, _, value = agent.get_action_and_value(frames, prev_actions, prev_rewards, starts, banks, actions)
        step_logprob, step_value = step_through(agent, frames, prev_actions, prev_rewards, starts, banks, actions)
    torch.testing.assert_close(step_logprob, logprob, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(step_value, value, atol=1e-5, rtol=1e-5)


def test_episode_history_and_a_growing_bank_step_mode_matches_whole_trial():
    """--mem-update episode --train-history episode: failures stored during the trial are read from
    the step after they ended, SNAIL restarts at each episode; stepping through gives the numbers of
    the whole-trial forward, and a step's output does not depend on an earlier episode's frames."""
    torch.manual_seed(0)
    args = small_args(agent="memory")
    assert (args.mem_update, args.train_history) == ("episode", "episode")  # the memory agent's defaults
    agent = mw.Agent(args, 3)
    frames, prev_actions, prev_rewards, _, bank = random_trials(2, 12)
    starts = torch.zeros(2, 12)
    starts[:, 0], starts[0, 5], starts[1, 3], starts[1, 4] = 1, 1, 1, 1
    visible = torch.zeros(2, 12, 3, dtype=torch.bool)
    visible[0, :, 0] = True  # env 0: one failure from earlier trials, one stored as its episode ended at step 4
    visible[0, 5:, 1] = True
    visible[1, 4:, 0], visible[1, 5:, 1] = True, True  # env 1: an empty bank, then its episodes of steps 0-2 and 3
    bank = bank._replace(visible=visible)
    actions = torch.randint(0, 3, (2, 12))
    with torch.no_grad():
        _, logprob, _, value = agent.get_action_and_value(frames, prev_actions, prev_rewards, starts, [bank], actions)
        step_logprob, step_value = step_through(agent, frames, prev_actions, prev_rewards, starts, [bank], actions)
        torch.testing.assert_close(step_logprob, logprob, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(step_value, value, atol=1e-5, rtol=1e-5)
        # the bank's growth moves the outputs: read with all slots from the start they differ
        always = agent.get_action_and_value(frames, prev_actions, prev_rewards, starts, [bank._replace(
            visible=torch.ones_like(visible))], actions)[3]
        assert not torch.allclose(always[1, :4], value[1, :4], atol=1e-4)
        other = frames.clone()
        other[0, :5] = torch.randint(0, 256, (5, 16, 16, 3), dtype=torch.uint8)  # env 0's first episode
        changed = agent.get_action_and_value(other, prev_actions, prev_rewards, starts, [bank], actions)[3]
        torch.testing.assert_close(changed[0, 5:], value[0, 5:])
        assert not torch.allclose(changed[0, :5], value[0, :5], atol=1e-4)


@pytest.mark.parametrize("time_aware", [False, True])
def test_time_aware_critic_sees_the_step_and_the_actor_does_not(time_aware):
    torch.manual_seed(0)
    args = small_args(agent="snail", time_aware_value=time_aware)
    agent = mw.Agent(args, 3)
    features, obs = torch.randn(2, 5, args.embed_dim), torch.randn(2, 5, args.embed_dim)
    with torch.no_grad():
        logits0, values0 = agent.heads(features, obs, [], 0)
        logits1, values1 = agent.heads(features, obs, [], args.trial_len)
    assert torch.equal(logits0, logits1)
    expected = agent.critic.weight[0, -1].item() if time_aware else 0.0  # its weight on t / T times the change of 1
    torch.testing.assert_close(values1 - values0, torch.full((2, 5), expected))


def test_finetune_agents_see_only_the_current_episode():
    """ppo-finetune acts on o_t alone, ppo-finetune-attn on the steps of the current episode;
    SNAIL sees the whole trial."""
    torch.manual_seed(0)
    frames = torch.randint(0, 256, (2, 12, 16, 16, 3), dtype=torch.uint8)
    other = frames.clone()
    other[:, :5] = torch.randint(0, 256, (2, 5, 16, 16, 3), dtype=torch.uint8)  # change episode 1 only
    other[:, 6] = torch.randint(0, 256, (2, 16, 16, 3), dtype=torch.uint8)  # and one step of episode 2
    starts = torch.zeros(2, 12)
    starts[:, 0] = starts[:, 5] = 1  # episode 2 starts at step 5
    zeros, actions = (torch.zeros(2, 12, dtype=torch.long), torch.zeros(2, 12)), torch.zeros(2, 12, dtype=torch.long)
    for name in ("ppo-finetune", "ppo-finetune-attn", "snail"):
        agent = mw.Agent(small_args(agent=name), 3)
        with torch.no_grad():  # the values: the actor starts near uniform
            a = agent.get_action_and_value(frames, *zeros, starts, [], actions)[3]
            b = agent.get_action_and_value(other, *zeros, starts, [], actions)[3]
        assert torch.allclose(a[:, 5], b[:, 5]) == (name != "snail"), name  # episode 1 unseen from episode 2
        assert torch.allclose(a[:, 7], b[:, 7]) == (name == "ppo-finetune"), name  # step 6 seen by attention


def test_finetune_evaluation_trains_per_episode_and_restores_the_weights(monkeypatch):
    torch.manual_seed(0)
    args = small_args(agent="ppo-finetune-attn", obs_size=32, trial_len=20, eval_episodes=3, learning_rate=1e-2)
    agent = mw.Agent(args, 3)
    trained = {k: v.clone() for k, v in agent.state_dict().items()}
    calls, changed = [], []
    original = mw.ppo_update

    def counting_update(model, optimizer, update_args, batch, device):
        before = [p.clone() for p in model.parameters()]
        stats = original(model, optimizer, update_args, batch, device)
        changed.append(any(not torch.equal(p, q) for p, q in zip(before, model.parameters())))
        calls.append(batch["actions"].shape)
        norms.append(update_args.norm_adv)
        return stats

    def recording_gae(rewards, values, gamma, gae_lambda, ends=None, last_values=None):
        after.append((rewards.shape[1], float(last_values.sum())))
        return original_gae(rewards, values, gamma, gae_lambda, ends, last_values)

    norms, after, original_gae = [], [], mw.compute_gae
    monkeypatch.setattr(mw, "ppo_update", counting_update)
    monkeypatch.setattr(mw, "compute_gae", recording_gae)
    level_sets = {"train": mw.make_levels("train", 2), "test": mw.make_levels("test", 2)}
    envs = mw.MiniworldVector(level_sets, num_envs=2, num_workers=0, obs_size=32, max_episode_steps=20)
    try:
        result = mw.evaluate(agent, args, envs, np.arange(2), "cpu")
    finally:
        envs.close()
    assert len(calls) == 2 * 3 and all(changed)  # PPO after every episode of every level
    assert all(shape[0] == 1 and 1 <= shape[1] <= 20 for shape in calls)
    assert result["success"].shape == (2, 3)
    assert set(norms) == {"off"}  # one episode an update: its advantages keep their sign
    # an episode cut by the step limit ends the trial; one ended by a touch goes on from the start's value
    assert all(value == 0 for steps, value in after if steps == 20)
    for key, value in agent.state_dict().items():  # the trained weights are untouched afterwards
        assert torch.equal(value, trained[key]), key


class RecordingVector:
    """The env vector, with the steps at which each env's episode ended on record."""

    def __init__(self, vector):
        self.vector, self.num_envs, self.level_sets, self.ends = vector, vector.num_envs, vector.level_sets, []

    def set_levels(self, level_ids, split="train"):
        self.ends.append([])
        return self.vector.set_levels(level_ids, split)

    def step(self, actions):
        out = self.vector.step(actions)
        self.ends[-1].append(out[2] | out[3])
        return out


@pytest.mark.parametrize("test_history", ["episode", "trial"])
def test_evaluation_reads_only_ended_envs_and_restarts_snail_per_episode(test_history, monkeypatch):
    """Each ended episode re-reads only its own env's bank; with --test-history episode the
    memory agent's SNAIL starts anew with each episode (earlier ones reach it through the bank),
    with trial it sees the whole trial. 3 levels on 2 envs: the padding env is never read anew."""
    torch.manual_seed(0)
    args = small_args(agent="memory", obs_size=32, trial_len=30, eval_episodes=3, test_history=test_history,
                      cnn_blocks=2, snail_blocks=2, snail_filters=32)
    agent = mw.Agent(args, 3).eval()
    torch.nn.init.normal_(agent.actor.weight, std=1.0)  # greedy actions that depend on the view
    reads, restarts = [], []
    read_banks, restart = agent.read_banks, agent.snail.restart
    monkeypatch.setattr(agent, "read_banks", lambda banks: reads.append(len(banks[0].valid)) or read_banks(banks))
    monkeypatch.setattr(agent.snail, "restart", lambda cache, rows, t: restarts.append((rows.tolist(), t))
                        or restart(cache, rows, t))
    level_sets = {"train": mw.make_levels("train", 2), "test": mw.make_levels("test", 3)}
    envs = RecordingVector(mw.MiniworldVector(level_sets, num_envs=2, num_workers=0, obs_size=32, max_episode_steps=30))
    try:
        result = mw.evaluate(agent, args, envs, np.arange(3), "cpu")
    finally:
        envs.vector.close()
    expected_reads, expected_restarts, apart = [], [], False
    for chunk, ends in enumerate(envs.ends):  # what the evaluation should have done, from the envs' record
        episode = np.array([0, 0] if chunk == 0 else [0, 3])  # the second chunk's env 1 pads: done from the start
        expected_reads.append(2)
        for t, ended in enumerate(ends):
            rows = np.flatnonzero(ended & (episode < 3))
            apart |= chunk == 0 and len(rows) == 1  # one env's episode ended while the other's went on
            episode[rows] += 1
            if len(rows):
                expected_reads.append(len(rows))
                expected_restarts.append((rows.tolist(), t + 1))
    assert apart and (result["hits"] >= 0).any()  # boxes were hit, so the two envs' episodes ended apart
    assert reads == expected_reads
    assert restarts == (expected_restarts if test_history == "episode" else [])
    assert result["success"].shape == (3, 3)


def test_gae_goes_on_from_the_value_given_after_the_last_step():
    rewards, values = torch.tensor([[0.0, 1.0, 0.0, 5.0]]), torch.tensor([[0.5, 0.2, 0.3, 0.4]])
    full, _ = mw.compute_gae(rewards, values, 0.9, 0.0)  # TD(0): each step sees one value ahead
    cut, _ = mw.compute_gae(rewards[:, :2], values[:, :2], 0.9, 0.0, last_values=values[:, 2])
    torch.testing.assert_close(cut, full[:, :2])
    ended, _ = mw.compute_gae(rewards[:, :2], values[:, :2], 0.9, 0.0)
    assert ended[0, 1] == pytest.approx(1.0 - 0.2) and cut[0, 1] == pytest.approx(1.0 + 0.9 * 0.3 - 0.2)


def test_episodic_gae_stops_the_return_at_episode_ends():
    """--episodic-gae: the advantages of a trial with an episode end after step 2 are those of
    its two episodes computed apart; without it the first episode's returns see the second's."""
    rewards = torch.tensor([[0.0, 0.0, -1.0, 0.0, 5.0]])
    values = torch.tensor([[0.1, 0.2, 0.3, 0.4, 0.5]])
    ends = torch.tensor([[False, False, True, False, False]])
    adv, ret = mw.compute_gae(rewards, values, 0.9, 0.8, ends)
    first, _ = mw.compute_gae(rewards[:, :3], values[:, :3], 0.9, 0.8)
    second, _ = mw.compute_gae(rewards[:, 3:], values[:, 3:], 0.9, 0.8)
    torch.testing.assert_close(adv, torch.cat([first, second], 1))
    torch.testing.assert_close(ret, adv + values)
    across, _ = mw.compute_gae(rewards, values, 0.9, 0.8)
    assert across[0, 2] > adv[0, 2]  # across episodes the trap's step sees the goal after it


@pytest.mark.parametrize("agent_name", mw.AGENTS)
def test_evaluate_every_agent_on_held_out_levels(agent_name):
    """Evaluation over the env vector: 3 held-out levels on 2 envs (the last chunk padded),
    greedy episodes whose bookkeeping agrees with the levels' targets and the rewards."""
    level_sets = {"train": mw.make_levels("train", 2), "test": mw.make_levels("test", 3)}
    # the paper's network sizes, which this test was written with: at these seeds their greedy actions hit boxes
    args = mw.Args(agent=agent_name, obs_size=32, trial_len=30, eval_episodes=3, mem_len=3, mem_size=2, embed_dim=16,
                   cnn_blocks=2, snail_blocks=2, snail_filters=32)
    torch.manual_seed(0)
    agent = mw.Agent(args, len(mw.ACTION_NAMES))
    torch.nn.init.normal_(agent.actor.weight, std=1.0)  # greedy actions that depend on the view, so boxes get hit
    envs = mw.MiniworldVector(level_sets, num_envs=2, num_workers=0, obs_size=32, max_episode_steps=30)
    try:
        result = mw.evaluate(agent, args, envs, np.arange(3), "cpu")
    finally:
        envs.close()
    success, hits, returns = result["success"], result["hits"], result["returns"]
    assert success.shape == hits.shape == (3, 3) and returns.shape == (3,)
    assert (hits >= 0).any()
    goals = level_sets["test"]["goals"][:3, None]
    np.testing.assert_array_equal(success, hits == goals)
    np.testing.assert_allclose(returns, (5.0 * success - 1.0 * ((hits >= 0) & ~success)).sum(1))
    summary = mw.summarize(result, mw.NUM_BOXES)
    assert sum(summary[mode] for mode in mw.ERROR_MODES) == pytest.approx(1.0)


def run_script(*flags, env=None, cwd=ROOT):
    return subprocess.run(
        [sys.executable, SCRIPT, *flags], capture_output=True, text=True, cwd=cwd, timeout=300, env=env
    )


@pytest.mark.parametrize("agent, extra", [("memory", []), ("snail", ["--value-norm"]), ("ppo-finetune", []),
                                          ("ppo-finetune-attn", [])])
def test_train_then_eval_only(agent, extra, tmp_path):
    # the memory and ppo-finetune-attn runs step their envs in 2 worker processes (ppo-finetune-attn's
    # test room then renders in this process beside them), the others in their own process; the snail run's
    # critic learns standardised returns, whose moments its checkpoint must carry to --eval-only
    workers = ["--num-workers", "2" if agent in ("memory", "ppo-finetune-attn") else "0"]
    flags = [*TINY, *workers, "--agent", agent, *extra, "--total-timesteps", "40", "--exp-name", f"pytest_{tmp_path.name}"]
    train = run_script(*flags, cwd=tmp_path)  # its runs/ and the evaluation's in tmp_path, not the repository
    assert train.returncode == 0, train.stderr[-3000:]
    assert "update 2/2" in train.stdout
    checkpoint = next(line.split()[-1] for line in train.stdout.splitlines() if line.startswith("checkpoint:"))
    checkpoint = os.path.join(tmp_path, checkpoint)
    assert os.path.isfile(checkpoint)
    if agent == "memory":
        assert " 0 trajectories" not in train.stdout.splitlines()[-10]  # failures reached the bank
    evaluation = run_script(*TINY, *workers, "--eval-only", "--checkpoint", checkpoint, cwd=tmp_path)
    assert evaluation.returncode == 0, evaluation.stderr[-3000:]
    assert "2 held-out levels" in evaluation.stdout and "bayes-optimal" in evaluation.stdout
    success_row = next(line for line in evaluation.stdout.splitlines() if line.startswith("success "))
    assert len(success_row.split()) == 4  # 2 episodes and the mean


@pytest.mark.parametrize(
    "flags, named",
    [
        (["--agent", "lstm"], "--agent"),
        (["--num-envs", "3", "--num-workers", "2"], "--num-envs"),
        (["--mem-len", "0"], "--mem-len"),
        (["--eval-only", "--checkpoint", "/nonexistent/agent.pt"], "--checkpoint"),
        (["--norm-adv", "yes"], "--norm-adv"),
        (["--num-envs", "-1"], "--num-envs must be positive"),
        (["--mem-update", "step"], "--mem-update"),
        (["--agent", "snail", "--train-history", "episode"], "--train-history"),
        (["--test-history", "all"], "--test-history"),
        (["--cnn-channels", "16", "0"], "--cnn-channels"),
        (["--snail-filters", "0"], "--snail-filters"),
    ],
)
def test_bad_flags_give_one_line(flags, named, tmp_path):
    result = run_script(*flags, cwd=tmp_path)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and named in lines[0] and "error" in lines[0], result.stderr
    assert not (tmp_path / "runs").exists()  # no work started


def test_missing_gl_gives_one_line_saying_what_to_install(tmp_path):
    """A libEGL that cannot load (an empty file first on the library path) stands in for a
    machine without Mesa's EGL."""
    for name in ("libEGL.so", "libEGL.so.1"):
        (tmp_path / name).write_bytes(b"")
    env = dict(os.environ, LD_LIBRARY_PATH=f"{tmp_path}:{os.environ.get('LD_LIBRARY_PATH', '')}")
    result = run_script("--total-timesteps", "1", env=env)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "OpenGL" in lines[0] and "apt-get install libegl1" in lines[0], result.stderr


# --- checkpoints: resumable bit for bit, checked before any work (saves: test_bank.py) -------
RESUME = [*TINY, "--num-train-levels", "2", "--total-timesteps", "60", "--eval-every", "2", "--bank-ram-mb", "0.02"]


def all_scalars(run_dir):
    """Every logged scalar as (step, value) lists, but timings, which differ from run to run."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {tag: [(event.step, event.value) for event in accumulator.Scalars(tag)]
            for tag in accumulator.Tags()["scalars"] if not tag.startswith(("perf/", "charts/SPS"))}


def test_resume_ends_bit_identical_to_an_uninterrupted_run(tmp_path):
    """The memory agent, 2 env workers, a RAM bound that evicts: 3 updates straight against 1
    update, a stop and --resume to 3 (in this process's envs: the workers hold nothing)."""
    def run(*flags):
        out = subprocess.run([sys.executable, SCRIPT, *RESUME, *flags], capture_output=True, text=True,
                             cwd=tmp_path, timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
        return out.stdout

    stopped = run("--exp-name", "resumed", "--stop-after", "1")
    assert "updates, on cpu" in stopped or "updates, on cuda" in stopped
    checkpoint = stopped.split("checkpoint: ")[-1].split()[0]
    assert "stopped as --stop-after asks after update 1/3" in stopped
    assert "resumed from" in run("--exp-name", "resumed", "--resume", checkpoint, "--num-workers", "0")
    straight = run("--exp-name", "straight").split("checkpoint: ")[-1].split()[0]
    mine, theirs = (torch.load(tmp_path / path, weights_only=True) for path in (checkpoint, straight))
    assert all(torch.equal(mine["model"][key], theirs["model"][key]) for key in theirs["model"])
    assert mine["iteration"] == theirs["iteration"] == 3 and mine["banks"][0]["evicted"].tolist()
    logged, expected = (all_scalars(tmp_path / os.path.dirname(path)) for path in (checkpoint, straight))
    assert logged.keys() == expected.keys() and "eval/mean_success" in logged
    np.testing.assert_equal(logged, expected)

    # an unusable checkpoint: one line naming it and what is wrong
    saved = torch.load(tmp_path / checkpoint, weights_only=True)
    (tmp_path / "truncated.pt").write_bytes((tmp_path / checkpoint).read_bytes()[:4096])
    torch.save(saved["model"], tmp_path / "bare.pt")
    torch.save(dict(saved, script="grid_failmem.py"), tmp_path / "other.pt")
    for name, flag, problem in [("truncated.pt", "--checkpoint", "damaged"), ("bare.pt", "--checkpoint", "bare state dict"),
                                ("other.pt", "--resume", "written by grid_failmem.py"),
                                (checkpoint, "--resume", "has finished")]:
        with pytest.raises(SystemExit) as stop:
            mw.read_checkpoint(str(tmp_path / name), flag)
        message = str(stop.value.code)
        assert message.startswith(f"miniworld_failmem.py: error: {flag} {tmp_path / name} ") and problem in message


def test_ctrl_c_stops_after_the_update_with_a_checkpoint_and_no_traceback(tmp_path):
    """SIGINT to the whole process group, as Ctrl-C in a terminal sends it: the env workers leave
    it to the main process, which finishes the update, checkpoints and exits with one line."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    run = subprocess.Popen([sys.executable, SCRIPT, *TINY, "--total-timesteps", "20000", "--eval-every", "0"],
                           cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           start_new_session=True)
    for line in run.stdout:
        if line.startswith("update 1/"):
            break
    os.killpg(run.pid, signal.SIGINT)
    stdout, stderr = run.communicate(timeout=120)
    assert run.returncode == 130 and "Traceback" not in stderr, stderr
    last = stdout.strip().splitlines()[-1]
    assert last.startswith("stopped by SIGINT after update ") and "/1000; checkpoint: runs/" in last
    checkpoint = last.split("checkpoint: ")[1].split()[0]
    assert mw.read_checkpoint(str(tmp_path / checkpoint), "--resume")["iteration"] >= 1


@pytest.mark.parametrize("fields,name", [
    (dict(num_envs=-1), "--num-envs must be positive"), (dict(ent_coef=-1), "--ent-coef"),
    (dict(clip_coef=-0.5), "--clip-coef"), (dict(vf_coef=-1), "--vf-coef"), (dict(max_grad_norm=-1), "--max-grad-norm"),
    (dict(target_kl=0.0), "--target-kl"), (dict(seed=-1), "--seed"), (dict(checkpoint="agent.pt"), "--checkpoint"),
    (dict(eval_only=True, checkpoint=ROOT), f"--checkpoint {ROOT} is not a file"),
    (dict(resume="missing.pt"), "--resume missing.pt does not exist"),
    (dict(mem_update="step"), "--mem-update"), (dict(mem_update="episode", agent="snail"), "--mem-update"),
    (dict(mem_update="episode", agent="snail-cat"), "--mem-update"),
    (dict(mem_update="episode", agent="ppo-finetune"), "--mem-update"),
    (dict(train_history="all"), "--train-history"), (dict(train_history="episode", agent="snail"), "--train-history"),
    (dict(train_history="episode", agent="ppo-finetune-attn"), "--train-history"),
    (dict(test_history="all"), "--test-history"), (dict(cnn_channels=()), "--cnn-channels"),
    (dict(eval_split="valid"), "--eval-split must be test or train"),
    (dict(eval_split="train"), "--eval-split is read by --eval-only only"),
    (dict(cnn_channels=(16, 0)), "--cnn-channels"), (dict(cnn_blocks=-1), "--cnn-blocks"), (dict(cnn_out=0), "--cnn-out"),
    (dict(snail_blocks=0), "--snail-blocks"), (dict(snail_filters=0), "--snail-filters"),
])
def test_bad_flag_value_is_named_in_one_line(fields, name):
    with pytest.raises(SystemExit) as stop:
        mw.check_args(mw.Args(**fields))
    message = str(stop.value.code)
    assert "\n" not in message and name in message and message.startswith("miniworld_failmem.py: error:")


def test_a_rollout_draws_distinct_levels_unless_there_are_fewer_levels_than_envs():
    rng = np.random.default_rng(0)
    for _ in range(200):  # with replacement, 16 of 200 levels repeat one in about half the draws
        assert len(set(mw.rollout_levels(rng, 200, 16).tolist())) == 16
    few = mw.rollout_levels(rng, 3, 16)
    assert len(few) == 16 and set(few.tolist()) <= {0, 1, 2}


def test_history_flags_default_by_agent_and_the_defaults_pass_the_check():
    """Episode for the agents with a bank, trial for the others; every agent's defaults are valid."""
    for name in mw.AGENTS:
        args = mw.Args(agent=name)
        mw.check_args(args)
        expected = "episode" if name in mw.MEMORY_AGENTS else "trial"
        assert (args.mem_update, args.train_history, args.test_history) == (expected, expected, "episode"), name
    assert mw.Args(agent="memory", mem_update="trial", train_history="trial").train_history == "trial"


# --- the training loop: what the update reads is what the rollout saw -----------------------
# 3 updates of one epoch of one minibatch; the first, at lr 0.02, makes the policy sharp enough that a
# rollout-update mismatch shows in the next updates' KL (the first's near-uniform policy hides it: a rollout
# without SNAIL restarts, or an update that sees slots before they were stored, gave 1e-5 to 1e-3 there)
ROLLOUT = ["--threads", "1", "--num-envs", "4", "--num-workers", "0", "--trial-len", "80", "--obs-size", "32",
           "--num-train-levels", "20", "--total-timesteps", "960", "--update-epochs", "1", "--trials-per-minibatch", "4",
           "--learning-rate", "0.02", "--eval-every", "0", "--num-test-levels", "1", "--eval-episodes", "1",
           "--mem-len", "3", "--embed-dim", "16", "--seed", "3"]  # fmt: skip


def scalars(run_dir, tag):
    return [value for _, value in all_scalars(run_dir)[tag]]


@pytest.mark.parametrize("mem_update, train_history", [("trial", "trial"), ("episode", "episode")])
def test_rollout_matches_update(mem_update, train_history, tmp_path):
    """One epoch of one minibatch: the update's first forward gives the rollout's log-probs (approx KL 0),
    with the bank growing during the trial and SNAIL restarting at each episode (--mem-update episode
    --train-history episode) as with both per trial."""
    out = run_script(*ROLLOUT, "--mem-update", mem_update, "--train-history", train_history, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    [run_dir] = (tmp_path / "runs").iterdir()
    kl = scalars(run_dir, "losses/approx_kl")
    assert len(kl) == 3 and max(abs(x) for x in kl) < 1e-6
    # what makes the check bite: episodes that ended within the first trial, failures among them
    assert scalars(run_dir, "charts/episodes_per_trial")[0] > 1 and scalars(run_dir, "charts/episode_wrong_touch")[0] > 0
    # with --mem-update episode the first trial already reads failures stored during it
    assert (scalars(run_dir, "memory/bank_filled_slots_per_trial")[0] > 0) == (mem_update == "episode")


# --- checkpoints older than the network-size and history flags -----------------------------
NEW_FLAGS = ("cnn_channels", "cnn_blocks", "cnn_out", "snail_blocks", "snail_filters", "mem_update", "train_history",
             "test_history", "time_aware_value", "episodic_gae", "value_norm")
PAPER_SIZES = ["--cnn-blocks", "2", "--snail-blocks", "2", "--snail-filters", "32"]


@pytest.fixture(scope="module")
def old_checkpoint(tmp_path_factory):
    """A memory run stopped after 1 of 2 updates, made as runs were before these flags (the paper's
    sizes, bank and SNAIL per trial, a test SNAIL over the trial), its flags then stripped of them."""
    cwd = tmp_path_factory.mktemp("old")
    out = run_script(*TINY, "--num-workers", "0", "--total-timesteps", "40", "--stop-after", "1", *PAPER_SIZES,
                     "--mem-update", "trial", "--train-history", "trial", "--test-history", "trial", cwd=cwd)
    assert out.returncode == 0, out.stderr[-3000:]
    path = cwd / out.stdout.split("checkpoint: ")[-1].split()[0]
    saved = torch.load(path, weights_only=True)
    torch.save(dict(saved, args={k: v for k, v in saved["args"].items() if k not in NEW_FLAGS}), path)
    return cwd, path


def test_an_old_checkpoint_reads_as_the_paper_sizes_made_per_trial(old_checkpoint):
    _, path = old_checkpoint
    saved = mw.checkpoint_args(torch.load(path, weights_only=True))
    assert (saved.cnn_channels, saved.cnn_blocks, saved.cnn_out, saved.snail_blocks, saved.snail_filters) == (
        (16, 32, 32), 2, 256, 2, 32)
    assert (saved.mem_update, saved.train_history, saved.test_history) == ("trial", "trial", "trial")
    assert not saved.time_aware_value and not saved.episodic_gae and not saved.value_norm
    agent = mw.load_checkpoint(str(path), mw.Args(), 3, "cpu")  # the command line's lean defaults lose
    assert not agent.episode_history and len(agent.snail.layers) == 2 * 2
    assert sum(isinstance(m, common.ResidualBlock) for m in agent.cnn.modules()) == 3 * 2
    assert not any(isinstance(m, common.ResidualBlock) for m in mw.Agent(mw.Args(), 3).cnn.modules())  # the lean CNN


def test_an_old_checkpoint_evaluates_and_resumes(old_checkpoint):
    cwd, path = old_checkpoint
    for test_history in ("episode", "trial"):
        out = run_script("--eval-only", "--checkpoint", str(path), "--num-test-levels", "2", "--eval-episodes", "2",
                         "--num-envs", "2", "--test-history", test_history, "--threads", "1", cwd=cwd)
        assert out.returncode == 0, out.stderr[-3000:]
        assert "2 held-out levels" in out.stdout and "bayes-optimal" in out.stdout
    out = run_script("--resume", str(path), "--threads", "1", cwd=cwd)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "resumed from" in out.stdout and "update 2/2" in out.stdout and "update 1/2" not in out.stdout


def test_eval_split_train_plays_the_training_levels_and_no_more_than_there_were(old_checkpoint):
    cwd, path = old_checkpoint  # trained on 20 levels
    out = run_script("--eval-only", "--checkpoint", str(path), "--eval-split", "train", "--num-test-levels", "2",
                     "--eval-episodes", "2", "--num-envs", "2", "--threads", "1", cwd=cwd)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "2 training levels" in out.stdout
    out = run_script("--eval-only", "--checkpoint", str(path), "--eval-split", "train", "--num-test-levels", "21",
                     "--threads", "1", cwd=cwd)
    assert out.returncode == 1 and not out.stdout
    assert out.stderr.strip().splitlines() == [
        "miniworld_failmem.py: error: --num-test-levels 21 with --eval-split train asks for more levels than the "
        "checkpoint trained on (20)"]


def test_a_restarted_episode_begins_with_no_previous_action_or_reward():
    """With episode history an ended episode restarts SNAIL, and the next begins as a trial does."""
    actions, rewards, done = torch.tensor([2, 3, 1]), torch.tensor([-1.0, 0.5, 1.0]), torch.tensor([True, False, True])
    prev_actions, prev_rewards, starts = mw.next_step_inputs(actions, rewards, done, restarts=True)
    assert prev_actions.tolist() == [0, 3, 0] and prev_rewards.tolist() == [0, 0.5, 0] and starts.tolist() == [1, 0, 1]
    prev_actions, prev_rewards, starts = mw.next_step_inputs(actions, rewards, done, restarts=False)
    assert prev_actions.tolist() == [2, 3, 1] and prev_rewards.tolist() == [-1, 0.5, 1] and starts.tolist() == [1, 0, 1]


@pytest.mark.parametrize("agent_name", ["memory", "ppo-finetune"])
def test_eval_sample_draws_seeded_actions_and_greedy_takes_the_most_likely(agent_name):
    logits = torch.tensor([[0.0, 2.0, 1.0, -1.0]]).repeat(400, 1)
    assert (mw.test_actions(logits) == 1).all()
    draws = mw.test_actions(logits, torch.Generator().manual_seed(3))
    assert set(draws.tolist()) == {0, 1, 2, 3}
    assert torch.equal(draws, mw.test_actions(logits, torch.Generator().manual_seed(3)))
    # whole evaluations: sampled ones repeat under one seed, and leave training's RNG where it was
    torch.manual_seed(0)
    args = small_args(agent=agent_name, obs_size=32, trial_len=4, eval_episodes=2, eval_sample=True)
    agent = mw.Agent(args, 3).eval()
    envs = mw.MiniworldVector({"train": mw.make_levels("train", 1), "test": mw.make_levels("test", 3)}, num_envs=2, num_workers=0,
                              obs_size=32, max_episode_steps=4)
    try:
        state = torch.get_rng_state()
        first = mw.evaluate(agent, args, envs, np.arange(3), "cpu")
        assert torch.equal(torch.get_rng_state(), state) or agent_name == "ppo-finetune"  # its test-time PPO shuffles
        again = mw.evaluate(agent, args, envs, np.arange(3), "cpu")
    finally:
        envs.close()
    assert all(np.array_equal(first[key], again[key]) for key in first)

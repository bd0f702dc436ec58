"""reacher_failmem.py: the UR5's kinematics, the reacher's rules, its levels, the banks of the
memory-sf / memory-sf-mix agents, and one tiny end-to-end run of each agent in a subprocess (as
CleanRL tests its scripts)."""

import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pybullet as p
import pytest
import torch
from gymnasium.utils.env_checker import check_env

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import reacher_failmem as rf  # noqa: E402

NOOP = 13  # MOVES[13] == (0, 0, 0)


@pytest.fixture(scope="module")
def levels():
    return rf.make_levels("train", 50)


@pytest.fixture(scope="module")
def env(levels):
    env = rf.UR5Reacher(levels, obs_size=32)
    yield env
    env.close()


def action_towards(ee, goal):
    """The move whose signs walk the end effector's grid towards `goal` (2 cm dead band)."""
    step = np.where(goal - ee > 0.02, 1, np.where(goal - ee < -0.02, -1, 0))
    return int(np.flatnonzero((np.sign(rf.MOVES) == step).all(1))[0])


def reach(env, ball):
    """Go over `ball` at the start height, then straight down until the episode ends."""
    centre = env.centres[ball]
    ee = env.end_effector()
    for _ in range(30):  # across, at the start height (no ball within reach up there)
        action = action_towards(ee, np.array([centre[0], centre[1], ee[2]]))
        if action == NOOP:
            break
        _, reward, terminated, truncated, info = env.step(action)
        assert reward == 0 and not terminated and not truncated
        ee = info["ee"]
    for _ in range(10):  # down
        _, reward, terminated, truncated, info = env.step(action_towards(ee, centre))
        ee = info["ee"]
        if terminated or truncated:
            return reward, terminated, truncated, info
    raise AssertionError("never touched the ball")


def test_urdf_six_revolute_joints_with_ur5_limits(env):
    joints = [p.getJointInfo(env.robot, j, physicsClientId=env.client) for j in range(p.getNumJoints(env.robot, physicsClientId=env.client))]
    revolute = [j for j in joints if j[2] == p.JOINT_REVOLUTE]
    assert len(revolute) == 6 and len(joints) == 7  # six revolute joints and the fixed flange
    limits = [(j[8], j[9]) for j in revolute]
    np.testing.assert_allclose(limits, [(-2 * math.pi, 2 * math.pi)] * 2 + [(-math.pi, math.pi)] + [(-2 * math.pi, 2 * math.pi)] * 3, atol=1e-5)


def test_forward_kinematics_matches_ur5_dh_parameters(env):
    # all joints at zero: the arm stretched along -x; from the DH table, the flange is at
    # x = a2 + a3, y = -(d4 + d6), z = d1 - d5 (Universal Robots' UR5 parameters)
    env.set_joints(np.zeros(6))
    np.testing.assert_allclose(env.end_effector(), [-0.425 - 0.39225, -(0.10915 + 0.0823), 0.089159 - 0.09465], atol=1e-5)
    q = np.array([0.3, -1.2, 1.5, -0.9, -1.57, 0.4])
    env.set_joints(q)
    state = p.getLinkState(env.robot, rf.EE_LINK, computeForwardKinematics=True, physicsClientId=env.client)
    pose = rf.dh_forward_kinematics(q)
    np.testing.assert_allclose(state[4], pose[:3, 3], atol=1e-5)
    rotation = np.array(p.getMatrixFromQuaternion(state[5])).reshape(3, 3)
    np.testing.assert_allclose(rotation, pose[:3, :3], atol=1e-5)
    # the home pose is above the table with the tool pointing down
    home = rf.dh_forward_kinematics(rf.HOME_Q)
    assert home[2, 3] > 0.3 and home[0, 3] > 0.3
    np.testing.assert_allclose(home[:3, 2], [0, 0, -1], atol=1e-6)


def test_every_action_moves_the_end_effector_by_its_delta(env):
    assert len(rf.MOVES) == 27 and len(np.unique(rf.MOVES, axis=0)) == 27
    for action, delta in enumerate(rf.MOVES):
        env.reset(options={"level": 0})
        np.testing.assert_allclose(env.end_effector(), rf.EE_START, atol=1e-3)
        _, reward, terminated, _, info = env.step(action)
        assert reward == 0 and not terminated
        np.testing.assert_allclose(info["ee"] - rf.EE_START, delta, atol=2e-3)
        # tool still pointing down
        orientation = p.getLinkState(env.robot, rf.EE_LINK, computeForwardKinematics=True, physicsClientId=env.client)[5]
        assert abs(np.dot(orientation, rf.TOOL_DOWN)) > 0.999


def test_workspace_box_clips_the_end_effector(env):
    env.reset(options={"level": 0})
    up_forward = int(np.flatnonzero((rf.MOVES == [rf.STEP, 0, rf.STEP]).all(1))[0])
    for _ in range(15):
        *_, info = env.step(up_forward)
    np.testing.assert_allclose(info["ee"], [rf.WORKSPACE_HIGH[0], 0.0, rf.WORKSPACE_HIGH[2]], atol=2e-3)


@pytest.mark.parametrize("which", ["target", "other"])
def test_touching_a_ball_rewards_and_ends_the_episode(env, levels, which):
    for level in range(5):
        env.reset(options={"level": level})
        goal = int(levels["goals"][level])
        ball = goal if which == "target" else (goal + 1) % rf.NUM_BALLS
        reward, terminated, truncated, info = reach(env, ball)
        assert terminated and not truncated
        assert info["hit"] == ball and info["success"] == (which == "target")
        assert reward == (5.0 if which == "target" else -1.0)
        assert np.linalg.norm(info["ee"] - env.centres[ball]) <= rf.BALL_RADIUS + rf.TOUCH_TOLERANCE


def test_episode_times_out_after_80_steps_with_zero_reward(env):
    env.reset(options={"level": 1})
    for t in range(80):
        _, reward, terminated, truncated, info = env.step(NOOP)
        assert reward == 0 and not terminated and info["hit"] == -1
        assert truncated == (t == 79)


def test_observation_is_the_camera_image(levels):
    for size in (64, 32):
        env = rf.UR5Reacher(levels, obs_size=size)
        obs, info = env.reset(options={"level": 3})
        assert obs.shape == (size, size, 3) and obs.dtype == np.uint8 and env.observation_space.contains(obs)
        assert info["level"] == 3
        down = int(np.flatnonzero((rf.MOVES == [0, 0, -rf.STEP]).all(1))[0])
        moved = env.step(down)[0]
        assert (moved != obs).any()  # the arm is in the picture
        env.close()


def test_a_level_is_the_same_every_time(levels):
    again = rf.make_levels("train", 50)
    for key in levels:
        np.testing.assert_array_equal(levels[key], again[key])
    a, b = rf.UR5Reacher(levels, obs_size=32), rf.UR5Reacher(again, obs_size=32)
    actions = np.random.default_rng(0).integers(27, size=10)
    frames_a = [a.reset(options={"level": 7})[0]] + [a.step(x)[0] for x in actions]
    a.reset(options={"level": 8})  # another level in between
    frames_a2 = [a.reset(options={"level": 7})[0]] + [a.step(x)[0] for x in actions]
    frames_b = [b.reset(options={"level": 7})[0]] + [b.step(x)[0] for x in actions]
    np.testing.assert_array_equal(frames_a, frames_b)
    np.testing.assert_array_equal(frames_a, frames_a2)
    assert (a.reset(options={"level": 8})[0] != frames_a[0]).any()
    a.close(), b.close()


def test_levels_follow_the_rules_and_train_test_are_disjoint():
    train, test = rf.make_levels("train", 1000), rf.make_levels("test", 200)
    for lv in (train, test):
        (x0, x1), (y0, y1) = rf.BALL_REGION
        assert ((lv["balls"][..., 0] >= x0) & (lv["balls"][..., 0] <= x1)).all()
        assert ((lv["balls"][..., 1] >= y0) & (lv["balls"][..., 1] <= y1)).all()
        gaps = np.linalg.norm(lv["balls"][:, :, None] - lv["balls"][:, None], axis=-1)
        assert (gaps + np.eye(rf.NUM_BALLS) >= rf.MIN_BALL_GAP).all()
        assert (np.sort(lv["colours"], 1) == np.arange(rf.NUM_BALLS)).all()  # distinct colours
        assert set(np.unique(lv["goals"])) == set(range(rf.NUM_BALLS))
        # every ball centre has a point of the end effector's grid within touching distance
        grid = [np.arange(lo, hi + 1e-9, rf.STEP) for lo, hi in zip(rf.WORKSPACE_LOW, rf.WORKSPACE_HIGH)]
        nearest = [np.abs(lv["balls"][..., k, None] - grid[k]).min(-1) for k in range(2)]
        assert (np.hypot(*nearest) < rf.TOUCH_TOLERANCE + rf.BALL_RADIUS).all()
    key = lambda lv, i: (tuple(np.round(lv["balls"][i], 3).ravel()), tuple(lv["colours"][i]), lv["goals"][i])  # noqa: E731
    train_keys = {key(train, i) for i in range(1000)}
    assert len(train_keys) == 1000
    assert not train_keys & {key(test, i) for i in range(200)}


def test_gymnasium_env_checker(levels):
    env = rf.UR5Reacher(levels, obs_size=32)
    check_env(env, skip_render_check=True)
    env.close()


def test_workers_give_the_same_trials_as_one_env(levels):
    level_sets = {"train": levels, "test": rf.make_levels("test", 5)}
    vector = rf.ReacherVector(level_sets, num_envs=2, num_workers=2, obs_size=32)
    single = rf.UR5Reacher(levels, obs_size=32)
    frames = vector.set_levels([4, 9])
    np.testing.assert_array_equal(frames[1], single.reset(options={"level": 9})[0])
    for action in np.random.default_rng(1).integers(27, size=12):
        frames, reward, terminated, truncated, info = vector.step(np.array([NOOP, action]))
        obs, r, te, tr, i = single.step(action)
        if te or tr:
            obs = single.reset(options={"level": 9})[0]  # the trial goes on at the same level
        np.testing.assert_array_equal(frames[1], obs)
        assert (reward[1], terminated[1], truncated[1], info["hit"][1]) == (r, te, tr, i["hit"])
    vector.close(), single.close()


TINY = [
    "--total-timesteps", "240", "--num-envs", "2", "--trials-per-minibatch", "1", "--trial-len", "20",
    "--obs-size", "16", "--num-train-levels", "3", "--num-test-levels", "2", "--eval-levels", "2",
    "--eval-episodes", "2", "--eval-every", "2", "--update-epochs", "1", "--embed-dim", "16", "--threads", "1",
]


def scalars(run_dir, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    accumulator.Reload()
    return [event.value for event in accumulator.Scalars(tag)]


@pytest.mark.parametrize("agent,extra", [("memory", ["--num-workers", "1", "--capture-video"]), ("snail", ["--num-workers", "0", "--track"])])
def test_script_trains_checkpoints_and_evaluates(tmp_path, agent, extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB")}
    env.update(PYTHONPATH=str(ROOT), HOME=str(tmp_path), WANDB_DIR=str(tmp_path), WANDB_SILENT="true")
    script = str(ROOT / "reacher_failmem.py")
    # one epoch of one minibatch (2 trials): the update's log-probs must equal the rollout's
    flags = [*TINY, "--trials-per-minibatch", "2"] if agent == "memory" else TINY
    out = subprocess.run(
        [sys.executable, script, "--agent", agent, "--exp-name", "test", *extra, *flags],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "update 6/6" in out.stdout and "evaluation at step 240" in out.stdout
    run_dir = next((tmp_path / "runs").glob("reacher__test__*"))
    assert list(run_dir.glob("events.out.tfevents.*"))
    if agent == "memory":
        bank_sizes = [int(line.split("bank ")[1].split()[0]) for line in out.stdout.splitlines() if line.startswith("update")]
        assert bank_sizes[-1] > 0  # failed episodes of earlier trials reached the bank
        assert max(abs(kl) for kl in scalars(run_dir, "losses/approx_kl")) < 1e-5  # rollout == update, bank included
        assert len(scalars(run_dir, "eval/success_ep1")) == 3  # updates 2, 4 and 6
        # every ended episode is a success, a wrong ball or a timeout; the reader saw the bank's endings
        endings = zip(scalars(run_dir, "charts/episode_success"), scalars(run_dir, "charts/episode_wrong_touch"))
        assert all(0 <= success + wrong <= 1 + 1e-6 for success, wrong in endings)
        touch_share = scalars(run_dir, "memory/bank_wrong_touch_share")
        assert touch_share and all(0 <= share <= 1 for share in touch_share)
        assert list((tmp_path / "videos").glob("reacher__test__*/step*.gif"))
    else:
        assert "logging offline" in out.stdout and list((tmp_path / "wandb").glob("offline-run-*"))
    checkpoint = out.stdout.split("checkpoint: ")[1].split()[0]
    assert (tmp_path / checkpoint).is_file()
    table = evaluate_checkpoint(script, checkpoint, tmp_path, env)
    assert "success" in table and "bayes-optimal   0.333  0.667" in table


def evaluate_checkpoint(script, checkpoint, tmp_path, env):
    """`--eval-only` on 2 held-out levels; returns the printed table."""
    evaluated = subprocess.run(
        [sys.executable, script, "--eval-only", "--checkpoint", checkpoint, "--num-test-levels", "2",
         "--eval-episodes", "2", "--num-envs", "2", "--num-workers", "0", "--threads", "1"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    assert f"{checkpoint}: 2 held-out levels" in evaluated.stdout
    return evaluated.stdout.split("held-out levels")[1]


@pytest.mark.parametrize("agent", ["snail-cat", "memory-sf", "memory-sf-mix"])
def test_bank_variants_train_checkpoint_and_evaluate(tmp_path, agent):
    """snail-cat (the bank's steps before the trial), memory-sf (a second bank of successes) and
    memory-sf-mix (one bank of both): 2 updates of one minibatch each on one training level (so
    the second trial reads the bank the first filled), then --eval-only."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB")}
    env.update(PYTHONPATH=str(ROOT), HOME=str(tmp_path))
    script = str(ROOT / "reacher_failmem.py")
    flags = [*TINY, "--total-timesteps", "80", "--trials-per-minibatch", "2", "--eval-every", "1", "--mem-size", "2",
             "--mem-len", "4", "--num-workers", "0", "--num-train-levels", "1"]
    out = subprocess.run(
        [sys.executable, script, "--agent", agent, "--exp-name", "test", *flags],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "update 2/2" in out.stdout and "evaluation at step 80" in out.stdout
    run_dir = next((tmp_path / "runs").glob(f"reacher__test__{agent}__*"))
    # the update sees what the rollout saw: the bank's prefix (snail-cat) or both banks (memory-sf)
    assert max(abs(kl) for kl in scalars(run_dir, "losses/approx_kl")) < 1e-5
    assert len(scalars(run_dir, "memory/bank_trajectories")) == 2
    assert scalars(run_dir, "memory/bank_filled_slots_per_trial")[-1] > 0  # the second trial read a filled bank
    if agent == "memory-sf":  # logged per bank
        assert len(scalars(run_dir, "memory/success_bank_trajectories")) == 2
    else:
        with pytest.raises(KeyError):
            scalars(run_dir, "memory/success_bank_trajectories")
    checkpoint = out.stdout.split("checkpoint: ")[1].split()[0]
    assert (tmp_path / checkpoint).is_file()
    assert "bayes-optimal   0.333  0.667" in evaluate_checkpoint(script, checkpoint, tmp_path, env)


def trajectory(length, value, obs_shape=(4, 4, 3)):
    frames = np.full((length, *obs_shape), value, np.uint8)
    return frames, np.arange(length) % 27, np.full(length, -1.0, np.float32)


def banks_for(agent_name, mem_size=2):
    args = rf.Args(agent=agent_name, mem_size=mem_size, mem_len=4)
    return rf.make_banks(args, (4, 4, 3), float("inf"))


def test_memory_bank_stores_failures_only():
    banks = banks_for("memory")
    rf.store_episode(banks, "memory", 0, True, *trajectory(5, 1))
    rf.store_episode(banks, "memory", 0, False, *trajectory(5, 2))
    assert len(banks) == 1 and [t[0][0, 0, 0, 0] for t in banks[0].banks[0]] == [2]


def test_mix_bank_holds_successes_and_failures():
    banks = banks_for("memory-sf-mix")
    rf.store_episode(banks, "memory-sf-mix", 0, True, *trajectory(5, 1))
    rf.store_episode(banks, "memory-sf-mix", 0, False, *trajectory(5, 2))
    assert len(banks) == 1 and [t[0][0, 0, 0, 0] for t in banks[0].banks[0]] == [1, 2]


def test_sf_success_bank_is_cleared_when_full():
    banks = banks_for("memory-sf", mem_size=2)
    assert len(banks) == 2 and banks[1].clear_when_full and not banks[0].clear_when_full
    for value in (1, 2):
        rf.store_episode(banks, "memory-sf", 0, True, *trajectory(5, value))
    rf.store_episode(banks, "memory-sf", 0, False, *trajectory(5, 9))
    assert [t[0][0, 0, 0, 0] for t in banks[1].banks[0]] == [1, 2]  # full, still readable
    rf.store_episode(banks, "memory-sf", 0, True, *trajectory(5, 3))
    assert [t[0][0, 0, 0, 0] for t in banks[1].banks[0]] == [3]  # emptied, then the new one
    assert banks[1].num_trajectories == 1
    # the failure bank is a FIFO as usual
    for value in (10, 11):
        rf.store_episode(banks, "memory-sf", 0, False, *trajectory(5, value))
    assert [t[0][0, 0, 0, 0] for t in banks[0].banks[0]] == [10, 11]


def test_sf_banks_share_the_ram_bound():
    args = rf.Args(agent="memory-sf", mem_size=2, mem_len=4)
    assert [bank.ram_bytes for bank in rf.make_banks(args, (4, 4, 3), 1000)] == [500, 500]
    args.agent = "memory-sf-mix"
    assert [bank.ram_bytes for bank in rf.make_banks(args, (4, 4, 3), 1000)] == [1000]


@pytest.mark.parametrize(
    "flags,name",
    [
        (["--agent", "ppo"], "--agent"),
        (["--obs-size", "4"], "--obs-size"),
        (["--num-envs", "3", "--num-workers", "2"], "--num-envs"),
        (["--eval-only"], "--eval-only"),
        (["--norm-adv", "yes"], "--norm-adv"),
        (["--num-envs", "-1"], "--num-envs must be positive"),
        (["--max-grad-norm", "-1"], "--max-grad-norm"),
    ],
)
def test_bad_flags_give_one_line_naming_the_flag(flags, name):
    out = subprocess.run([sys.executable, str(ROOT / "reacher_failmem.py"), *flags], capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    lines = out.stderr.strip().splitlines()  # pybullet's build-time banner no longer stands before it
    assert len(lines) == 1 and name in lines[0] and "error" in lines[0] and not out.stdout, out.stderr


# --- checkpoints: atomic, resumable bit for bit, checked before any work --------------------
def test_bank_evicted_levels_counts_levels_not_evictions():
    bank = rf.MemoryBank(mem_size=8, mem_len=4, obs_shape=(4, 4, 3), ram_bytes=4 * 4 * 4 * 3)
    for level in (0, 1, 0, 1):  # each add drops the other level: 3 evictions of 2 levels
        bank.add(level, *trajectory(5, level + 1))
    assert bank.evicted_levels == 2 and set(bank.banks) == {1}


@pytest.mark.parametrize("kill_at", ["mid-write", "before-rename"])
def test_a_kill_during_a_save_leaves_a_whole_checkpoint(tmp_path, kill_at):
    """A saver killed (SIGKILL, by itself, so the kill lands where the test says every time) inside
    its third save, halfway through the bytes or just before the rename: the file still holds the
    second save whole."""
    path = tmp_path / "agent.pt"
    code = (f"import io, os, signal, sys; sys.path.insert(0, {str(ROOT)!r}); import torch, reacher_failmem as script\n"
            "real_save = torch.save\n"
            "def die(*_): os.kill(os.getpid(), signal.SIGKILL)\n"
            "def save_half(obj, f):\n"
            "    buffer = io.BytesIO(); real_save(obj, buffer); data = buffer.getvalue()\n"
            "    f.write(data[: len(data) // 2]); f.flush(); die()\n"
            "for i in range(3):\n"
            f"    if i == 2 and {kill_at!r} == 'mid-write': torch.save = save_half\n"
            f"    if i == 2 and {kill_at!r} == 'before-rename': os.replace = die\n"
            f"    script.save_checkpoint({str(path)!r}, dict(i=i, x=torch.full((2**16,), i)))\n")
    saver = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert saver.returncode == -signal.SIGKILL, saver.stderr
    partial = tmp_path / "agent.pt.partial"
    assert partial.exists()  # the third save had begun
    if kill_at == "mid-write":
        with pytest.raises(Exception):
            torch.load(partial, weights_only=True)
    checkpoint = torch.load(path, weights_only=True)
    assert checkpoint["i"] == 1 and bool((checkpoint["x"] == 1).all()) and len(checkpoint["x"]) == 2**16


RESUME = [*TINY, "--total-timesteps", "120", "--num-train-levels", "2", "--bank-ram-mb", "0.01", "--num-workers", "1"]


def all_scalars(run_dir):
    """Every logged scalar as (step, value) lists, but timings, which differ from run to run."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {tag: [(event.step, event.value) for event in accumulator.Scalars(tag)]
            for tag in accumulator.Tags()["scalars"] if not tag.startswith(("perf/", "charts/SPS"))}


def test_resume_ends_bit_identical_to_an_uninterrupted_run(tmp_path):
    """The memory agent, a RAM bound that evicts: 3 updates straight against 1 update, a stop
    and --resume to 3 (in this process's reachers: the worker holds nothing)."""
    def run(*flags):
        out = subprocess.run([sys.executable, str(ROOT / "reacher_failmem.py"), *RESUME, *flags], capture_output=True,
                             text=True, cwd=tmp_path, timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
        return out.stdout

    stopped = run("--exp-name", "resumed", "--stop-after", "1")
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
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "random.pt").write_bytes(os.urandom(4096))
    torch.save(dict(saved, script="miniworld_failmem.py"), tmp_path / "other.pt")
    torch.save(dict(model=saved["model"], args=saved["args"], global_step=40), tmp_path / "weights_only.pt")
    for name, flag, problem in [("empty.pt", "--checkpoint", "is empty"), ("random.pt", "--checkpoint", "damaged"),
                                ("other.pt", "--checkpoint", "written by miniworld_failmem.py"),
                                ("weights_only.pt", "--resume", "weights only")]:
        with pytest.raises(SystemExit) as stop:
            rf.read_checkpoint(str(tmp_path / name), flag)
        message = str(stop.value.code)
        assert message.startswith(f"reacher_failmem.py: error: {flag} {tmp_path / name} ") and problem in message


def test_sigterm_stops_after_the_update_with_a_checkpoint_and_no_traceback(tmp_path):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    run = subprocess.Popen([sys.executable, str(ROOT / "reacher_failmem.py"), *TINY, "--total-timesteps", "40000",
                            "--eval-every", "0", "--num-workers", "1"], cwd=tmp_path, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in run.stdout:
        if line.startswith("update 1/"):
            break
    run.send_signal(signal.SIGTERM)
    stdout, stderr = run.communicate(timeout=120)
    assert run.returncode == 128 + signal.SIGTERM and "Traceback" not in stderr, stderr
    last = stdout.strip().splitlines()[-1]
    assert last.startswith("stopped by SIGTERM after update ") and "/1000; checkpoint: runs/" in last
    checkpoint = last.split("checkpoint: ")[1].split()[0]
    assert rf.read_checkpoint(str(tmp_path / checkpoint), "--resume")["iteration"] >= 1


@pytest.mark.parametrize("fields,name", [
    (dict(num_envs=-1), "--num-envs must be positive"), (dict(ent_coef=-1), "--ent-coef"),
    (dict(clip_coef=-0.5), "--clip-coef"), (dict(vf_coef=-1), "--vf-coef"), (dict(max_grad_norm=-1), "--max-grad-norm"),
    (dict(target_kl=0.0), "--target-kl"), (dict(seed=-1), "--seed"), (dict(checkpoint="agent.pt"), "--checkpoint"),
    (dict(eval_only=True, checkpoint=str(ROOT)), f"--checkpoint {ROOT} is not a file"),
    (dict(resume="missing.pt"), "--resume missing.pt does not exist"),
])
def test_bad_flag_value_is_named_in_one_line(fields, name):
    with pytest.raises(SystemExit) as stop:
        rf.check_args(rf.Args(**fields))
    message = str(stop.value.code)
    assert "\n" not in message and name in message and message.startswith("reacher_failmem.py: error:")


def test_a_rollout_draws_distinct_levels_unless_there_are_fewer_levels_than_envs():
    rng = np.random.default_rng(0)
    for _ in range(200):  # with replacement, 16 of 200 levels repeat one in about half the draws
        assert len(set(rf.rollout_levels(rng, 200, 16).tolist())) == 16
    few = rf.rollout_levels(rng, 3, 16)
    assert len(few) == 16 and set(few.tolist()) <= {0, 1, 2}

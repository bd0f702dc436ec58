"""reacher_failmem.py: the UR5's kinematics, the reacher's rules, its levels, the banks of the
memory-sf / memory-sf-mix agents, the bank and SNAIL per episode (rollout == update), the
evaluation's test history and PPO-finetune, checkpoints older than the network and history flags,
and one tiny end-to-end run of each agent in a subprocess (as CleanRL tests its scripts)."""

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

torch.set_num_threads(1)  # the in-process tests; many small ops run slower on 2 threads of a busy machine

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


@pytest.mark.parametrize("agent,extra", [("memory", ["--num-workers", "1", "--capture-video"]), ("snail", ["--num-workers", "0", "--track", "--value-norm"])])
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
    assert "updates, on cpu" in out.stdout or "updates, on cuda" in out.stdout
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
        (["--mem-update", "step"], "--mem-update"),
        (["--train-history", "episode", "--agent", "snail"], "--train-history"),
        (["--test-history", "all"], "--test-history"),
        (["--cnn-blocks", "-1"], "--cnn-blocks"),
        (["--snail-filters", "0"], "--snail-filters"),
    ],
)
def test_bad_flags_give_one_line_naming_the_flag(flags, name, tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "reacher_failmem.py"), *flags], capture_output=True, text=True,
                         timeout=60, cwd=tmp_path)
    assert out.returncode != 0
    lines = out.stderr.strip().splitlines()  # pybullet's build-time banner no longer stands before it
    assert len(lines) == 1 and name in lines[0] and "error" in lines[0] and not out.stdout, out.stderr
    assert not (tmp_path / "runs").exists()  # no work started


# --- checkpoints: resumable bit for bit, checked before any work (saves: test_bank.py) -------
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
        rf.check_args(rf.Args(**fields))
    message = str(stop.value.code)
    assert "\n" not in message and name in message and message.startswith("reacher_failmem.py: error:")


def test_a_rollout_draws_distinct_levels_unless_there_are_fewer_levels_than_envs():
    rng = np.random.default_rng(0)
    for _ in range(200):  # with replacement, 16 of 200 levels repeat one in about half the draws
        assert len(set(rf.rollout_levels(rng, 200, 16).tolist())) == 16
    few = rf.rollout_levels(rng, 3, 16)
    assert len(few) == 16 and set(few.tolist()) <= {0, 1, 2}


def test_history_flags_default_by_agent_and_good_flags_pass():
    """--mem-update and --train-history: episode for the agents with a bank, trial for the others."""
    for agent in rf.AGENTS:
        args = rf.Args(agent=agent)
        expected = "episode" if agent in rf.MEMORY_AGENTS else "trial"
        assert (args.mem_update, args.train_history) == (expected, expected), agent
        rf.check_args(args)
    rf.check_args(rf.Args(agent="memory", mem_update="trial", train_history="trial", test_history="trial"))


# --- the agent: the rollout's steps are the update's whole trials -----------------------------
def small_args(**overrides):
    small = dict(obs_size=16, trial_len=12, mem_size=3, mem_len=4, embed_dim=16, num_heads=4)
    return rf.Args(**{**small, **overrides})


@pytest.mark.parametrize("time_aware", [False, True])
@pytest.mark.parametrize("agent_name", rf.AGENTS)
def test_step_mode_matches_whole_trial(agent_name, time_aware):
    """Every agent, trial history: the rollout's per-step outputs and the update's whole-trial
    outputs are the same numbers, so PPO's first ratio is 1."""
    torch.manual_seed(0)
    args = small_args(agent=agent_name, time_aware_value=time_aware, train_history="trial")
    agent = rf.Agent(args, len(rf.MOVES))
    B, T = 3, args.trial_len
    frames = torch.randint(0, 256, (B, T, 16, 16, 3), dtype=torch.uint8)
    prev_actions, prev_rewards = torch.randint(0, 27, (B, T)), torch.randn(B, T)
    starts = (torch.rand(B, T) < 0.2).float()
    banks = []
    for _ in range(2):
        bank = rf.BankView(torch.randint(0, 256, (B, 3, 4, 16, 16, 3), dtype=torch.uint8), torch.randint(0, 27, (B, 3, 4)),
                           torch.randn(B, 3, 4), torch.ones(B, 3, 4, dtype=torch.bool), torch.ones(B, T, 3, dtype=torch.bool))
        bank.valid[0] = False  # env 0 has an empty bank
        bank.valid[1, 2] = False
        bank.valid[2, :, :2] = False
        banks.append(bank)
    actions = torch.randint(0, 27, (B, T))
    with torch.no_grad():
        _, logprob, _, value = agent.get_action_and_value(frames, prev_actions, prev_rewards, starts, banks, actions)
        trial_state = agent.begin_trial(banks, B, T)
        for t in range(T):
            logits, v = agent.step(frames[:, t], prev_actions[:, t], prev_rewards[:, t], starts[:, t], trial_state, t)
            step_logprob = torch.log_softmax(logits, -1).gather(1, actions[:, t : t + 1]).squeeze(1)
            torch.testing.assert_close(step_logprob, logprob[:, t], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(v, value[:, t], atol=1e-5, rtol=1e-5)


def test_rollout_matches_the_update_with_the_bank_and_snail_per_episode(levels):
    """--mem-update episode --train-history episode (the memory agent's defaults), on real reachers:
    env 0 reaches for a trap again and again, so its failures enter the bank in mid-trial (a full
    bank of N = 2, so each drops the oldest) and SNAIL restarts at each episode. The rollout's
    log-probs and values, step by step as the script's loop computes them, are those of the update's
    forward over the whole trial with the BankView's `visible` slots; reading every slot at every
    step, or the whole trial's history, gives other numbers."""
    torch.manual_seed(0)
    T, num_envs = 40, 2
    args = small_args(agent="memory", trial_len=T, mem_size=2)
    assert (args.mem_update, args.train_history) == ("episode", "episode")
    agent = rf.Agent(args, len(rf.MOVES))
    envs = rf.ReacherVector({"train": levels}, num_envs, 0, 16, T)
    bank = rf.MemoryBank(args.mem_size, args.mem_len, (16, 16, 3), float("inf"))
    for value in (1, 2):
        bank.add(0, *trajectory(5, value, (16, 16, 3)))
    trial_levels = np.array([0, 1])
    trial = rf.TrialMemory(bank, trial_levels)
    num_slots = args.mem_size + T
    reacher = envs.workers.envs[0]
    frames = envs.set_levels(trial_levels)
    trap = (reacher.goal + 1) % rf.NUM_BALLS
    rng = np.random.default_rng(0)
    buf = dict(frames=np.zeros((num_envs, T, 16, 16, 3), np.uint8), actions=np.zeros((num_envs, T), np.int64),
               rewards=np.zeros((num_envs, T), np.float32), starts=np.zeros((num_envs, T), np.float32))
    prev_actions, prev_rewards = torch.zeros(num_envs, T, dtype=torch.long), torch.zeros(num_envs, T)
    logprobs, values = torch.zeros(num_envs, T), torch.zeros(num_envs, T)
    begin = np.zeros(num_envs, np.int64)
    with torch.no_grad():  # the script's rollout, step for step
        cache, memories = agent.begin_trial([trial.arrays(num_slots).to("cpu")], num_envs, T)
        buf["starts"][:, 0] = 1
        for t in range(T):
            buf["frames"][:, t] = frames
            seen = [(memory, filled & torch.as_tensor(trial.visible(num_slots, [t])[:, 0])) for memory, filled in memories]
            logits, value = agent.step(torch.as_tensor(frames), prev_actions[:, t], prev_rewards[:, t],
                                       torch.as_tensor(buf["starts"][:, t]), (cache, seen), t)
            ee, centre = reacher.end_effector(), reacher.centres[trap]
            over = np.abs(ee[:2] - centre[:2]).max() > 0.02
            actions = np.array([action_towards(ee, np.array([*centre[:2], ee[2]]) if over else centre), rng.integers(27)])
            buf["actions"][:, t] = actions
            logprobs[:, t] = torch.log_softmax(logits, -1)[torch.arange(num_envs), torch.as_tensor(actions)]
            values[:, t] = value
            frames, reward, terminated, truncated, info = envs.step(actions)
            buf["rewards"][:, t] = reward
            done = terminated | truncated
            if t + 1 < T:
                prev_actions[:, t + 1], prev_rewards[:, t + 1] = torch.as_tensor(actions), torch.as_tensor(reward)
                buf["starts"][:, t + 1] = done
            if done.any():
                agent.snail.restart(cache, torch.as_tensor(np.flatnonzero(done)), t + 1)
            for env in np.flatnonzero(done):
                assert rf.bank_for("memory", info["success"][env]) == (None if info["success"][env] else 0)
                if info["success"][env]:
                    continue
                steps = slice(begin[env], t + 1)
                slot = trial.store(env, t, buf["frames"][env, steps], buf["actions"][env, steps], buf["rewards"][env, steps])
                stored = rf.BankView(*(torch.as_tensor(x)[None, None] for x in trial.slots[env][slot]))
                vectors, filled = memories[0]
                vectors[env, slot], filled[env, slot] = agent.embed_memory(stored)[0][0, 0], True
            begin[done] = t + 1
    envs.close()
    assert (buf["rewards"][0] == rf.TRAP_REWARD).sum() >= 2 and buf["starts"][0, 1:].sum() >= 2  # failed twice in mid-trial

    update_slots = max([args.mem_size] + [len(slots) for slots in trial.slots])
    view = trial.arrays(update_slots)._replace(visible=trial.visible(update_slots, range(T))).to("cpu")
    visible = view.visible[0]
    assert visible[0, :2].all() and not visible[-1, :2].any()  # the bank's two dropped in mid-trial
    stored = len(trial.slots[0])  # the bank's 2, then the trial's failures
    assert stored >= 4 and not visible[0, 2:stored].any() and visible[:, 2:stored].any(0).all()  # each seen in mid-trial
    assert (visible.sum(1) <= args.mem_size).all()  # never more than the bank holds
    whole = (torch.as_tensor(buf["frames"]), prev_actions, prev_rewards, torch.as_tensor(buf["starts"]))
    actions = torch.as_tensor(buf["actions"])
    with torch.no_grad():
        _, update_logprobs, _, update_values = agent.get_action_and_value(*whole, [view], actions)
        torch.testing.assert_close(update_logprobs, logprobs, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(update_values, values, atol=1e-5, rtol=1e-5)
        every_slot = view._replace(visible=torch.ones_like(view.visible))
        assert not torch.allclose(agent.get_action_and_value(*whole, [every_slot], actions)[3][0], values[0], atol=1e-4)
        trial_history = rf.Agent(small_args(agent="memory", trial_len=T, mem_size=2, train_history="trial"), 27)
        trial_history.load_state_dict(agent.state_dict())
        assert not torch.allclose(trial_history.get_action_and_value(*whole, [view], actions)[3][0], values[0], atol=1e-4)


def test_gae_goes_on_from_the_value_given_after_the_last_step():
    rewards, values = torch.tensor([[0.0, 1.0, 0.0, 5.0]]), torch.tensor([[0.5, 0.2, 0.3, 0.4]])
    full, _ = rf.compute_gae(rewards, values, 0.9, 0.0)  # TD(0): each step sees one value ahead
    cut, _ = rf.compute_gae(rewards[:, :2], values[:, :2], 0.9, 0.0, last_values=values[:, 2])
    torch.testing.assert_close(cut, full[:, :2])
    ended, _ = rf.compute_gae(rewards[:, :2], values[:, :2], 0.9, 0.0)
    assert ended[0, 1] == pytest.approx(1.0 - 0.2) and cut[0, 1] == pytest.approx(1.0 + 0.9 * 0.3 - 0.2)


def test_episodic_gae_stops_the_return_at_episode_ends():
    """--episodic-gae: the advantages of a trial with an episode end after step 2 are those of
    its two episodes computed apart; without it the first episode's returns see the second's."""
    rewards = torch.tensor([[0.0, 0.0, -1.0, 0.0, 5.0]])
    values = torch.tensor([[0.1, 0.2, 0.3, 0.4, 0.5]])
    ends = torch.tensor([[False, False, True, False, False]])
    adv, ret = rf.compute_gae(rewards, values, 0.9, 0.8, ends)
    first, _ = rf.compute_gae(rewards[:, :3], values[:, :3], 0.9, 0.8)
    second, _ = rf.compute_gae(rewards[:, 3:], values[:, 3:], 0.9, 0.8)
    torch.testing.assert_close(adv, torch.cat([first, second], 1))
    torch.testing.assert_close(ret, adv + values)
    across, _ = rf.compute_gae(rewards, values, 0.9, 0.8)
    assert across[0, 2] > adv[0, 2]  # across episodes the trap's step sees the goal after it


def test_trial_memory_shows_each_stored_episode_from_the_next_step():
    bank = rf.MemoryBank(mem_size=2, mem_len=4, obs_shape=(4, 4, 3), ram_bytes=float("inf"))
    bank.add(5, *trajectory(5, 1))
    trial = rf.TrialMemory(bank, [5, 6])
    assert trial.store(0, 3, *trajectory(4, 2)) == 1  # env 0 (level 5) fails at step 3
    assert trial.store(0, 7, *trajectory(4, 3)) == 2  # and at step 7: the bank drops trajectory 1
    assert trial.store(1, 0, *trajectory(1, 4)) == 0  # env 1 (level 6) fails at step 0
    visible = trial.visible(4, range(10))
    assert visible[0, :, 0].tolist() == [True] * 8 + [False] * 2  # in the bank until step 7's episode
    assert visible[0, :, 1].tolist() == [False] * 4 + [True] * 6
    assert visible[0, :, 2].tolist() == [False] * 8 + [True] * 2
    assert visible[1, :, 0].tolist() == [False] + [True] * 9
    assert not visible[:, :, 3].any() and not visible[1, :, 1:].any()
    assert [t[0][-1, 0, 0, 0] for t in bank.banks[5]] == [2, 3]  # the bank itself is a FIFO of N = 2


# --- evaluation: test history, PPO-finetune ----------------------------------------------------
@pytest.mark.parametrize("test_history", ["episode", "trial"])
def test_evaluation_reads_only_ended_envs_and_restarts_snail_per_episode(test_history, monkeypatch):
    """3 held-out levels on 2 envs (the second chunk padded with a repeat that is not counted),
    4-step episodes (too short to reach a ball: every one runs out): each ended episode re-reads
    only its own env's bank; with --test-history episode the memory agent's SNAIL starts anew with
    each episode, with trial it sees the whole 3-episode trial."""
    torch.manual_seed(0)
    args = small_args(agent="memory", trial_len=4, eval_episodes=3, test_history=test_history)
    agent = rf.Agent(args, len(rf.MOVES)).eval()
    envs = rf.ReacherVector({"train": rf.make_levels("train", 1), "test": rf.make_levels("test", 3)}, 2, 0, 16, 4)
    reads, restarts = [], []
    read_banks, restart = agent.read_banks, agent.snail.restart
    monkeypatch.setattr(agent, "read_banks", lambda banks: reads.append(len(banks[0].valid)) or read_banks(banks))
    monkeypatch.setattr(agent.snail, "restart", lambda cache, rows, t: restarts.append((rows.tolist(), t))
                        or restart(cache, rows, t))
    result = rf.evaluate(agent, args, envs, np.arange(3), "cpu")
    envs.close()
    assert (result["hits"] == -1).all() and result["success"].shape == (3, 3)
    assert reads == [2, 2, 2, 2, 2, 1, 1, 1]  # each chunk's start, then the envs whose episode ended
    if test_history == "trial":
        assert restarts == []
    else:
        assert restarts == [([0, 1], 4), ([0, 1], 8), ([0, 1], 12), ([0], 4), ([0], 8), ([0], 12)]


def test_finetune_evaluation_trains_per_episode_and_restores_the_weights(monkeypatch):
    """ppo-finetune-attn at test: PPO after every episode of every level, one reacher of the
    held-out levels (not the rollout's envs), and the trained weights back afterwards."""
    from types import SimpleNamespace

    torch.manual_seed(0)
    args = small_args(agent="ppo-finetune-attn", trial_len=10, eval_episodes=3, learning_rate=1e-2)
    agent = rf.Agent(args, len(rf.MOVES))
    trained = {k: v.clone() for k, v in agent.state_dict().items()}
    calls, changed = [], []
    original = rf.ppo_update

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

    norms, after, original_gae = [], [], rf.compute_gae
    monkeypatch.setattr(rf, "ppo_update", counting_update)
    monkeypatch.setattr(rf, "compute_gae", recording_gae)
    envs = SimpleNamespace(level_sets={"test": rf.make_levels("test", 2)})  # all evaluate_finetune reads of them
    result = rf.evaluate(agent, args, envs, np.arange(2), "cpu")
    assert len(calls) == 2 * 3 and all(changed)
    assert all(shape[0] == 1 and 1 <= shape[1] <= 10 for shape in calls)
    assert result["success"].shape == (2, 3)
    assert set(norms) == {"off"}  # one episode an update: its advantages keep their sign
    # an episode cut by the step limit ends the trial; one ended by a touch goes on from the start's value
    assert all(value == 0 for steps, value in after if steps == 10)
    for key, value in agent.state_dict().items():
        assert torch.equal(value, trained[key]), key


# --- the script end to end: the new agents, bank and history per episode, old checkpoints -------
def run_script(*flags, cwd):
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB")}
    return subprocess.run([sys.executable, str(ROOT / "reacher_failmem.py"), *flags], cwd=cwd, capture_output=True,
                          text=True, timeout=240, env=dict(env, PYTHONPATH=str(ROOT)))


@pytest.mark.parametrize("agent", ["ppo-finetune", "ppo-finetune-attn"])
def test_finetune_agents_train_checkpoint_and_evaluate(tmp_path, agent):
    out = run_script("--agent", agent, "--exp-name", "test", *TINY, "--total-timesteps", "80", "--eval-every", "1",
                     "--trials-per-minibatch", "2", "--num-workers", "0", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "update 2/2" in out.stdout and "evaluation at step 80" in out.stdout
    updates = [line for line in out.stdout.splitlines() if line.startswith("update ")]
    assert len(updates) == 2 and all("bank 0 trajectories" in line for line in updates)  # memoryless: stores nothing
    run_dir = next((tmp_path / "runs").glob(f"reacher__test__{agent}__*"))
    assert len(scalars(run_dir, "eval/mean_success")) == 2
    checkpoint = out.stdout.split("checkpoint: ")[1].split()[0]
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB")}
    assert "bayes-optimal   0.333  0.667" in evaluate_checkpoint(str(ROOT / "reacher_failmem.py"), checkpoint, tmp_path,
                                                                   dict(env, PYTHONPATH=str(ROOT)))


@pytest.mark.parametrize("mem_update, train_history", [("trial", "trial"), ("episode", "trial"), ("episode", "episode")])
def test_rollout_matches_update_end_to_end(tmp_path, mem_update, train_history):
    """The script's own loop, one epoch of one minibatch: the update's log-probs equal the rollout's
    (approximate KL ~ 0), with either bank update and either history; one training level, so the
    later trials read the failures the earlier ones stored."""
    out = run_script("--exp-name", "kl", *TINY, "--trials-per-minibatch", "2", "--num-train-levels", "1", "--eval-every",
                     "0", "--total-timesteps", "120", "--num-workers", "0", "--mem-update", mem_update,
                     "--train-history", train_history, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    run_dir = next((tmp_path / "runs").glob("reacher__kl__*"))
    assert max(abs(kl) for kl in scalars(run_dir, "losses/approx_kl")) < 1e-6
    assert max(abs(kl) for kl in scalars(run_dir, "losses/old_approx_kl")) < 1e-5
    assert scalars(run_dir, "memory/bank_filled_slots_per_trial")[-1] > 0


NEW_FLAGS = ("cnn_channels", "cnn_blocks", "cnn_out", "snail_blocks", "snail_filters", "time_aware_value", "mem_update",
             "train_history", "episodic_gae", "test_history", "value_norm")


def test_a_checkpoint_older_than_the_network_and_history_flags_loads_and_evaluates(tmp_path):
    """Before these flags the reacher built the paper's IMPALA CNN (2 residual blocks a stage) and
    SNAIL (2 pairs of 32 filters), and updated bank and SNAIL per trial: a checkpoint without the
    flags is read so, its weights fit, and --eval-only evaluates it with either test history."""
    paper_sizes = small_args(agent="memory", trial_len=20, cnn_blocks=2, snail_blocks=2, snail_filters=32)
    model = rf.Agent(paper_sizes, len(rf.MOVES)).state_dict()
    with pytest.raises(RuntimeError):  # the lean defaults would not fit them
        rf.Agent(small_args(agent="memory", trial_len=20), len(rf.MOVES)).load_state_dict(model)
    old_args = {key: value for key, value in vars(paper_sizes).items() if key not in NEW_FLAGS}
    torch.save(dict(script="reacher_failmem.py", format=1, args=old_args, model=model), tmp_path / "old.pt")
    saved = rf.read_checkpoint(str(tmp_path / "old.pt"))
    read = rf.checkpoint_args(saved)
    assert (read.cnn_blocks, read.snail_blocks, read.snail_filters, read.cnn_channels, read.cnn_out) == (2, 2, 32, (16, 32, 32), 256)
    assert (read.mem_update, read.train_history) == ("trial", "trial")
    agent = rf.load_checkpoint(str(tmp_path / "old.pt"), rf.Args(), len(rf.MOVES), "cpu")
    assert not agent.episode_history and len(agent.snail.layers) == 4
    for test_history in ("trial", "episode"):
        out = run_script("--eval-only", "--checkpoint", "old.pt", "--test-history", test_history, "--num-test-levels", "2",
                         "--eval-episodes", "2", "--num-envs", "2", "--num-workers", "0", "--threads", "1", cwd=tmp_path)
        assert out.returncode == 0, out.stderr[-2000:]
        assert "old.pt: 2 held-out levels" in out.stdout and "bayes-optimal   0.333  0.667" in out.stdout
    # its training levels (it trained on the default 200), and no more of them than there were
    out = run_script("--eval-only", "--checkpoint", "old.pt", "--eval-split", "train", "--num-test-levels", "2",
                     "--eval-episodes", "2", "--num-envs", "2", "--num-workers", "0", "--threads", "1", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "old.pt: 2 training levels" in out.stdout
    out = run_script("--eval-only", "--checkpoint", "old.pt", "--eval-split", "train", "--num-test-levels", "201",
                     cwd=tmp_path)
    assert out.returncode == 1 and not out.stdout
    assert out.stderr.strip().splitlines() == [
        "reacher_failmem.py: error: --num-test-levels 201 with --eval-split train asks for more levels than the "
        "checkpoint trained on (200)"]


def test_a_restarted_episode_begins_with_no_previous_action_or_reward():
    """With episode history an ended episode restarts SNAIL, and the next begins as a trial does."""
    actions, rewards, done = torch.tensor([2, 3, 1]), torch.tensor([-1.0, 0.5, 1.0]), torch.tensor([True, False, True])
    prev_actions, prev_rewards, starts = rf.next_step_inputs(actions, rewards, done, restarts=True)
    assert prev_actions.tolist() == [0, 3, 0] and prev_rewards.tolist() == [0, 0.5, 0] and starts.tolist() == [1, 0, 1]
    prev_actions, prev_rewards, starts = rf.next_step_inputs(actions, rewards, done, restarts=False)
    assert prev_actions.tolist() == [2, 3, 1] and prev_rewards.tolist() == [-1, 0.5, 1] and starts.tolist() == [1, 0, 1]


@pytest.mark.parametrize("agent_name", ["memory", "ppo-finetune"])
def test_eval_sample_draws_seeded_actions_and_greedy_takes_the_most_likely(agent_name):
    logits = torch.tensor([[0.0, 2.0, 1.0, -1.0]]).repeat(400, 1)
    assert (rf.test_actions(logits) == 1).all()
    draws = rf.test_actions(logits, torch.Generator().manual_seed(3))
    assert set(draws.tolist()) == {0, 1, 2, 3}
    assert torch.equal(draws, rf.test_actions(logits, torch.Generator().manual_seed(3)))
    # whole evaluations: sampled ones repeat under one seed, and leave training's RNG where it was
    torch.manual_seed(0)
    args = small_args(agent=agent_name, trial_len=4, eval_episodes=2, eval_sample=True)
    agent = rf.Agent(args, len(rf.MOVES)).eval()
    envs = rf.ReacherVector({"train": rf.make_levels("train", 1), "test": rf.make_levels("test", 3)}, 2, 0, 16, 4)
    try:
        state = torch.get_rng_state()
        first = rf.evaluate(agent, args, envs, np.arange(3), "cpu")
        assert torch.equal(torch.get_rng_state(), state) or agent_name == "ppo-finetune"  # its test-time PPO shuffles
        again = rf.evaluate(agent, args, envs, np.arange(3), "cpu")
    finally:
        envs.close()
    assert all(np.array_equal(first[key], again[key]) for key in first)

"""Tests of miniworld_failmem.py: the room's rules first, then the script end to end in a
subprocess, as CleanRL tests its scripts. Headless (EGL); about 1.5 minutes on 2 busy cores."""

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


def run_script(*flags, env=None):
    return subprocess.run(
        [sys.executable, SCRIPT, *flags], capture_output=True, text=True, cwd=ROOT, timeout=300, env=env
    )


@pytest.mark.parametrize("agent", ["memory", "snail"])
def test_train_then_eval_only(agent, tmp_path):
    # the memory run steps its envs in 2 worker processes, the snail run in its own process
    workers = ["--num-workers", "2" if agent == "memory" else "0"]
    flags = [*TINY, *workers, "--agent", agent, "--total-timesteps", "40", "--exp-name", f"pytest_{tmp_path.name}"]
    train = run_script(*flags)
    assert train.returncode == 0, train.stderr[-3000:]
    assert "update 2/2" in train.stdout
    checkpoint = next(line.split()[-1] for line in train.stdout.splitlines() if line.startswith("checkpoint:"))
    checkpoint = os.path.join(ROOT, checkpoint)
    assert os.path.isfile(checkpoint)
    if agent == "memory":
        assert " 0 trajectories" not in train.stdout.splitlines()[-10]  # failures reached the bank
    evaluation = run_script(*TINY, *workers, "--eval-only", "--checkpoint", checkpoint)
    assert evaluation.returncode == 0, evaluation.stderr[-3000:]
    assert "2 held-out levels" in evaluation.stdout and "bayes-optimal" in evaluation.stdout
    success_row = next(line for line in evaluation.stdout.splitlines() if line.startswith("success "))
    assert len(success_row.split()) == 4  # 2 episodes and the mean
    import shutil

    shutil.rmtree(os.path.dirname(checkpoint))


@pytest.mark.parametrize(
    "flags, named",
    [
        (["--agent", "lstm"], "--agent"),
        (["--num-envs", "3", "--num-workers", "2"], "--num-envs"),
        (["--mem-len", "0"], "--mem-len"),
        (["--eval-only", "--checkpoint", "/nonexistent/agent.pt"], "--checkpoint"),
        (["--norm-adv", "yes"], "--norm-adv"),
        (["--num-envs", "-1"], "--num-envs must be positive"),
    ],
)
def test_bad_flags_give_one_line(flags, named):
    result = run_script(*flags)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and named in lines[0] and "error" in lines[0], result.stderr


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


# --- checkpoints: atomic, resumable bit for bit, checked before any work --------------------
def test_bank_evicted_levels_counts_levels_not_evictions():
    bank = mw.MemoryBank(mem_size=8, mem_len=4, obs_shape=(4, 4, 3), ram_bytes=4 * 4 * 4 * 3)
    for level in (0, 1, 0, 1):  # each add drops the other level: 3 evictions of 2 levels
        bank.add(level, np.zeros((5, 4, 4, 3), np.uint8), np.zeros(5, np.int64), np.full(5, -1.0, np.float32))
    assert bank.evicted_levels == 2 and set(bank.banks) == {1}


@pytest.mark.parametrize("kill_at", ["mid-write", "before-rename"])
def test_a_kill_during_a_save_leaves_a_whole_checkpoint(tmp_path, kill_at):
    """A saver killed (SIGKILL, by itself, so the kill lands where the test says every time) inside
    its third save, halfway through the bytes or just before the rename: the file still holds the
    second save whole."""
    path = tmp_path / "agent.pt"
    code = (f"import io, os, signal, sys; sys.path.insert(0, {str(ROOT)!r}); import torch, miniworld_failmem as script\n"
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

"""The memory bank (Sec. 2: the last L steps of each failed episode, up to M a level) and the
checkpoint writer. Each script stands alone and carries its own copy of MemoryBank, store_episode,
make_banks and save_checkpoint (the design), so each rule here runs once per script: a copy that
drifts from the others fails under its own name."""

import importlib
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SCRIPTS = ["grid_failmem", "miniworld_failmem", "reacher_failmem"]
OBS_SHAPE = (4, 4, 3)
TRAJ_BYTES = 4 * 4 * 4 * 3  # one stored step's frame at mem_len 4: what the RAM bound counts


@pytest.fixture(params=SCRIPTS)
def script(request):
    return importlib.import_module(request.param)


def trajectory(length, value):
    return (np.full((length, *OBS_SHAPE), value, np.uint8), np.arange(length) % 3,
            np.full(length, -1.0, np.float32))


def same_banks(bank, copy):
    """The same levels in the same LRU order, each with the same trajectories, dtypes included."""
    assert list(copy.banks) == list(bank.banks)
    for level in bank.banks:
        for mine, theirs in zip(bank.banks[level], copy.banks[level], strict=True):
            assert all(np.array_equal(a, b) and a.dtype == b.dtype for a, b in zip(mine, theirs, strict=True))


def banks_for(script, agent_name, mem_size=2):
    return script.make_banks(script.Args(agent=agent_name, mem_size=mem_size, mem_len=4), OBS_SHAPE, float("inf"))


def first_pixels(bank, level=0):
    """Each stored trajectory's first pixel: the value `trajectory` filled it with."""
    return [frames[0, 0, 0, 0] for frames, *_ in bank.banks[level]]


# --- what a bank holds ----------------------------------------------------------------------
def test_bank_is_a_fifo_of_the_last_L_steps(script):
    bank = script.MemoryBank(mem_size=3, mem_len=4, obs_shape=OBS_SHAPE, ram_bytes=float("inf"))
    for value in range(1, 6):
        bank.add(7, *trajectory(10, value))
    frames, actions, rewards, valid, _ = bank.get([7, 8])  # no `visible` outside a trial
    assert frames.shape == (2, 3, 4, *OBS_SHAPE)
    assert [frames[0, j, 0, 0, 0, 0] for j in range(3)] == [3, 4, 5]  # oldest dropped first
    assert (actions[0, 0] == np.arange(6, 10) % 3).all()  # the last L steps of the episode
    assert valid[0].all() and not valid[1].any() and not frames[1].any()  # level 8 is empty
    assert bank.num_trajectories == 3 and bank.nbytes == 3 * TRAJ_BYTES


def test_bank_pads_short_episodes_at_the_front(script):
    bank = script.MemoryBank(mem_size=2, mem_len=6, obs_shape=OBS_SHAPE, ram_bytes=float("inf"))
    bank.add(0, *trajectory(2, 9))
    frames, actions, rewards, valid, _ = bank.get([0])
    assert valid[0, 0].tolist() == [False] * 4 + [True] * 2
    assert (frames[0, 0, 4:] == 9).all() and not frames[0, 0, :4].any()
    assert rewards[0, 0].tolist() == [0, 0, 0, 0, -1, -1]
    assert not valid[0, 1].any()


def test_memory_bank_stores_failures_only(script):
    banks = banks_for(script, "memory")
    script.store_episode(banks, "memory", 0, True, *trajectory(5, 1))
    script.store_episode(banks, "memory", 0, False, *trajectory(5, 2))
    assert len(banks) == 1 and first_pixels(banks[0]) == [2]


def test_mix_bank_holds_successes_and_failures(script):
    banks = banks_for(script, "memory-sf-mix")
    script.store_episode(banks, "memory-sf-mix", 0, True, *trajectory(5, 1))
    script.store_episode(banks, "memory-sf-mix", 0, False, *trajectory(5, 2))
    assert len(banks) == 1 and first_pixels(banks[0]) == [1, 2]


def test_sf_success_bank_is_cleared_when_full(script):
    banks = banks_for(script, "memory-sf", mem_size=2)
    assert len(banks) == 2 and banks[1].clear_when_full and not banks[0].clear_when_full
    for value in (1, 2):
        script.store_episode(banks, "memory-sf", 0, True, *trajectory(5, value))
    script.store_episode(banks, "memory-sf", 0, False, *trajectory(5, 9))
    assert first_pixels(banks[1]) == [1, 2]  # full, still readable
    script.store_episode(banks, "memory-sf", 0, True, *trajectory(5, 3))
    assert first_pixels(banks[1]) == [3] and banks[1].num_trajectories == 1  # emptied, then the new one
    for value in (10, 11):  # the failure bank is a FIFO as usual
        script.store_episode(banks, "memory-sf", 0, False, *trajectory(5, value))
    assert first_pixels(banks[0]) == [10, 11]


# --- the RAM bound --------------------------------------------------------------------------
def test_bank_ram_bound_evicts_least_recently_used_level(script):
    bank = script.MemoryBank(mem_size=8, mem_len=4, obs_shape=OBS_SHAPE, ram_bytes=3 * TRAJ_BYTES)
    for level in (0, 1, 2):
        bank.add(level, *trajectory(5, level + 1))
    bank.get([0])  # reading level 0 makes level 1 the least recently used
    bank.add(3, *trajectory(5, 4))
    assert set(bank.banks) == {0, 2, 3} and bank.evicted_levels == 1
    assert bank.nbytes <= 3 * TRAJ_BYTES


def test_sf_banks_share_the_ram_bound(script):
    args = script.Args(agent="memory-sf", mem_size=2, mem_len=4)
    assert [bank.ram_bytes for bank in script.make_banks(args, OBS_SHAPE, 1000)] == [500, 500]
    args.agent = "memory-sf-mix"
    assert [bank.ram_bytes for bank in script.make_banks(args, OBS_SHAPE, 1000)] == [1000]


def test_bank_evicted_levels_counts_levels_not_evictions(script):
    bank = script.MemoryBank(mem_size=8, mem_len=4, obs_shape=OBS_SHAPE, ram_bytes=TRAJ_BYTES)
    for level in (0, 1, 0, 1):  # each add drops the other level: 3 evictions of 2 levels
        bank.add(level, *trajectory(5, level + 1))
    assert bank.evicted_levels == 2 and set(bank.banks) == {1}


# --- in a checkpoint ------------------------------------------------------------------------
def test_bank_state_dict_keeps_trajectories_lru_order_and_counters(script):
    bank = script.MemoryBank(mem_size=2, mem_len=4, obs_shape=OBS_SHAPE, ram_bytes=3 * TRAJ_BYTES)
    for level, value in ((0, 1), (1, 2), (0, 3), (0, 4), (2, 5), (3, 6)):
        bank.add(level, *trajectory(3, value))
    bank.trajectories(2)  # level 2 becomes the most recently used
    copy = script.MemoryBank(mem_size=2, mem_len=4, obs_shape=OBS_SHAPE, ram_bytes=3 * TRAJ_BYTES)
    copy.load_state_dict(bank.state_dict())
    assert list(copy.banks) == [3, 2]
    assert (copy.num_trajectories, copy.evicted_levels) == (bank.num_trajectories, bank.evicted_levels) == (2, 2)
    same_banks(bank, copy)


@pytest.mark.parametrize("per_tensor, layout", [(2, "chunks"), (3, "chunks"), (100, "chunks"), (1, "per trajectory")])
def test_bank_state_dict_stacks_frames_in_chunks_and_reads_the_old_layout(script, per_tensor, layout):
    """Frames are saved a few trajectories a tensor (torch.save pays per tensor); a checkpoint
    written before, one tensor a trajectory, still loads into the same banks."""
    bank = script.MemoryBank(mem_size=2, mem_len=4, obs_shape=OBS_SHAPE, ram_bytes=100 * TRAJ_BYTES)
    bank.save_chunk_bytes = per_tensor * TRAJ_BYTES
    for level, value in ((0, 1), (1, 2), (0, 3), (2, 4), (1, 5)):
        bank.add(level, *trajectory(2 + level, value))
    state = bank.state_dict()
    assert [len(chunk) for chunk in state["frames"]] == [min(per_tensor, 5 - i) for i in range(0, 5, per_tensor)]
    if layout == "per trajectory":
        state["frames"] = [row for chunk in state["frames"] for row in chunk]
    copy = script.MemoryBank(mem_size=2, mem_len=4, obs_shape=OBS_SHAPE, ram_bytes=100 * TRAJ_BYTES)
    copy.load_state_dict(state)
    assert copy.num_trajectories == 5
    same_banks(bank, copy)


@pytest.mark.parametrize("kill_at", ["mid-write", "before-rename"])
def test_a_kill_during_a_save_leaves_a_whole_checkpoint(tmp_path, script, kill_at):
    """A saver killed (SIGKILL, by itself, so the kill lands where the test says every time) inside
    its third save, halfway through the bytes or just before the rename: the file still holds the
    second save whole."""
    path = tmp_path / "agent.pt"
    code = (f"import io, os, signal, sys; sys.path.insert(0, {str(ROOT)!r}); import torch, {script.__name__} as script\n"
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

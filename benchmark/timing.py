"""What the throughput benchmarks share: a steps-per-second timer, a CPU-time timer, the CPU's name, and
the flags of the network and update the scripts had before 2026-11-26."""

import platform
import re
import time
from pathlib import Path

# the network and update of miniworld_failmem.py and reacher_failmem.py before they took the gridworld's defaults
BEFORE = ["--cnn-blocks", "2", "--snail-blocks", "2", "--snail-filters", "32", "--update-epochs", "4",
          "--trials-per-minibatch", "12"]


def rate(function, steps_per_call, seconds=3.0):
    """Steps per second of `function` (which takes `steps_per_call` steps), after one warm-up call."""
    function()
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        function()
        calls += 1
    return calls * steps_per_call / (time.perf_counter() - start)


def cpu_ms(function, seconds=3.0):
    """CPU milliseconds per call of `function`, after one warm-up call. Process time, not wall time: a
    benchmark that shares its cores with a training run is slowed in wall time, much less in CPU time."""
    function()
    calls, start, cpu_start = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - start < seconds or calls == 0:  # `seconds` of wall time, however little CPU they got
        function()
        calls += 1
    return 1000.0 * (time.process_time() - cpu_start) / calls


def cpu_name():
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def last_update(output):
    """(training SPS, rollout seconds, PPO update seconds) of the last update line grid_failmem.py
    printed in `output`, or None when it printed none (the SPS is the run's mean so far)."""
    lines = re.findall(r"SPS (\d+) \(rollout ([\d.]+) s, update ([\d.]+) s\)", output)
    return (int(lines[-1][0]), float(lines[-1][1]), float(lines[-1][2])) if lines else None

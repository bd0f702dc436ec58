"""What the throughput benchmarks share: a steps-per-second timer and the CPU's name."""

import platform
import time
from pathlib import Path


def rate(function, steps_per_call, seconds=3.0):
    """Steps per second of `function` (which takes `steps_per_call` steps), after one warm-up call."""
    function()
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        function()
        calls += 1
    return calls * steps_per_call / (time.perf_counter() - start)


def cpu_name():
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()

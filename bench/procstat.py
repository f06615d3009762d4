"""What a process costs, read from ``/proc``: CPU time of all its threads and its memory."""

from __future__ import annotations

import os
import time

_TICKS = os.sysconf("SC_CLK_TCK")


def family(pid: int) -> list[int]:
    """``pid`` and all its live descendants (a supervisor and its workers)."""
    out = [pid]
    for member in out:
        for tid in _listdir(f"/proc/{member}/task"):
            try:
                with open(f"/proc/{member}/task/{tid}/children") as f:
                    out.extend(int(child) for child in f.read().split())
            except FileNotFoundError:
                continue
    return out


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except FileNotFoundError:
        return []


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` and its descendants so far (all threads, live and exited)."""
    total = 0.0
    for member in family(pid):
        try:
            with open(f"/proc/{member}/stat", "rb") as f:
                stat = f.read()
        except FileNotFoundError:
            continue
        fields = stat[stat.rindex(b")") + 2 :].split()
        total += int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5): utime, stime
    return total / _TICKS


def thread_cpu_seconds(pid: int) -> dict[int, float]:
    """User + system CPU time of each live thread of ``pid`` and its descendants, by thread id."""
    out: dict[int, float] = {}
    for member in family(pid):
        for tid in _listdir(f"/proc/{member}/task"):
            try:
                with open(f"/proc/{member}/task/{tid}/stat", "rb") as f:
                    stat = f.read()
            except FileNotFoundError:
                continue  # the thread ended
            fields = stat[stat.rindex(b")") + 2 :].split()
            out[int(tid)] = (int(fields[11]) + int(fields[12])) / _TICKS
    return out


def memory_kib(pid: int) -> dict[str, int]:
    """``VmRSS``: resident now, summed over ``pid`` and its descendants; ``VmHWM``: the largest peak
    resident size of any one of them (one worker); in KiB."""
    out = {"VmRSS": 0, "VmHWM": 0}
    for member in family(pid):
        try:
            with open(f"/proc/{member}/status") as f:
                lines = f.read().splitlines()
        except FileNotFoundError:
            continue
        for line in lines:
            name, _, value = line.partition(":")
            if name == "VmRSS":
                out["VmRSS"] += int(value.split()[0])
            elif name == "VmHWM":
                out["VmHWM"] = max(out["VmHWM"], int(value.split()[0]))
    return out


def idle_rate(pid: int, seconds: float = 1.0, *, windows: int = 4) -> float:
    """CPU seconds per second that ``pid`` burns while nobody calls it.

    Measured once the process is nearly quiet (under 5% of a CPU, waiting at most a minute),
    then the lowest rate over ``windows`` slices of ``seconds``: background work left from the
    last load (a recording process storing the warm-up's records) is not idle burn.
    """
    settle(pid, 0.05, limit=60.0)
    rates = []
    for _ in range(windows):
        before = cpu_seconds(pid)
        time.sleep(seconds / windows)
        rates.append((cpu_seconds(pid) - before) / (seconds / windows))
    return min(rates)


def settle(pid: int, idle: float, *, quiet: float = 0.3, limit: float = 10.0) -> None:
    """Wait until ``pid`` is back to idle (its background work for the last load is done)."""
    deadline = time.monotonic() + limit
    tick = 1 / _TICKS
    while time.monotonic() < deadline:
        before = cpu_seconds(pid)
        time.sleep(quiet)
        if cpu_seconds(pid) - before <= idle * quiet + tick:
            return


class CpuMeter:
    """CPU used by a process over a window, minus what it would have used idle."""

    def __init__(self, pid: int, idle: float) -> None:
        self.pid = pid
        self.idle = idle
        self.cpu0 = cpu_seconds(pid)
        self.wall0 = time.monotonic()

    def stop(self, *, wait_idle: bool = True) -> tuple[float, float]:
        """(busy CPU seconds, wall seconds) since the meter started."""
        if wait_idle:
            settle(self.pid, self.idle)
        wall = time.monotonic() - self.wall0
        used = cpu_seconds(self.pid) - self.cpu0 - self.idle * wall
        return max(used, 0.0), wall

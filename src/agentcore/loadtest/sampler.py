"""CPU and resident memory of a process and its descendants, read from ``/proc`` (Linux).

One :class:`ProcessSampler` per watched tree (the gateway with its workers;
Locust with its ``--processes`` workers). CPU is reported per process as a
percentage of one core, so a saturated single-threaded Locust worker reads
about 100 whatever the machine's size; the machine's own busy share comes
from ``/proc/stat``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class ProcessStat:
    cpu_s: float
    rss_bytes: int


def read_stat(pid: int) -> ProcessStat | None:
    """utime + stime (s) and RSS of one process; None when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces; fields after it are plain.
    fields = raw[raw.rindex(")") + 2 :].split()
    utime, stime, rss_pages = int(fields[11]), int(fields[12]), int(fields[21])
    return ProcessStat((utime + stime) / CLK_TCK, rss_pages * PAGE)


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (children of all its threads)."""
    found = [pid]
    index = 0
    while index < len(found):
        current = found[index]
        index += 1
        try:
            tasks = os.listdir(f"/proc/{current}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                children = Path(f"/proc/{current}/task/{tid}/children").read_text().split()
            except OSError:
                continue
            found.extend(int(c) for c in children if int(c) not in found)
    return found


@dataclass
class TreeSample:
    """One reading of a process tree, relative to the previous one."""

    at: float
    #: CPU of the whole tree since the previous sample, % of one core.
    cpu_percent: float
    #: The busiest single process of the tree, % of one core.
    max_process_cpu_percent: float
    rss_bytes: int
    processes: int


@dataclass
class ProcessSampler:
    root: int
    _last: dict[int, float] = field(default_factory=dict)
    _last_at: float | None = None

    def sample(self, now: float) -> TreeSample | None:
        """None on the first call (no interval yet) and when the tree is gone."""
        stats = {pid: s for pid in descendants(self.root) if (s := read_stat(pid)) is not None}
        if not stats:
            return None
        previous, previous_at = self._last, self._last_at
        self._last = {pid: s.cpu_s for pid, s in stats.items()}
        self._last_at = now
        if previous_at is None or now <= previous_at:
            return None
        wall = now - previous_at
        # A process seen for the first time is counted from zero only if it
        # is new since the last sample (a --processes worker forked meanwhile).
        deltas = [s.cpu_s - previous.get(pid, s.cpu_s) for pid, s in stats.items()]
        return TreeSample(
            at=now,
            cpu_percent=sum(deltas) / wall * 100,
            max_process_cpu_percent=max(deltas) / wall * 100,
            rss_bytes=sum(s.rss_bytes for s in stats.values()),
            processes=len(stats),
        )


@dataclass
class MachineSampler:
    """Busy share of all CPUs, from the first line of ``/proc/stat``."""

    _last: tuple[int, int] | None = None

    def sample(self) -> float | None:
        try:
            first = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        except OSError:
            return None
        values = [int(v) for v in first]
        idle = values[3] + values[4]  # idle + iowait
        total = sum(values[:8])  # guest time is already inside user
        previous, self._last = self._last, (idle, total)
        if previous is None or total == previous[1]:
            return None
        return 100.0 * (1 - (idle - previous[0]) / (total - previous[1]))


def usable_cpus(pid: int | None = None) -> int:
    """CPUs the process (default: this one) may run on."""
    try:
        return len(os.sched_getaffinity(pid or 0))
    except OSError:
        return os.cpu_count() or 1

"""What a running process tree costs, read from /proc: CPU seconds, resident memory (now and at its peak), sockets.

Shared by the benchmarks that measure a real ``mailward smtp`` (bench/throughput.py, bench/detection_smtp.py): a
multi-process ingress (a supervisor and its workers) is measured whole, every process of its tree.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

#: Seconds of CPU time per clock tick in /proc/PID/stat.
CLOCK_TICK = 1.0 / os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str]:
    """The fields of /proc/PID/stat after the command name (field 3 of stat(5) is index 0)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process (all its threads) so far."""
    try:
        fields = _stat_fields(pid)
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) * CLOCK_TICK  # utime and stime, fields 14 and 15 of stat(5)


def _status_mb(pid: int, key: str) -> float:
    """A memory line of /proc/PID/status (``VmHWM``, ``VmRSS``), in MiB."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mb(pid: int) -> float:
    """VmHWM of a running process, in MiB."""
    return _status_mb(pid, "VmHWM")


def rss_mb(pid: int) -> float:
    """VmRSS of a running process (resident now), in MiB."""
    return _status_mb(pid, "VmRSS")


def socket_count(pid: int) -> int:
    """How many sockets a process has open (its listeners, clients, pools)."""
    count = 0
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                if os.readlink(fd).startswith("socket:"):
                    count += 1
    return count


def process_tree(root: int) -> list[int]:
    """``root`` and every live descendant (from the parent ids in /proc/PID/stat), root first."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int(_stat_fields(int(entry.name))[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop(0)
        tree.append(pid)
        todo.extend(sorted(children.get(pid, ())))
    return tree


def tree_cpu_seconds(root: int) -> float:
    """CPU seconds of ``root`` and its descendants: each live one's utime+stime plus the cutime+cstime of the
    children it already reaped, so that a multi-process ingress (or a child that exited) is counted whole."""
    total = 0.0
    for pid in process_tree(root):
        try:
            fields = _stat_fields(pid)
        except OSError:
            continue
        total += sum(int(v) for v in fields[11:15]) * CLOCK_TICK  # utime, stime, cutime, cstime: stat(5) 14-17
    return total


def tree_peak_rss_mb(root: int) -> dict[int, float]:
    """VmHWM in MiB of ``root`` and each live descendant, by pid."""
    return {pid: peak_rss_mb(pid) for pid in process_tree(root)}


def tree_rss_mb(root: int) -> dict[int, float]:
    """VmRSS in MiB of ``root`` and each live descendant, by pid."""
    return {pid: rss_mb(pid) for pid in process_tree(root)}

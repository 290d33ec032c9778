"""This process's resident memory (Linux /proc): the current size, and a peak that can be reset, so that
a stretch of work (a dry-run's warm-up, a collection) can be measured on its own. A collection job
(``job.py``) resets the peak before collecting and records each rank's growth in factors.json."""

from __future__ import annotations


def resident_bytes(field: str) -> int | None:
    """VmRSS or VmHWM of this process from /proc/self/status (Linux), in bytes."""
    try:
        for line in open("/proc/self/status", encoding="ascii"):
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def reset_peak_resident() -> bool:
    """Start a new peak-resident-size window (Linux >= 4.0: '5' to /proc/self/clear_refs resets VmHWM)."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
            handle.write("5")
        return True
    except OSError:
        return False

"""The load figures an agent reports on each heartbeat."""

from __future__ import annotations

import os
import threading
import time
from typing import List, Tuple

__all__ = ["LoadTracker"]


def _percentile(sorted_values: List[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    # Nearest-rank: the smallest value with at least q of the values at or below it.
    rank = max(1, int(-(-q * len(sorted_values) // 1)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


class LoadTracker:
    """In-flight count, and latency and error ratio of the calls finished since the last report.

    A window with no finished call repeats the previous latency figures (the agent is idle, not
    faster), so the kernel's score does not jump on quiet periods.
    """

    def __init__(self, max_samples: int = 4096) -> None:
        self._lock = threading.Lock()
        self._in_flight = 0
        self._samples: List[Tuple[float, bool]] = []
        self._max = max_samples
        self._last = (0.0, 0.0, 0.0)
        self._cpu_mark = (time.monotonic(), time.process_time())
        self._cpus = os.cpu_count() or 1

    @property
    def in_flight(self) -> int:
        """Calls being served now."""
        with self._lock:
            return self._in_flight

    def started(self) -> None:
        """A call started."""
        with self._lock:
            self._in_flight += 1

    def finished(self, latency_ms: float, ok: bool) -> None:
        """A call finished after ``latency_ms``; ``ok`` is False when it answered an error."""
        with self._lock:
            self._in_flight -= 1
            if len(self._samples) < self._max:
                self._samples.append((latency_ms, ok))

    def report(self) -> dict:
        """The figures since the previous report (AgentLoad fields), and starts a new window."""
        with self._lock:
            samples, self._samples = self._samples, []
            in_flight = self._in_flight
        now, cpu = time.monotonic(), time.process_time()
        wall = now - self._cpu_mark[0]
        used = cpu - self._cpu_mark[1]
        self._cpu_mark = (now, cpu)
        utilisation = min(1.0, max(0.0, used / (wall * self._cpus))) if wall > 0 else 0.0
        if samples:
            latencies = sorted(s[0] for s in samples)
            errors = sum(1 for s in samples if not s[1])
            self._last = (_percentile(latencies, 0.5), _percentile(latencies, 0.99), errors / len(samples))
        p50, p99, error_rate = self._last
        return {
            "in_flight": in_flight,
            "cpu": utilisation,
            "latency_p50_ms": p50,
            "latency_p99_ms": p99,
            "error_rate": error_rate,
        }

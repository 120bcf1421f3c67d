"""One timing discipline for every backend's bench: warm-up excluded, median and spread."""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable


def time_callable(run: Callable[[], Any], sync: Callable[[Any], Any], batch: int, repeats: int = 5,
                  warmup: int = 2) -> dict[str, Any]:
    """Time ``sync(run())`` ``repeats`` times after ``warmup`` untimed calls.

    ``sync`` must block until the device has finished (block_until_ready,
    cuda.synchronize, waitall, ...), so asynchronous frameworks are timed
    for their work, not for queueing it.
    """
    for _ in range(max(warmup, 1)):  # compilation, autotuning, allocation
        sync(run())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        sync(run())
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {"median_s": median, "min_s": min(times), "max_s": max(times),
            "stdev_s": statistics.stdev(times) if len(times) > 1 else 0.0,
            "images_per_s": batch / median, "repeats": repeats, "warmup": max(warmup, 1), "batch": batch}

"""The Ray work queue: at most ``slots`` tasks in flight, results in order, the first error raised."""

from __future__ import annotations

import itertools
import time

import pytest


def test_map_bounded_keeps_at_most_slots_in_flight(ray_cluster):
    """Four 0.2-s tasks on two CPUs with one slot run one after another, in order; a failing task's
    own error is raised."""
    from wsigym.distributed.gather import map_bounded

    @ray_cluster.remote(num_cpus=1)
    def span(i: int) -> tuple[float, float]:
        if i < 0:
            raise KeyError(f"item {i}")
        t0 = time.time()
        time.sleep(0.2)
        return t0, time.time()

    spans = map_bounded(span.remote, [0, 1, 2, 3], slots=1, desc="t", progress=False)
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans)), spans
    with pytest.raises(KeyError, match="item -1"):
        map_bounded(span.remote, [0, -1, 2], slots=2, desc="t", progress=False)
    with pytest.raises(ValueError, match="slots"):
        map_bounded(span.remote, [0], slots=0, desc="t", progress=False)

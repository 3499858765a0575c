"""Wait for Ray work with one overall progress bar, in submission order, failing fast.

:func:`gather` waits for a fixed list of tasks; :func:`map_bounded` runs a list of items as a work queue
with a fixed number of tasks in flight (the next item is submitted as soon as a task finishes).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from tqdm.auto import tqdm

from wsigym.distributed.cluster import require_ray


def _own_error(error: Exception) -> Exception:
    """The task's own exception inside Ray's ``RayTaskError`` (``error`` itself when there is none)."""
    cause = getattr(error, "cause", None)
    return cause if isinstance(cause, Exception) else error


def gather(
    refs: Sequence[Any],
    *,
    desc: str,
    unit: str = "task",
    progress: bool = True,
    on_result: Callable[[int, Any], None] | None = None,
) -> list[Any]:
    """The results of ``refs`` (Ray ``ObjectRef`` of tasks), in the order of ``refs``.

    One tqdm bar counts finished tasks whatever order they finish in; ``on_result(i, value)`` is called
    as each one finishes (e.g. to report it at once). The first task that raises cancels the tasks still
    waiting and re-raises its error (Ray's ``RayTaskError`` is unwrapped to the task's own exception).
    """
    return map_bounded(
        lambda ref: ref,
        refs,
        slots=max(1, len(refs)),
        desc=desc,
        unit=unit,
        progress=progress,
        on_result=on_result,
    )


def map_bounded(
    submit: Callable[[Any], Any],
    items: Sequence[Any],
    *,
    slots: int,
    desc: str,
    unit: str = "task",
    progress: bool = True,
    on_result: Callable[[int, Any], None] | None = None,
) -> list[Any]:
    """The results of ``submit(item)`` (a Ray ``ObjectRef``) for every item of ``items``, in their order.

    A work queue with at most ``slots`` tasks in flight: the first ``slots`` items are submitted at once
    and each later one as soon as a task finishes, in the order of ``items``. So a job takes no more
    of the cluster than it asked for, and a slow item holds up one slot, not the others. One tqdm bar
    counts finished items; ``on_result(i, value)`` is called as each one finishes. The first task that
    raises cancels the tasks still in flight and re-raises its error (Ray's ``RayTaskError`` unwrapped
    to the task's own exception); the items not yet submitted never run.

    Raises:
        ValueError: ``slots < 1``.
    """
    if slots < 1:
        raise ValueError(f"slots must be at least 1, got {slots}")
    ray = require_ray()
    results: list[Any] = [None] * len(items)
    queue = deque(range(len(items)))
    running: dict[Any, int] = {}  # ref -> item index
    with tqdm(total=len(items), desc=desc, unit=unit, disable=not progress) as bar:
        while queue or running:
            while queue and len(running) < slots:
                i = queue.popleft()
                running[submit(items[i])] = i
            (ref,), _ = ray.wait(list(running), num_returns=1)
            i = running.pop(ref)
            try:
                value = ray.get(ref)
            except ray.exceptions.RayTaskError as e:
                for other in running:
                    ray.cancel(other)
                raise _own_error(e) from None
            results[i] = value
            if on_result is not None:
                on_result(i, value)
            bar.update(1)
    return results

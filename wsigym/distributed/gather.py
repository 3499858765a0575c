"""Wait for Ray work with one overall progress bar, in submission order, failing fast.

:func:`gather` waits for a fixed list of tasks; :func:`map_on_actors` runs a list of items over a fixed
set of actors as a work queue (each actor gets the next item as soon as it is free).
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
    ray = require_ray()
    index = {ref: i for i, ref in enumerate(refs)}
    results: list[Any] = [None] * len(refs)
    pending = list(refs)
    with tqdm(total=len(refs), desc=desc, unit=unit, disable=not progress) as bar:
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            for ref in ready:
                try:
                    value = ray.get(ref)
                except ray.exceptions.RayTaskError as e:
                    for other in pending:
                        ray.cancel(other)
                    raise _own_error(e) from None
                results[index[ref]] = value
                if on_result is not None:
                    on_result(index[ref], value)
                bar.update(1)
    return results


def map_on_actors(
    actors: Sequence[Any],
    ready: Callable[[Any], Any],
    submit: Callable[[Any, Any], Any],
    items: Sequence[Any],
    *,
    desc: str,
    unit: str = "task",
    progress: bool = True,
    on_ready: Callable[[int, Any], None] | None = None,
    on_result: Callable[[int, Any], None] | None = None,
) -> list[Any]:
    """The results of ``submit(actor, item)`` for every item of ``items``, in the order of ``items``.

    A work queue over a fixed set of Ray actors: an actor gets its first item once it is up
    (``ready(actor)``, a ref of a call that returns once the actor is constructed; then
    ``on_ready(k, value)`` for ``actors[k]``) and its next item as soon as it returns the last one, in
    the order of ``items``. An actor the cluster cannot place yet holds no item, so the others finish the
    job without it. One tqdm bar counts finished items; ``on_result(i, value)`` is called as each one
    finishes. The first call that raises re-raises its error (Ray's ``RayTaskError`` unwrapped to the
    task's own exception); the items still running are left to the caller, who owns the actors (e.g.
    ``ray.kill`` them in a ``finally``).
    """
    ray = require_ray()
    results: list[Any] = [None] * len(items)
    queue = deque(range(len(items)))
    # ref -> (actor index, item index or None for the actor's readiness)
    running: dict[Any, tuple[int, int | None]] = {}
    if items:
        running = {ready(actor): (k, None) for k, actor in enumerate(actors)}
    left = len(items)
    with tqdm(total=len(items), desc=desc, unit=unit, disable=not progress) as bar:
        while left:
            if not running:
                raise ValueError("map_on_actors needs at least one actor")
            (ref,), _ = ray.wait(list(running), num_returns=1)
            k, i = running.pop(ref)
            try:
                value = ray.get(ref)
            except ray.exceptions.RayTaskError as e:
                raise _own_error(e) from None
            if i is None:
                if on_ready is not None:
                    on_ready(k, value)
            else:
                results[i] = value
                left -= 1
                if on_result is not None:
                    on_result(i, value)
                bar.update(1)
            if queue:
                j = queue.popleft()
                running[submit(actors[k], items[j])] = (k, j)
    return results

"""Wait for Ray tasks with one overall progress bar, in submission order, failing fast."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from tqdm.auto import tqdm

from wsigym.distributed.cluster import require_ray


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
                    cause = getattr(e, "cause", None)
                    raise (cause if isinstance(cause, Exception) else e) from None
                results[index[ref]] = value
                if on_result is not None:
                    on_result(index[ref], value)
                bar.update(1)
    return results

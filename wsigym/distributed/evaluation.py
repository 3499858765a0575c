"""``wsigym evaluate --backend ray``: one Ray task per job of the protocol (agent, budget, seed).

:func:`wsigym.evaluate.evaluate` plans the jobs and builds one environment per budget here, as the
local backend does; this module ships them. The read-only inputs go into Ray's object store once per
call, never once per task: each split's :class:`~wsigym.envs.slide_source.SlideSource` (``Z``, the
cached ``V``, coordinates, ground truth and the dataset), the HAFED and TSU models, and each agent
object. A worker process rebuilds an environment from them once (``gym.make`` with the registration's
own arguments, the source adopted by :func:`~wsigym.envs.slide_source.adopt_source`, so nothing is
read from disk or recomputed) and keeps it for the later tasks it runs. Each task runs
:func:`wsigym.evaluate.run_job` (given by the caller), the function the local backend runs, so the metrics are identical
(``seconds_per_slide`` aside). Live-slide environments (``slides=``) are local only.
"""

from __future__ import annotations

import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import gymnasium as gym

from wsigym.distributed.cluster import connect, gpus_per_task
from wsigym.distributed.gather import gather
from wsigym.envs.slide_source import SlideSource, adopt_source

#: Environments a worker process keeps (least recently used ones are closed first).
WORKER_ENVS = 8
_worker_envs: OrderedDict[str, gym.Env] = OrderedDict()


@dataclass(frozen=True)
class EnvRecipe:
    """How a worker rebuilds one environment: ``gym.make(env_id, **kwargs)`` on the shared inputs.

    ``source``, ``hafed`` and ``tsu`` are object-store references (``tsu`` None: the registration's
    own); ``key`` names the environment in the worker's cache.
    """

    key: str
    env_id: str
    kwargs: dict[str, Any]
    source: Any
    hafed: Any
    tsu: Any = None


def worker_env(recipe: EnvRecipe) -> gym.Env:
    """The environment of ``recipe`` in this worker process, built on first use."""
    env = _worker_envs.get(recipe.key)
    if env is not None:
        _worker_envs.move_to_end(recipe.key)
        return env
    import ray

    source, hafed = ray.get([recipe.source, recipe.hafed])
    kwargs = {**recipe.kwargs, "dataset": source.dataset, "hafed": hafed, "progress": False}
    if recipe.tsu is not None:
        kwargs["tsu"] = ray.get(recipe.tsu)
    adopt_source(source, hafed)
    env = gym.make(recipe.env_id, **kwargs)
    _worker_envs[recipe.key] = env
    while len(_worker_envs) > WORKER_ENVS:
        _worker_envs.popitem(last=False)[1].close()
    return env


def _job_task(
    run: Callable[..., dict[str, float]], job: Any, agent: Any, recipe: EnvRecipe, threads: int
) -> dict[str, float]:
    """One job in a Ray worker (``agent`` and ``recipe`` arrive from the object store)."""
    import torch

    torch.set_num_threads(threads)
    return run(replace(job, agent=agent), worker_env(recipe), progress=False)


def _recipe(env: gym.Env, put: Any, key: str) -> EnvRecipe:
    base = env.unwrapped
    if not isinstance(getattr(base, "source", None), SlideSource) or env.spec is None:
        raise ValueError(
            "backend='ray' evaluates environments made by gym.make on a dataset (features); "
            f"got {type(base).__name__} with source {type(getattr(base, 'source', None)).__name__}"
        )
    kwargs = {k: v for k, v in env.spec.kwargs.items() if k not in ("dataset", "hafed", "tsu", "progress")}
    return EnvRecipe(
        key=key,
        env_id=env.spec.id,
        kwargs=kwargs,
        source=put(base.source),
        hafed=put(base.hafed),
        tsu=None if base.tsu is None else put(base.tsu),
    )


def run_jobs_ray(
    jobs: Sequence[Any],
    envs: dict[float, gym.Env],
    run: Callable[..., dict[str, float]],
    *,
    progress: bool = True,
    cpus_per_task: float = 1.0,
    address: str | None = None,
) -> list[dict[str, float]]:
    """``backend="ray"`` of :func:`wsigym.evaluate.evaluate`: the jobs' metrics, in job order.

    Args:
        jobs: the protocol's jobs (:class:`wsigym.evaluate.EvalJob`); ``envs[job.budget]`` is the
            environment each one runs on.
        run: what a task runs, :func:`wsigym.evaluate.run_job` (passed in, so that this module does not
            import the protocol that imports it).
        cpus_per_task: CPU cores a task reserves (and its torch threads); a task on a CUDA
            environment also asks for one GPU.
        address: the cluster (:func:`wsigym.distributed.cluster.connect`; ignored when connected).
    """
    ray = connect(address)
    stored: dict[int, tuple[Any, Any]] = {}  # id -> (object, ref): the object is kept so its id stays its own

    def put(obj: Any) -> Any:  # once per object, whatever the number of tasks that read it
        if id(obj) not in stored:
            stored[id(obj)] = (obj, ray.put(obj))
        return stored[id(obj)][1]

    call = uuid.uuid4().hex
    recipes = {budget: put(_recipe(env, put, f"{call}-{budget!r}")) for budget, env in envs.items()}
    remote = ray.remote(_job_task)
    refs = []
    for job in jobs:
        gpus = gpus_per_task(str(envs[job.budget].unwrapped.source.device))
        task = remote.options(num_cpus=cpus_per_task, num_gpus=gpus, max_retries=0)
        agent = put(job.agent)
        threads = max(1, int(cpus_per_task))
        refs.append(task.remote(run, replace(job, agent=None), agent, recipes[job.budget], threads))
    return gather(refs, desc="evaluation jobs", unit="job", progress=progress)

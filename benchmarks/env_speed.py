"""Steps per second of the zoom environment: a SASHA-style loop vs ``WSIZoom-v0`` vs the vector env.

Measured in one run, for each slide size N (default 2000 and 10000) at d = 384:

(a) ``loop``: a straightforward per-environment step as SASHA's public code does it: cosine of the
    zoomed row against the whole evolving state (``|cos|``, normalising ``S_t`` every step), TSU on
    the new similar rows, overwrite every zoomed row, then the **full** ``HAFED.classify`` of the
    ``N x d`` state for the reward;
(b) ``WSIZoom-v0`` (:class:`wsigym.envs.zoom.WSIZoomEnv`, observations copied), the same with
    ``update="none"`` (b') to separate the TSU MLP's cost from the environment's own, and with
    ``copy_obs=False`` (b''), where the observation is the engine's buffer, kept current row by row;
(c) the vector env (:class:`wsigym.envs.vector.WSIZoomVectorEnv`) at B = 1, 16, 64, 256, and (c') the same
    with ``copy=False`` (the observation is the engine's buffer, not a fresh ``B x P x d`` copy), and the floor
    of a vector env that scans every row: the ``B`` full similarity scans of one vector step alone (``B``
    different ``N x d`` states). On the CPU the engine scans only the rows the TSU can still update
    (:class:`wsigym.envs.state_update.PendingRows`), which here, early in 2000-row episodes with ~8 rows
    updated per zoom, is most of them; on synth-c16's whole episodes ~0.2 of them (``pending_scan.py``).

Reported: environment steps per second (for the vector env, ``B x`` vector steps per second), the
ratio to (a), and the step time divided by the time of one ``N x d`` similarity scan (``Z @ z_a``,
the per-step floor of a TSU environment that scans every row). Steps are timed inside episodes (the budget ``0.2 N`` is
far longer than the timed window), so reset cost is not included. Actions are random legal patches.
HAFED and TSU are randomly initialised (speed does not depend on the weights); the slides are
synthetic clustered features with a precomputed oracle view ``V`` (each zoom TSU-updates ~10 rows).

Run: ``.venv/bin/python benchmarks/env_speed.py`` (``--help`` for sizes, device, threads).
Configurations whose tensors would not fit in ``--max-gb`` are skipped and say so.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F

import zoo
from wsigym.data.random_dataset import random_dataset
from wsigym.envs.slide_source import ORACLE_VIEW
from wsigym.envs.vector import WSIZoomVectorEnv
from wsigym.envs.zoom import WSIZoomEnv


def median_time(fn, reps: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def scan_floor(z: torch.Tensor, device: torch.device) -> float:
    """Seconds of one ``N x d`` similarity scan ``Z @ z_a``."""
    a = [0]

    def fn():
        a[0] = (a[0] + 17) % z.shape[0]
        torch.mv(z, z[a[0]])
        sync(device)

    return median_time(fn, reps=50)


def batch_scan_floor(b: int, n: int, dim: int, device: torch.device) -> float:
    """Seconds of one vector step's similarity scans alone: ``B`` scans of ``B`` different ``N x d`` states
    (as the engine reads them; at large ``B`` they no longer fit the CPU caches, so each costs more than
    :func:`scan_floor`'s one cached scan). No vector env that scans every row can step faster than this."""
    z = torch.randn(b, n, dim, device=device)
    q = torch.randn(b, dim, device=device)

    def fn():
        if device.type == "cpu":
            for i in range(b):
                torch.mv(z[i], q[i])
        else:
            torch.bmm(z, q.unsqueeze(-1))
        sync(device)

    return median_time(fn, reps=50)


class SashaStyleLoop:
    """(a): one episode, the straightforward way (full recomputation every step)."""

    def __init__(self, z, v, label, hafed, tsu, tau):
        self.z, self.v, self.hafed, self.tsu, self.tau = z, v, hafed, tsu, tau
        self.label = torch.tensor([label], device=z.device)
        self.state = z.clone()
        self.not_updated = torch.ones(z.shape[0], dtype=torch.bool, device=z.device)
        self.visited: list[int] = []

    @torch.no_grad()
    def step(self, a: int) -> float:
        s = self.state
        self.visited.append(a)
        cos = (F.normalize(s, dim=-1) @ F.normalize(s[a], dim=-1)).abs()
        similar = cos >= self.tau
        new = similar & self.not_updated
        new[a] = False
        self.not_updated &= ~similar
        idx = new.nonzero().squeeze(-1)
        if idx.numel():
            s[idx] = self.tsu(self.v[a].expand(len(idx), -1), s[a].expand(len(idx), -1), s[idx])
        vis = torch.tensor(self.visited, device=s.device)
        s[vis] = self.v[vis]
        logits = self.hafed.classify(s[None])["logits"]
        return -float(F.cross_entropy(logits, self.label))


def timed_steps(step, pick, n_steps: int, device: torch.device, max_seconds: float) -> tuple[float, int]:
    """Seconds per call of ``step(pick())`` over up to ``n_steps`` calls (stops after ``max_seconds``)."""
    for _ in range(2):
        step(pick())
    sync(device)
    t0 = time.perf_counter()
    done = 0
    while done < n_steps:
        step(pick())
        done += 1
        if time.perf_counter() - t0 > max_seconds:
            break
    sync(device)
    return (time.perf_counter() - t0) / done, done


def time_single_env(env, rng, args, device) -> tuple[float, int, float]:
    """Seconds per step of a single env with random legal actions, steps timed, mean TSU rows/step."""
    env.reset(seed=0)
    state = {"info": {"action_mask": env.action_masks()}, "tsu": []}

    def step(a):
        _, _, _, _, info = env.step(a)
        state["info"] = info
        state["tsu"].append(info["tsu_updates"])

    def pick():
        return int(rng.choice(np.flatnonzero(state["info"]["action_mask"])))

    sec, k = timed_steps(step, pick, args.steps, device, args.max_seconds)
    return sec, k, float(np.mean(state["tsu"]))


def time_vector_env(vec, rng, args, device) -> tuple[float, int]:
    """Seconds per vector step with random legal actions, and steps timed."""
    vec.reset(seed=0)
    state = {"masks": vec.action_masks()}

    def step(actions):
        vec.step(actions)
        state["masks"] = vec.action_masks()

    def pick():
        return (rng.random(state["masks"].shape) * state["masks"]).argmax(axis=1)

    return timed_steps(step, pick, max(2, args.steps // max(1, vec.num_envs // 4)), device, args.max_seconds)


def run_size(n: int, args, device: torch.device, hafed, tsu) -> list[tuple[str, float, float, float]]:
    dim = args.dim
    # clustered Z (cos >= 0.95 within ~half a cluster of ~20), oracle rows V as the view "oracle"
    data = random_dataset(
        args.slides,
        n,
        dim,
        clusters=max(1, n // 20),
        cluster_noise=0.2,
        views={ORACLE_VIEW: 0.5},
        split=(0, 0),
    )
    kw = {"dataset": data, "hafed": hafed, "tsu": tsu, "progress": False, "device": device}
    rng = np.random.default_rng(0)
    rows = []

    env = WSIZoomEnv(**kw)
    src = env.source
    floor = scan_floor(src.z[src.rows(0)].contiguous(), device)

    # (a) SASHA-style loop
    loop = SashaStyleLoop(
        src.z[src.rows(0)], src.v[src.rows(0)], int(src.labels[0]), hafed, tsu, env.config.tau
    )
    order = iter(rng.permutation(n).tolist())
    sec_a, k_a = timed_steps(loop.step, lambda: next(order), args.steps, device, args.max_seconds)
    rows.append(("(a) SASHA-style loop, full classify", 1 / sec_a, sec_a, k_a))

    # (b) WSIZoom-v0, and (b') the same without TSU rows
    sec_b, k_b, tsu_rows = time_single_env(env, rng, args, device)
    rows.append((f"(b) WSIZoom-v0 ({tsu_rows:.1f} TSU rows/step)", 1 / sec_b, sec_b, k_b))
    env = WSIZoomEnv(**kw, update="none")
    sec_n, k_n, _ = time_single_env(env, rng, args, device)
    rows.append(("(b') WSIZoomNoUpdate-v0 (no TSU rows)", 1 / sec_n, sec_n, k_n))
    env = WSIZoomEnv(**kw, copy_obs=False)
    sec_s, k_s, _ = time_single_env(env, rng, args, device)
    rows.append(("(b'') WSIZoom-v0, copy_obs=False", 1 / sec_s, sec_s, k_s))
    env = None

    # (c) vector env
    for b in args.batch_sizes:
        # Z, V and state batches, the observation copy and step temporaries: ~6 B x N x d float32
        # (measured: B=256, N=10000 peaked at 22 GB; the earlier estimate of 3 copies got it OOM-killed)
        need = 6 * b * n * dim * 4 / 2**30
        if need > args.max_gb:
            rows.append(
                (f"(c) vector env B={b}: skipped (~{need:.1f} GiB > --max-gb {args.max_gb})", 0, 0, 0)
            )
            continue
        sec_c, k_c = time_vector_env(WSIZoomVectorEnv(num_envs=b, **kw), rng, args, device)
        rows.append((f"(c) vector env B={b}", b / sec_c, sec_c / b, k_c))
        sec_c, k_c = time_vector_env(WSIZoomVectorEnv(num_envs=b, copy=False, **kw), rng, args, device)
        rows.append((f"(c') vector env B={b}, copy=False", b / sec_c, sec_c / b, k_c))
        sec_f = batch_scan_floor(b, n, dim, device)
        rows.append((f"(floor) B={b}: the B full scans alone", b / sec_f, sec_f / b, 50))
    out = []
    base = rows[0][1]
    print(
        f"\nN = {n}, d = {dim}: one N x d similarity scan (Z @ z_a) = {floor * 1e3:.3f} ms (the per-step floor)"
    )
    print(f"{'':46s} {'env steps/s':>12s} {'x (a)':>8s} {'ms/env-step':>12s} {'x scan':>8s} {'timed':>6s}")
    for name, sps, sec, k in rows:
        if sps == 0:
            print(f"{name}")
            continue
        print(f"{name:46s} {sps:12.1f} {sps / base:8.1f} {sec * 1e3:12.3f} {sec / floor:8.2f} {k:6d}")
        out.append((name, sps, sps / base, sec / floor))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ns", type=int, nargs="+", default=[2000, 10000])
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16, 64, 256])
    parser.add_argument("--slides", type=int, default=4, help="distinct synthetic slides per size")
    parser.add_argument("--steps", type=int, default=200, help="timed steps per configuration (at most)")
    parser.add_argument("--max-seconds", type=float, default=6.0, help="time cap per configuration")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--max-gb", type=float, default=12.0, help="skip configurations needing more memory")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    hafed = zoo.create_model("hafed", in_dim=args.dim).to(device).eval()
    tsu = zoo.create_model("tsu", in_dim=args.dim).to(device).eval()
    print(
        f"device={device} torch={torch.__version__} threads={torch.get_num_threads()} "
        f"HAFED M={hafed.config.n_token_2} attn_dim={hafed.config.attn_dim}, TSU tau={tsu.config.tau}"
    )
    for n in args.ns:
        run_size(n, args, device, hafed, tsu)


if __name__ == "__main__":
    main()

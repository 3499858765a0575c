"""The ``sasha`` recipe's learner on one real rollout: held-interval sums vs the dense row tables, and its floor.

Collects one rollout of the ``sasha`` recipe on ``synth-c16`` (2 environments, whole episodes, SASHA's
actor of width 128 over state tokens) with the structured PPO path, then times on that rollout,
side by side in one run:

- **update, one epoch** (``evaluate_actions`` forward + backward on the whole rollout):
  ``dense``: every timestep's ``N`` held versions gathered (``table_outputs`` and sb3-contrib's masked
  categorical, the path before ``held_sums``); ``held``: softmax sums over each version's interval of
  timesteps (:mod:`wsigym.agents.held_sums`). Both give the same log-probabilities, entropies and
  values (checked here, and to tolerance in ``tests/agents/test_segments.py``).
- **the floor**: the per-version MLP alone (:func:`~wsigym.agents.row_table.version_terms`, forward +
  weight gradient), which any exact update must compute once per version and epoch, with its
  multiply-adds per timestep and the GFLOP/s it reached.
- **acting, one step of both environments**: ``dense``: one row table per environment
  (``EpisodeRunner.outputs`` without the board); ``board``: the current rows' terms kept side by side
  and updated on the changed rows.

    python benchmarks/segment_update.py [--threads 2] [--repeats 5]
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable

import torch
from stable_baselines3.common.vec_env import VecMonitor

from wsigym.agents.policy import masked_categorical
from wsigym.agents.ppo import _split_env, episode_rollout, make_model
from wsigym.agents.recipes import ppo_config
from wsigym.agents.row_table import RowTable


def best_seconds(fn: Callable[[], object], repeats: int) -> float:
    """The fastest of ``repeats`` calls (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per variant (the best is kept)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    config = ppo_config("sasha", path="segments", n_envs=2)
    venv = _split_env(config, "train", config.n_envs, config.seed, progress=False)
    config = episode_rollout(config, venv)
    model = make_model(config, VecMonitor(venv))
    model.train = lambda: None  # type: ignore[method-assign]  # collect one rollout, no update
    model.learn(config.n_steps * config.n_envs)
    batch = next(model.rollout_buffer.get(None))
    tables, actions = batch.observations.tables, batch.actions.long().flatten()
    policy, extractor = model.policy, model.policy.mlp_extractor
    steps = sum(t.index.shape[0] for t in tables)
    versions = sum(t.states.shape[0] for t in tables)
    dense_rows = sum(t.index.numel() for t in tables)

    def dense() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits, masks, latent = extractor.forward_segments(batch.observations, per_step=False)
        distribution = masked_categorical(logits, masks)
        return policy.value_net(latent), distribution.log_prob(actions), distribution.entropy()

    def held() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        log_prob, entropy, latent = extractor.evaluate_held(batch.observations, actions)
        return policy.value_net(latent), log_prob, entropy

    with torch.no_grad():
        for name, a, b in zip(("value", "log-prob", "entropy"), dense(), held(), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4, msg=f"{name}: held != dense")

    def backward(fn: Callable[[], tuple[torch.Tensor, ...]]) -> Callable[[], None]:
        def run() -> None:
            policy.zero_grad()
            values, log_prob, entropy = fn()
            (values.sum() + log_prob.sum() + entropy.sum()).backward()

        return run

    def floor() -> None:
        policy.zero_grad()
        weights = extractor.gate_weights(tables[0].states.shape[1])
        terms = [extractor.version_terms(weights, t.states, t.flags, False) for t in tables]
        sum(t.sum() for t in terms).backward()

    t_dense = best_seconds(backward(dense), args.repeats)
    t_held = best_seconds(backward(held), args.repeats)
    t_floor = best_seconds(floor, args.repeats)
    weights = extractor.gate_weights(tables[0].states.shape[1])
    macs = versions * weights.stacked.numel() * 2  # forward product + weight gradient (no input gradient)

    runner = model._runner
    if runner is None:
        model._setup_learn(1)
        runner = model._runner
    assert runner is not None
    envs = list(range(len(runner.episodes)))

    def per_table() -> torch.Tensor:  # acting as before the board: one row table per environment
        episodes = runner.episodes
        row_tables = [
            RowTable(e.states, e.flags, e.current[None], e.budget_left(e.steps)[None]) for e in episodes
        ]
        terms = [e.terms for e in episodes]
        _, _, latents = extractor.forward_tables(runner.weights, row_tables, terms, False, False)
        return policy.value_net(latents)

    with torch.no_grad():
        torch.testing.assert_close(per_table(), runner.outputs(envs)[2], msg="board != row tables")
        t_board = best_seconds(lambda: runner.outputs(envs), args.repeats * 20)
        t_tables = best_seconds(per_table, args.repeats * 20)

    per_ts = 1e6 / steps
    print(
        f"one rollout of the sasha recipe: {steps} timesteps, {len(tables)} segments, {versions} row versions "
        f"({versions / steps:.1f} per timestep), {dense_rows} held rows gathered by the dense path "
        f"({dense_rows / steps:.0f} per timestep)"
    )
    print(f"{'update, one epoch (fwd + bwd)':34s} {'ms':>8s} {'us/timestep':>12s}")
    print(f"{'dense row tables':34s} {t_dense * 1e3:8.1f} {t_dense * per_ts:12.1f}")
    print(f"{'held-interval sums':34s} {t_held * 1e3:8.1f} {t_held * per_ts:12.1f}")
    print(f"{'floor: per-version MLP alone':34s} {t_floor * 1e3:8.1f} {t_floor * per_ts:12.1f}")
    print(f"held / dense speed-up: {t_dense / t_held:.2f}x; held / floor: {t_held / t_floor:.2f}x")
    print(
        f"floor: {macs / steps / 1e6:.2f} M multiply-adds per timestep and epoch, "
        f"{2 * macs / t_floor / 1e9:.0f} GFLOP/s; x {config.n_epochs} epochs = "
        f"{config.n_epochs * t_floor * per_ts:.0f} us per timestep"
    )
    print(
        f"acting, one step of {len(envs)} envs: row tables {t_tables * 1e6:.0f} us, board {t_board * 1e6:.0f} us "
        f"({t_tables / t_board:.2f}x)"
    )
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} threads")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

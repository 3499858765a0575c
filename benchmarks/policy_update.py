"""CPU time of one PPO minibatch through :class:`~wsigym.agents.policy.PatchPolicy`: gathered vs dense tokens.

The policy gathers the tokens of the real patches only (:func:`~wsigym.agents.policy.patch_rows`,
``M = sum_b N_b`` rows) and shares them between actor and critic. The reference here is the dense
layout it replaced: every padded token ``(B, P, d+6)`` built, and each head gathering the real rows
itself and pooling over all ``P``. Both compute the same logits and values (checked); the script
times SB3's ``evaluate_actions`` forward + backward on ``--batch`` real ``synth-c16`` observations
(padded to the training split's largest slide) and prints the ratio from one run.

    python benchmarks/policy_update.py [--batch 64] [--hidden 32] [--repeats 5]
"""

from __future__ import annotations

import argparse
import platform
import time

import torch
from torch import Tensor

from wsigym.agents.policy import PAD_LOGIT, PatchActorCritic, PatchRows
from wsigym.agents.saved_policy import _policy_for
from wsigym.agents.sb3_vec import make_sb3_vec_env
from zoo.nn import masked_softmax


def dense_tokens(obs: dict[str, Tensor], dim: int) -> Tensor:
    """Every padded token ``(B, P, d+6)`` (the layout the policy used before gathering)."""
    mask = obs["patch_mask"]
    b, p = mask.shape[0], mask.shape[-1]
    return torch.cat(
        [
            obs["state"].float().reshape(b, p, dim),
            obs["visited"].float().reshape(b, p, 1),
            obs["updated"].float().reshape(b, p, 1),
            obs["coords"].float().reshape(b, p, 2),
            obs["budget"].float().reshape(b, 1, 1).expand(b, p, 1),
            mask.float().reshape(b, p, 1),
        ],
        dim=-1,
    )


def dense_forward(heads: PatchActorCritic, tokens: Tensor) -> tuple[Tensor, Tensor]:
    """Logits and critic latent from dense tokens, each head gathering the real rows itself."""
    valid = tokens[..., -1] > 0.5

    def scores(attention: torch.nn.Module) -> Tensor:
        out = tokens.new_full(valid.shape, PAD_LOGIT)
        out[valid] = attention(tokens[valid])[0]
        return out

    weights = masked_softmax(scores(heads.critic_attention), valid)
    pooled = (weights.unsqueeze(1) @ tokens)[:, 0]
    n = valid.sum(-1, keepdim=True).float() / 1000.0
    budget = tokens[:, 0, -2:-1]
    return scores(heads.actor), heads.critic_mlp(torch.cat([pooled, budget, n, budget * n], dim=-1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    env = make_sb3_vec_env("WSIZoom-v0", n_envs=args.batch, seed=0, dataset="synth-c16", progress=False)
    raw = env.reset()
    p, d = env.venv.max_patches, env.venv.dim
    env.close()
    policy = _policy_for(p, d, args.hidden, 64, 32)
    obs, _ = policy.obs_to_tensor(raw)
    heads: PatchActorCritic = policy.mlp_extractor
    actions = torch.zeros(args.batch, dtype=torch.long)

    def gathered() -> None:
        features: PatchRows = policy.extract_features(obs)
        logits, latent_vf = heads(features)
        values = policy.value_net(latent_vf)
        log_prob = torch.log_softmax(logits, -1).gather(1, actions[:, None])
        (values.sum() + log_prob.sum()).backward()

    def dense() -> None:
        logits, latent_vf = dense_forward(heads, dense_tokens(obs, d))
        values = policy.value_net(latent_vf)
        log_prob = torch.log_softmax(logits, -1).gather(1, actions[:, None])
        (values.sum() + log_prob.sum()).backward()

    with torch.no_grad():
        new = heads(policy.extract_features(obs))
        old = dense_forward(heads, dense_tokens(obs, d))
    same = all(torch.allclose(a, b, atol=1e-4) for a, b in zip(new, old, strict=True))

    times = {}
    for name, fn in (("dense", dense), ("gathered", gathered)):
        fn()  # warm-up
        best = float("inf")
        for _ in range(args.repeats):
            policy.zero_grad()
            start = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - start)
        times[name] = best

    real = int(obs["patch_mask"].sum())
    print(
        f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    print(
        f"batch {args.batch} observations, P = {p} padded, {real} real patches ({real / (args.batch * p):.0%}), d = {d}"
    )
    print(f"same logits and values: {same}")
    print("| layout | forward + backward (s) |")
    print("|---|---|")
    for name, t in times.items():
        print(f"| {name} | {t:.3f} |")
    print(f"speed-up (dense / gathered): {times['dense'] / times['gathered']:.2f}x")


if __name__ == "__main__":
    main()

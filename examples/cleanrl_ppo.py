"""A CleanRL-style single-file PPO for ``WSIZoom-v0``: masked categorical over patches, no SB3.

Everything is in this file, as in CleanRL's ``ppo.py``: the vector environment
(``gym.make_vec(..., vectorization_mode="vector_entry_point")``, wsigym's batched
:class:`~wsigym.envs.vector.WSIZoomVectorEnv`), the agent, rollouts, GAE and the clipped update.

- **Agent.** The state ``obs["state"].reshape(B, P, d)`` (``P`` = ``env.max_patches``, ``d`` =
  ``env.dim``) plus the ``visited`` / ``updated`` flags and the remaining budget form one token per
  patch; an MLP scores each token (the actor's logits, padding and illegal patches set to -1e8 with
  ``obs["action_mask"]``), and the critic reads the mean of the real tokens.
- **Autoreset.** Gymnasium 1.x vector envs reset a finished sub-environment on the *next* step
  (``NEXT_STEP``): that step ignores its action and returns reward 0. Those transitions are kept out
  of the loss (``valid``), and GAE does not bootstrap across an episode end.

Run from the repository root (the tiny synthetic dataset, a few seconds)::

    .venv/bin/python examples/cleanrl_ppo.py --dataset synth-c16-tiny --total-timesteps 256
"""

from __future__ import annotations

import argparse
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import nn

import wsigym  # noqa: F401  (registers WSIZoom-v0)


class Agent(nn.Module):
    """Per-patch actor, mean-pooled critic; tokens ``[s_i (d), visited_i, updated_i, budget]``."""

    def __init__(self, dim: int, hidden: int = 64) -> None:
        super().__init__()
        self.dim = dim
        self.actor = nn.Sequential(nn.Linear(dim + 3, hidden), nn.Tanh(), nn.Linear(hidden, 1))
        self.critic = nn.Sequential(nn.Linear(dim + 3, hidden), nn.Tanh(), nn.Linear(hidden, 1))

    def tokens(self, obs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        b, p = obs["patch_mask"].shape
        state = obs["state"].reshape(b, p, self.dim)
        state = (state - state.mean(1, keepdim=True)) / (state.std(1, keepdim=True) + 1e-6)
        extra = torch.stack(
            [obs["visited"].float(), obs["updated"].float(), obs["budget"].expand(b, p)], dim=-1
        )
        return torch.cat([state, extra], dim=-1), obs["patch_mask"].bool()

    def value(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        x, real = self.tokens(obs)
        pooled = (x * real[..., None]).sum(1) / real.sum(1, keepdim=True).clamp_min(1)
        return self.critic(pooled).squeeze(-1)

    def act(
        self, obs: dict[str, torch.Tensor], action: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        x, _ = self.tokens(obs)
        logits = self.actor(x).squeeze(-1).masked_fill(~obs["action_mask"].bool(), -1e8)
        dist = torch.distributions.Categorical(logits=logits)
        if action is None:
            action = dist.sample()
        return action, dist.log_prob(action), dist.entropy(), self.value(obs)


def to_torch(obs: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.as_tensor(v) for k, v in obs.items()}


def run(
    env_kwargs: dict[str, Any],
    total_timesteps: int = 256,
    num_envs: int = 4,
    num_steps: int = 16,
    seed: int = 0,
    lr: float = 3e-4,
    gamma: float = 1.0,
    gae_lambda: float = 0.95,
    update_epochs: int = 2,
    clip: float = 0.2,
    ent_coef: float = 0.01,
    vf_coef: float = 0.5,
) -> dict[str, float]:
    """Train for ``total_timesteps``; returns the mean return of the episodes that ended."""
    torch.manual_seed(seed)
    envs = gym.make_vec(
        "WSIZoom-v0", num_envs=num_envs, vectorization_mode="vector_entry_point", **env_kwargs
    )
    agent = Agent(envs.dim)
    optimiser = torch.optim.Adam(agent.parameters(), lr=lr, eps=1e-5)
    obs, _ = envs.reset(seed=seed)
    resetting = np.zeros(num_envs, dtype=bool)  # this step only resets (NEXT_STEP autoreset)
    returns, running = [], np.zeros(num_envs)
    for _ in range(max(1, total_timesteps // (num_envs * num_steps))):
        batch: dict[str, list[Any]] = {
            k: [] for k in ("obs", "action", "logp", "value", "reward", "done", "valid")
        }
        for _ in range(num_steps):
            t_obs = to_torch(obs)
            with torch.no_grad():
                action, logp, _, value = agent.act(t_obs)
            obs, reward, terminated, truncated, _ = envs.step(action.numpy())
            done = terminated | truncated
            running += np.where(resetting, 0.0, reward)
            returns += running[done].tolist()
            running[done] = 0.0
            for key, val in zip(
                batch,
                (
                    t_obs,
                    action,
                    logp,
                    value,
                    torch.as_tensor(reward, dtype=torch.float32),
                    torch.as_tensor(done),
                    torch.as_tensor(~resetting),
                ),
            ):
                batch[key].append(val)
            resetting = done
        with torch.no_grad():
            next_value = agent.value(to_torch(obs))
        rewards, values = torch.stack(batch["reward"]), torch.stack(batch["value"])
        dones, valid = torch.stack(batch["done"]).float(), torch.stack(batch["valid"]).float()
        advantages, last = torch.zeros_like(rewards), torch.zeros(num_envs)
        for t in reversed(range(num_steps)):
            nxt = next_value if t == num_steps - 1 else values[t + 1]
            delta = rewards[t] + gamma * nxt * (1 - dones[t]) - values[t]
            last = delta + gamma * gae_lambda * (1 - dones[t]) * last
            advantages[t] = last * valid[t]
        targets = advantages + values
        flat_obs = {k: torch.cat([o[k] for o in batch["obs"]]) for k in batch["obs"][0]}
        flat = {
            "action": torch.cat(batch["action"]),
            "logp": torch.cat(batch["logp"]),
            "adv": advantages.reshape(-1),
            "target": targets.reshape(-1),
            "valid": valid.reshape(-1),
        }
        for _ in range(update_epochs):
            _, logp, entropy, value = agent.act(flat_obs, flat["action"])
            ratio = (logp - flat["logp"]).exp()
            adv = (flat["adv"] - flat["adv"].mean()) / (flat["adv"].std() + 1e-8)
            policy_loss = torch.max(-adv * ratio, -adv * ratio.clamp(1 - clip, 1 + clip))
            loss_per = policy_loss + vf_coef * (value - flat["target"]).square() - ent_coef * entropy
            loss = (loss_per * flat["valid"]).sum() / flat["valid"].sum().clamp_min(1)
            optimiser.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(agent.parameters(), 0.5)
            optimiser.step()
    envs.close()
    return {"episodes": len(returns), "mean_return": float(np.mean(returns)) if returns else float("nan")}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="synth-c16-tiny")
    p.add_argument("--total-timesteps", type=int, default=256)
    p.add_argument("--num-envs", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    out = run({"dataset": args.dataset, "budget": 0.05}, args.total_timesteps, args.num_envs, seed=args.seed)
    print(f"{out['episodes']} episodes ended, mean return {out['mean_return']:.3f}")


if __name__ == "__main__":
    main()

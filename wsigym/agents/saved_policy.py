"""The saved zoom policy: :func:`load_policy` and the greedy :class:`PolicyAgent` that runs it.

**Saving.** :func:`wsigym.agents.policy_writer.save_policy` writes ``policy.safetensors`` + ``policy.json`` (loaded by
:func:`load_policy` without pickle) and SB3's own zip for SB3 tooling (pickle: trusted use only).
The policy is defined for any number of patches, so a loaded :class:`PolicyAgent` runs on any split.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from safetensors.torch import load_file

from wsigym.agents.policy import EXTRA_CHANNELS, PAD_LOGIT, PatchPolicy, patch_rows

POLICY_WEIGHTS = "policy.safetensors"
POLICY_CONFIG = "policy.json"  # not config.json: a zoo model folder is recognised by config.json


def _policy_for(
    num_patches: int,
    dim: int,
    hidden: int,
    critic_hidden: int,
    critic_attention: int,
    standardise: bool = False,
    tokens: str = "state+context",
) -> PatchPolicy:
    from wsigym.envs.zoom_batch import observation_space

    return PatchPolicy(
        observation_space(num_patches, dim),
        spaces.Discrete(num_patches),
        lambda _: 0.0,
        hidden=hidden,
        critic_hidden=critic_hidden,
        critic_attention=critic_attention,
        standardise=standardise,
        tokens=tokens,
    )


class PolicyAgent:
    """A :class:`PatchPolicy` as an agent ``agent(obs, info) -> action``: greedy over legal patches.

    Runs on observations of any padded patch count ``P``. With ``incremental=True`` (default) it keeps
    the state part of the actor's two gate pre-activations, ``V_s s_i`` and ``U_s s_i`` (``(P, h)``),
    between steps of an episode and recomputes them only for rows whose state changed (the zoomed and
    TSU-updated rows); the six extra channels are added every step. With a standardising policy the
    cached ``V_s s_i`` are shifted and scaled by the current mean and spread of the rows, which
    costs one pass over the state. A policy that reads the state row alone (``tokens="state"``, SASHA's
    actor) and does not standardise scores each row from its own value only, so it keeps the rows'
    logits and recomputes only the changed rows' (a step costs the change check, ``O(N x d)`` compares,
    instead of ``O(N x h)`` gates). The logits equal a full forward pass up to float rounding, at a
    fraction of its cost.
    """

    deterministic = True

    def __init__(
        self, policy: PatchPolicy, config: dict[str, Any] | None = None, incremental: bool = True
    ) -> None:
        self.policy = policy
        self.config = config or {}
        self.incremental = incremental
        self.dim = policy.features_extractor.dim
        self.context = policy.mlp_extractor.token_dim - self.dim  # 6 context channels, or 0
        self._cache: dict[str, Any] | None = None
        #: Keep the rows' logits (state-only tokens, no standardisation: class docstring).
        self.cache_logits = incremental and self.context == 0 and not policy.standardise

    def reset(
        self, env: Any = None, obs: dict[str, np.ndarray] | None = None, info: dict[str, Any] | None = None
    ) -> None:
        """Forget the cached pre-activations (call at the start of every episode)."""
        self._cache = None

    @torch.no_grad()
    def logits(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """Actor logits ``(P,)`` of one observation (before masking)."""
        actor = self.policy.mlp_extractor.actor
        device = next(self.policy.parameters()).device
        state = np.asarray(obs["state"], dtype=np.float32)
        p, d = int(np.asarray(obs["patch_mask"]).shape[-1]), self.dim
        if not self.incremental:
            tensors = {k: torch.as_tensor(np.asarray(v)[None], device=device) for k, v in obs.items()}
            features = patch_rows(tensors, d, self.policy.standardise, self.context > 0)
            return self.policy.mlp_extractor.forward_actor(features)[0].cpu().numpy()
        real = np.asarray(obs["patch_mask"]).reshape(p) > 0
        n = int(np.flatnonzero(real)[-1]) + 1 if real.any() else 0  # rows past the last real one are padding
        rows_now = state.reshape(p, d)[:n]
        cache = self._cache
        if cache is None or cache["state"].shape != (p, d):
            changed = np.arange(n)
            cache = self._cache = {
                "state": np.zeros((p, d), dtype=np.float32),
                "tanh": torch.empty(p, actor.tanh_branch.out_features, device=device),
                "gate": torch.empty(p, actor.gate_branch.out_features, device=device),
                "logit": np.full(p, PAD_LOGIT, dtype=np.float32),
                "w_tanh": actor.tanh_branch.weight[:, d:].T.contiguous(),
                "w_gate": actor.gate_branch.weight[:, d:].T.contiguous(),
            }
        else:
            changed = np.flatnonzero((cache["state"][:n] != rows_now).any(axis=1))
        if len(changed):
            cache["state"][changed] = rows_now[changed]
            idx = torch.as_tensor(changed, device=device)
            rows = torch.as_tensor(rows_now[changed], device=device)
            cache["tanh"][idx] = rows @ actor.tanh_branch.weight[:, :d].T
            cache["gate"][idx] = rows @ actor.gate_branch.weight[:, :d].T
            if self.cache_logits:
                a = torch.tanh(cache["tanh"][idx] + actor.tanh_branch.bias)
                g = torch.sigmoid(cache["gate"][idx] + actor.gate_branch.bias)
                cache["logit"][changed] = actor.score(a * g)[:, 0].cpu().numpy()
        if self.cache_logits:
            logits = cache["logit"].copy()
            logits[n:] = PAD_LOGIT
            logits[~real] = PAD_LOGIT
            return logits
        extra = np.empty((n, EXTRA_CHANNELS), dtype=np.float32)  # the token's last 6 channels
        extra[:, 0] = np.asarray(obs["visited"]).reshape(p)[:n]
        extra[:, 1] = np.asarray(obs["updated"]).reshape(p)[:n]
        extra[:, 2:4] = np.asarray(obs["coords"], dtype=np.float32).reshape(p, 2)[:n]
        extra[:, 4] = float(np.asarray(obs["budget"]).reshape(-1)[0])
        extra[:, 5] = real[:n]
        x = torch.from_numpy(extra[:, : self.context]).to(device)
        pre_tanh, pre_gate = cache["tanh"][:n], cache["gate"][:n]
        if self.policy.standardise:  # V (s - mean) / sigma = (V s - V mean) / sigma
            kept = rows_now[real[:n]]
            mean = kept.mean(0)
            sigma = float(np.sqrt(np.square(kept - mean).mean())) + 1e-6
            m = torch.as_tensor(mean, device=device)
            pre_tanh = (pre_tanh - actor.tanh_branch.weight[:, :d] @ m) / sigma
            pre_gate = (pre_gate - actor.gate_branch.weight[:, :d] @ m) / sigma
        a = torch.tanh(torch.addmm(pre_tanh + actor.tanh_branch.bias, x, cache["w_tanh"]))
        g = torch.sigmoid(torch.addmm(pre_gate + actor.gate_branch.bias, x, cache["w_gate"]))
        logits = np.full(p, PAD_LOGIT, dtype=np.float32)
        logits[:n] = actor.score(a * g)[:, 0].cpu().numpy()
        logits[~real] = PAD_LOGIT  # padding, as in the policy's forward pass
        return logits

    def __call__(self, obs: dict[str, np.ndarray], info: dict[str, Any]) -> int:
        logits = self.logits(obs)
        legal = np.asarray(obs["action_mask"]).astype(bool)
        if not legal.any():
            raise ValueError("PolicyAgent: no legal action in obs['action_mask']")
        return int(np.flatnonzero(legal)[np.argmax(logits[legal])])


def load_policy(directory: str | Path, device: str = "cpu") -> PolicyAgent:
    """Rebuild the :class:`PatchPolicy` saved by :func:`wsigym.agents.policy_writer.save_policy` and load its weights strictly.

    ``directory`` may also be a registered name or Hub repo id (e.g. ``"ppo-WSIZoom-v0"``), pulled
    with :func:`zoo.hub.pull`.

    Raises:
        ValueError: naming the file, when files are missing, unreadable, or tensors missing/unexpected.
    """
    directory = Path(directory)
    if not directory.is_dir():
        from zoo import hub

        directory = hub.pull(str(directory))
    cfg_path, weights_path = directory / POLICY_CONFIG, directory / POLICY_WEIGHTS
    for path in (cfg_path, weights_path):
        if not path.is_file():
            raise ValueError(
                f"{path}: missing (expected a policy saved by wsigym.agents.policy_writer.save_policy)"
            )
    try:
        config = json.loads(cfg_path.read_text())
        policy = _policy_for(
            int(config["num_patches"]),
            int(config["dim"]),
            int(config["hidden"]),
            int(config["critic_hidden"]),
            int(config["critic_attention"]),
            bool(config.get("standardise", False)),  # absent in policies saved before the option
            str(config.get("tokens", "state+context")),  # likewise
        ).to(device)
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{cfg_path}: not a policy config ({type(e).__name__}: {e})") from None
    try:
        state = load_file(str(weights_path), device=device)
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise ValueError(f"{weights_path}: not a readable safetensors file ({e})") from None
    expected = policy.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    bad = [k for k in set(expected) & set(state) if expected[k].shape != state[k].shape]
    if missing or unexpected or bad:
        raise ValueError(
            f"{weights_path}: missing tensors {missing}, unexpected tensors {unexpected}, wrong shapes {sorted(bad)}"
        )
    policy.load_state_dict(state, strict=True)
    return PolicyAgent(policy.eval(), config)

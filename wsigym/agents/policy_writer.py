"""Writing a trained policy folder without pickle: :func:`save_policy`.

``policy.safetensors`` + ``policy.json`` are what :func:`wsigym.agents.saved_policy.load_policy` reads; the
slim SB3 zip beside them is :mod:`wsigym.agents.sb3_export`'s. Training (:mod:`wsigym.agents.ppo`) and
its resumable checkpoints (:mod:`wsigym.agents.resume`) both save through here.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from safetensors.torch import save_file

from wsigym.agents.recipes import PPOConfig, json_safe_kwargs
from wsigym.agents.saved_policy import POLICY_CONFIG, POLICY_WEIGHTS
from wsigym.io import atomic_write, atomic_write_json


def save_policy(model: Any, directory: str | Path, config: PPOConfig, *, sb3_zip: bool = True) -> Path:
    """Write ``policy.safetensors`` + ``policy.json`` (no pickle), plus a slim SB3 zip ``ppo-<env>.zip``.

    :func:`~wsigym.agents.saved_policy.load_policy` reads only the safetensors and JSON files.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.policy.state_dict().items()}
    metadata = {"format": "wsigym.agents.policy.PatchPolicy"}
    atomic_write(directory / POLICY_WEIGHTS, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
    space = model.observation_space
    p = int(space["patch_mask"].shape[0])
    extractor = model.policy.mlp_extractor
    atomic_write_json(
        directory / POLICY_CONFIG,
        {
            "algorithm": "MaskablePPO",
            "policy": "wsigym.agents.policy.PatchPolicy",
            "num_patches": p,
            "dim": int(model.policy.features_extractor.dim),
            "tokens": model.policy.tokens,
            "hidden": int(extractor.actor.tanh_branch.out_features),
            "critic_hidden": int(extractor.latent_dim_vf),
            "critic_attention": int(extractor.critic_attention.tanh_branch.out_features),
            "standardise": bool(model.policy.standardise),
            "env_id": config.env_id,
            "ppo": {**asdict(config), "env_kwargs": json_safe_kwargs(config.env_kwargs)},
        },
    )
    if sb3_zip:  # slim: the weights just written and a fresh optimiser (wsigym.agents.sb3_export)
        from wsigym.agents.sb3_export import write_zip

        write_zip(directory)
    return directory

"""PPO settings for :func:`wsigym.agents.ppo.train_ppo`: :class:`PPOConfig` and the named :data:`RECIPES`.


Two SASHA recipes. ``"sasha"`` reproduces SASHA's agent and PPO loop as closely as SB3 allows;
``"sasha-sb3"`` (the :class:`PPOConfig` defaults, called ``"sasha"`` before) keeps SASHA's loss
settings but adapts the rest to short CPU runs.

**``"sasha"``**, each value checked against the official code (coglabiisc/SASHA at ``6385fe6``):

==============================  ==================================  ======================================
SASHA                           here                                where in SASHA's code
==============================  ==================================  ======================================
actor/critic read the state     ``tokens="state"``                  ``rl_algorithms/ppo.py`` (``Actor``,
row alone, gated attention 128  ``hidden=128``,                     ``Critic``): ``Attention_Gated``
                                                                    384->128 on the state rows
                                ``critic_attention=128``
random initial policy           ``warm_start=False``                ``step6_rl_training.py`` builds the
                                                                    agent fresh (no HAFED warm start)
two AdamW, lr 1e-5, wd 1e-4     one AdamW, ``learning_rate=1e-5``,  ``step6_rl_training.py`` (optimisers);
                                ``weight_decay=1e-4``               ``config/camelyon_rl_config.yml``
                                                                    (``lr``, ``wd``)
gamma 1.0, GAE lambda 0.95      ``gamma=1.0, gae_lambda=0.95``      ``camelyon_rl_config.yml`` (``lam``
                                                                    0.95; 0.94 "for sasha 0.1" on C16),
                                                                    ``tcga_rl_config.yml``
clip 0.2, entropy 0.001         ``clip_range=0.2, ent_coef=0.001``  ``camelyon_rl_config.yml``
grad-norm clip 0.5              ``max_grad_norm=0.5``               ``camelyon_rl_config.yml``,
                                                                    ``step6_rl_training.py``
2 episodes, then 4 full-batch   ``n_envs=2``,                       ``camelyon_rl_config.yml``
epochs on them                  ``rollout_episodes=True``           (``num_envs``,
                                (``n_steps`` = longest episode of   ``num_epochs_on_single_roll_out``),
                                the split, one full batch),         ``step6_rl_training.py``
                                ``n_epochs=4``                      (``train_one_epoch``)
advantages standardised per     ``normalize_advantage=True``        ``step6_rl_training.py``
batch; critic MSE to GAE        (one batch), ``vf_coef=1.0``
returns
no reward normalisation         ``normalize_reward=False``          ``step6_rl_training.py`` (raw -CE)
best of (2-AUC-F1)+loss on val, ``select_initial=False``,           ``step6_rl_training.py`` (validation
after each training epoch       ``eval_freq="pass"``                after each epoch only)
==============================  ==================================  ======================================

Not the same architecture in one place: SASHA's critic maps the attention-pooled state straight to a
value (``Value_fc``, ``Linear(384, 1)``); :class:`~wsigym.agents.policy.PatchPolicy`'s critic passes it
through a ``critic_hidden``-wide latent first (SB3's actor-critic split needs a latent).
What SB3 cannot reproduce (said, not hidden): SASHA steps two optimisers and clips the actor's and the
critic's gradients separately; SB3 steps one optimiser on ``actor loss + vf_coef * critic loss`` and
clips their joint norm (actor and critic share no parameter here, and AdamW's step is per parameter,
so only the joint clip differs). SASHA runs its two episodes on the same slide in turn; here the two
environments draw slides independently, and a rollout holds each environment's next whole episode
plus the start of the one after (episodes end at the budget with ``terminated=True``, so nothing is
bootstrapped across them). SASHA's scale (15 passes over the training slides, 2 episodes each) is
``total_timesteps ~ 15 * 2 * sum_slides ceil(budget * N)``: give it with ``--timesteps``; SASHA
validates after each pass, which is the recipe's ``eval_freq="pass"`` (``2 * sum_slides ceil(budget * N)``
timesteps; SB3's zips are kept at the same rate, ``checkpoint_freq="pass"``).
Not reproduced on purpose: SASHA's unmasked update (pitfall 1) and its unrecorded visits in validation
(pitfall 2).

**``"sasha-sb3"``**: SASHA's PPO settings mapped onto SB3 for short CPU runs:

==============================  ==================================  ======================================
SASHA (custom loop)             here (SB3 / sb3-contrib)            note
==============================  ==================================  ======================================
gamma 1.0, GAE lambda 0.95      ``gamma=1.0, gae_lambda=0.95``      same (SASHA-0.1 on C16: 0.94)
clip 0.2                        ``clip_range=0.2``                  same (C16 after PR #5)
entropy 0.001                   ``ent_coef=0.001``                  same sign convention as the fixed code
4 epochs per rollout            ``n_epochs=4``                      same
full-batch update               ``batch_size=64`` of 4x32 = 128     minibatches bound the activation memory
grad-norm clip 0.5              ``max_grad_norm=0.5``               same
two AdamW, lr 1e-5              one Adam, ``learning_rate=1e-4``    one optimiser for actor and critic;
                                                                    larger for short CPU runs
2 episodes per slide in turn    ``n_envs=4`` slides in parallel     batched vector env; random slide per
                                                                    reset (:mod:`wsigym.agents.sb3_vec`)
reward -CE per step             same, scaled by ``VecNormalize``    SB3 has one optimiser and one grad clip:
                                (``norm_reward``, training only)    unscaled returns (~ -CE x steps left)
                                                                    would let the critic's gradient
                                                                    swamp the actor's
best of (2-AUC-F1)+loss on val  :class:`ValidationCallback`         same criterion on the validation split
critic target A + V_old         SB3's GAE returns                   same as the fixed code
masks only in rollout           masks in rollout *and* update       fixes SASHA pitfall 1
==============================  ==================================  ======================================

**Options beyond SASHA's settings.** On ``synth-c16`` SASHA's reward teaches little per step: after the
first tumour zoom the slide is classified and the cross-entropy saturates, so most tumour zooms change it
by almost nothing (``examples/reward_information.py``; measured in ``docs/lab-notes.md``). These options exist to make such rewards count, and the README reports what each did:
``reward="evidence"`` (the environment's weakly supervised per-zoom evidence, see
:mod:`wsigym.envs.reward`) or ``"delta_ce"`` / ``"delta_margin"`` with ``gamma=0`` (each zoom credited
with what it reveals or changes: a contextual bandit); ``standardise=True`` (the policy sees
patch-to-patch differences, not the slide's common offset); ``vf_coef=0`` (with ``gamma=0`` a critic
only adds noise to ``A = r - V``); a large ``max_grad_norm`` (the joint clip hits the rare reward's
minibatch hardest); many environments with a small training budget (more slides per timestep:
``examples/policy_gradient_probe.py`` shows that samples drawn from few slides teach a policy gradient
much less).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from wsigym.agents.policy import TOKENS
from wsigym.agents.schedule import PER_PASS

#: How :func:`~wsigym.agents.ppo.train_ppo` stores and evaluates rollouts: ``"segments"`` (episodes as changed rows,
#: :mod:`wsigym.agents.segment_ppo`, the default) or ``"plain"`` (SB3's buffer of padded observations).
#: Same loss; the minibatches of ``"segments"`` are whole segments of episodes.
TRAINING_PATHS = ("segments", "plain")
#: Optimisers of the policy: SB3's default Adam (eps 1e-5) or AdamW (torch defaults, SASHA's).
OPTIMIZERS = ("adam", "adamw")


@dataclass
class PPOConfig:
    """Hyperparameters of :func:`~wsigym.agents.ppo.train_ppo` (see the module docstring for the SASHA mapping).

    ``env_kwargs`` go to the environment (``dataset``, ``budget``, ``hafed``, ``tsu``, ``reward``...);
    the split is set by :func:`~wsigym.agents.ppo.train_ppo` (``train`` for training, ``val`` for the callback).
    ``hidden=None`` takes HAFED's ``attn_dim`` (needed for the warm start). The critic's attention is
    narrower (32) than SASHA's (128) to cut the per-patch cost of a forward pass by about 3/8.
    ``tokens`` (:data:`~wsigym.agents.policy.TOKENS`) is what the policy reads per patch; ``path``
    (:data:`TRAINING_PATHS`) how rollouts are stored and evaluated. ``optimizer`` (:data:`OPTIMIZERS`)
    with ``weight_decay`` (AdamW only); ``rollout_episodes=True`` sets ``n_steps`` to the longest
    episode of the training split at the training budget and ``batch_size`` to the whole rollout
    (``n_envs * n_steps``: one full batch per epoch, as SASHA); ``select_initial=False`` never keeps
    the policy of step 0 (evaluated and logged all the same) as the best one. ``checkpoint_updates``:
    a resumable checkpoint every that many updates (:mod:`wsigym.agents.resume`); ``checkpoint_freq``:
    SB3's own zips, every that many timesteps. ``eval_freq`` and ``checkpoint_freq`` may be
    :data:`~wsigym.agents.schedule.PER_PASS` (``"pass"``): once per pass over the training slides (resolved by
    :func:`~wsigym.agents.ppo.pass_frequencies`). ``device`` is the policy's (SB3's ``device``); the
    environment's is ``env_kwargs["device"]`` (``wsigym train ppo --policy-device`` / ``--device``).
    """

    env_id: str = "WSIZoom-v0"
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    total_timesteps: int = 20_000
    n_envs: int = 4
    n_steps: int = 32
    batch_size: int = 64
    n_epochs: int = 4
    learning_rate: float = 1e-4
    gamma: float = 1.0
    gae_lambda: float = 0.95
    clip_range: float = 0.2
    ent_coef: float = 0.001
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    normalize_advantage: bool = True
    normalize_reward: bool = True
    hidden: int | None = None
    critic_hidden: int = 64
    critic_attention: int | None = 32
    standardise: bool = False
    tokens: str = "state+context"
    warm_start: bool = True
    warm_start_logit_std: float | None = 2.0
    optimizer: str = "adam"
    weight_decay: float = 0.0
    rollout_episodes: bool = False
    select_initial: bool = True
    eval_freq: int | str = 5_000
    eval_slides: int | None = None
    checkpoint_freq: int | str = 10_000
    checkpoint_updates: int = 10
    keep: str = "best"
    seed: int = 0
    device: str = "cpu"
    path: str = "segments"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PPOConfig:
        """From :func:`dataclasses.asdict` output; unknown keys raise ``ValueError``."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"PPOConfig: unknown keys {unknown}")
        return cls(**data)

    def __post_init__(self) -> None:
        if self.keep not in ("best", "last"):
            raise ValueError(f"PPOConfig.keep must be 'best' or 'last', got {self.keep!r}")
        if self.path not in TRAINING_PATHS:
            raise ValueError(f"PPOConfig.path must be one of {TRAINING_PATHS}, got {self.path!r}")
        for name in ("eval_freq", "checkpoint_freq"):
            value = getattr(self, name)
            if value != PER_PASS and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"PPOConfig.{name} must be an int >= 1 or {PER_PASS!r}, got {value!r}")
        if self.checkpoint_updates < 1:
            raise ValueError(f"PPOConfig.checkpoint_updates must be >= 1, got {self.checkpoint_updates}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"PPOConfig.optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.weight_decay and self.optimizer != "adamw":
            raise ValueError(
                "PPOConfig.weight_decay needs optimizer='adamw' (SB3's Adam couples it to the gradient)"
            )
        if self.tokens not in TOKENS:
            raise ValueError(f"PPOConfig.tokens must be one of {TOKENS}, got {self.tokens!r}")
        if self.standardise and self.warm_start:
            raise ValueError(
                "PPOConfig: standardise=True needs warm_start=False (HAFED reads raw state rows)"
            )


#: Named training recipes: :class:`PPOConfig` fields over its defaults (``env_kwargs`` merged).
#: ``"sasha"`` is SASHA's agent and loop (the first table above); ``"sasha-sb3"`` (the defaults) is
#: SASHA's settings adapted to short CPU runs (the second table). ``"evidence-bandit"`` is the
#: shipped ``ppo-WSIZoom-v0``: the weakly supervised ``"evidence"`` reward with ``gamma=0`` (a contextual
#: bandit), short episodes (2% budget) over 16 slides at a time, standardised rows, no critic loss and
#: no gradient clip (its training run and time: ``docs/lab-notes.md``).
RECIPES: dict[str, dict[str, Any]] = {
    "sasha": {
        "tokens": "state",
        "hidden": 128,
        "critic_attention": 128,
        "warm_start": False,
        "optimizer": "adamw",
        "learning_rate": 1e-5,
        "weight_decay": 1e-4,
        "gamma": 1.0,
        "gae_lambda": 0.95,
        "n_envs": 2,
        "rollout_episodes": True,
        "n_epochs": 4,
        "clip_range": 0.2,
        "ent_coef": 0.001,
        "vf_coef": 1.0,
        "max_grad_norm": 0.5,
        "normalize_advantage": True,
        "normalize_reward": False,
        "select_initial": False,
        "eval_freq": PER_PASS,
        "checkpoint_freq": PER_PASS,
    },
    "sasha-sb3": {},
    "evidence-bandit": {
        "env_kwargs": {"reward": "evidence", "budget": 0.02},
        "total_timesteps": 32768,
        "n_envs": 16,
        "n_steps": 16,
        "batch_size": 64,
        "n_epochs": 1,
        "learning_rate": 3e-3,
        "gamma": 0.0,
        "gae_lambda": 0.0,
        "vf_coef": 0.0,
        "max_grad_norm": 1000.0,
        "hidden": 32,
        "standardise": True,
        "warm_start": False,
        "eval_freq": 4096,
        "eval_slides": 27,
    },
}


def ppo_config(recipe: str = "sasha", **overrides: Any) -> PPOConfig:
    """A :class:`PPOConfig` from a named recipe (:data:`RECIPES`), with ``overrides`` on top; the
    ``env_kwargs`` of both are merged (``overrides`` win).

    Raises:
        ValueError: for an unknown recipe or field.
    """
    if recipe not in RECIPES:
        raise ValueError(f"recipe must be one of {tuple(RECIPES)}, got {recipe!r}")
    values = {**RECIPES[recipe], **overrides}
    values["env_kwargs"] = {**RECIPES[recipe].get("env_kwargs", {}), **overrides.get("env_kwargs", {})}
    return PPOConfig.from_dict(values)


def json_safe_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Env kwargs for JSON: model instances and datasets become their description."""
    out = {}
    for k, v in kwargs.items():
        if isinstance(v, (str, int, float, bool)) or v is None:
            out[k] = v
        elif isinstance(v, Path):
            out[k] = str(v)
        else:
            out[k] = f"<{type(v).__name__}>"
    return out

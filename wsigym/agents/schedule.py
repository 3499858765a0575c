"""SASHA's training schedule: passes over the training slides and episodes per slide and pass.

SASHA (``config/camelyon_rl_config.yml``, ``step6_rl_training.py``) trains 15 passes ("epochs") over the
training slides, two episodes per slide in each, and validates after each pass. A pass is
``SASHA_EPISODES * sum_slides ceil(budget * N)`` timesteps (:func:`pass_timesteps`); the ``sasha`` recipe's
``eval_freq`` and ``checkpoint_freq`` are :data:`PER_PASS`.
"""

from __future__ import annotations

from collections.abc import Iterable

#: Passes over the training slides of SASHA's training.
SASHA_PASSES = 15
#: Episodes per training slide and pass.
SASHA_EPISODES = 2
#: ``PPOConfig.eval_freq`` / ``checkpoint_freq`` value meaning "once per pass over the training slides".
PER_PASS = "pass"


def pass_timesteps(budget_steps: Iterable[int], episodes: int = SASHA_EPISODES) -> int:
    """Timesteps of one pass: ``episodes`` episodes of each training slide, given each one's episode length."""
    return episodes * int(sum(budget_steps))

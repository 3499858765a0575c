r"""TSU: SASHA's targeted state update network ``f_S``.

After the agent zooms into patch ``a`` and reveals its high-res row ``V(a)``, the environment updates
every not-yet-updated patch ``i`` similar to ``a`` (``|cos(S_t(i), S_t(a))| >= tau``; see
:mod:`wsigym.envs.state_update`) with

.. math:: S_{t+1}(i) = f_S\big([V(a),\, S_t(a),\, S_t(i)]\big), \qquad
          f_S = \mathrm{LayerNorm}_d \circ \mathrm{Linear}_{2d \to d} \circ \mathrm{GELU} \circ \mathrm{Linear}_{3d \to 2d}

**What is SASHA's** (official code, ``modules/fglobal_mlp.py``, ``FGlobal``): the default architecture,
``fc1 = Linear(3d, 2d)``, GELU, ``fc2 = Linear(2d, d)``, ``LayerNorm(d)`` in that order (1152 -> 768 ->
384 for d = 384, about 1.18 M parameters); the input order ``[V(a), S_t(a), S_t(i)]``
(``input_order="v_a,s_a,s_i"``, used by ``envs/WSI_cosine_env.py`` and trained by
``step5_tsu_training.py``; the paper writes the reverse), stored in the config so weights in another
order load by setting ``input_order``; ``similarity="abs_cosine"`` (``|cos|``, which also counts
anti-correlated patches as similar) and ``tau = 0.95`` (``config/camelyon_tsu_config.yml``). These are
the defaults for new training (:mod:`zoo.train_tsu`).

**What is not SASHA's** (this project's options, stored in the config):

- ``residual=True``: :math:`f_S(x) = V(a) + \mathrm{Linear}_{2d \to d}(\mathrm{GELU}(\mathrm{Linear}_{3d \to 2d}(x)))`
  with the last layer zero-initialised and no final LayerNorm: the untrained update copies the zoomed
  row, and training learns the correction. The ``tsu-synth-c16`` weights shipped before synth-c16 v2
  used it; the shipped weights now follow SASHA's recipe (``residual: false``, ``abs_cosine``). On
  synth-c16 v2 the residual form reaches a lower validation MSE (0.046 vs 0.072; ``docs/synth-c16.md``),
  yet neither changes what HAFED decides after the same zooms.
- ``similarity="cosine"``: signed cosine.

**Training vs use (SASHA pitfall 7).** ``f_S`` is trained to regress ``V(i)`` from
``[V(a), Z(a), Z(i)]`` with the similar set computed on the low-res features ``Z`` (as SASHA's step 5
does). In the environment a row the TSU can still update holds ``S_t(i) = Z(i)``, but the anchor row
``S_t(a)`` is a TSU output when ``a`` was updated by an earlier zoom; SASHA's environment (and
``update="tsu"``) then feeds that output, while ``update="tsu-lowres"`` feeds ``Z(a)``, the trained
input distribution.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from zoo.models.base import ZooConfig, ZooModel

TSU_INPUTS = ("v_a", "s_a", "s_i")
SIMILARITIES = ("cosine", "abs_cosine")


@dataclass
class TSUConfig(ZooConfig):
    """Args:
    in_dim: feature width ``d``.
    hidden: hidden width of the MLP (``None`` -> ``2 * in_dim``, SASHA's 768 for d = 384).
    tau: similarity threshold the weights were trained with (the environment should use the same;
        SASHA C16: 0.95).
    input_order: comma-separated order of the concatenated inputs, a permutation of ``v_a,s_a,s_i``.
    similarity: ``"abs_cosine"`` (SASHA's ``|cos|``, the default) or ``"cosine"`` (signed), the
        similar-set rule used in training; the environment follows it by default.
    residual: predict ``V(a) + MLP(x)`` (zero-initialised last layer, no LayerNorm; not SASHA's)
        instead of SASHA's ``LayerNorm(MLP(x))``; see the module docstring.
    """

    in_dim: int = 384
    hidden: int | None = None
    tau: float = 0.95
    input_order: str = "v_a,s_a,s_i"
    similarity: str = "abs_cosine"
    residual: bool = False


def similar_set(z: Tensor, anchor: int, tau: float, similarity: str = "cosine") -> Tensor:
    """Indices ``i != anchor`` with ``cos(z_i, z_anchor) >= tau`` (``|cos|`` for ``"abs_cosine"``).

    ``z (N, d)``; returns a long tensor of indices, ascending. The rule the TSU is trained and used with.
    """
    if similarity not in SIMILARITIES:
        raise ValueError(f"similarity must be one of {SIMILARITIES}, got {similarity!r}")
    zn = torch.nn.functional.normalize(z, dim=-1)
    cos = zn @ zn[anchor]
    if similarity == "abs_cosine":
        cos = cos.abs()
    hit = cos >= tau
    hit[anchor] = False
    return hit.nonzero().squeeze(-1)


class TSU(ZooModel):
    """The update MLP ``f_S``.

    Shapes: ``forward(v_a (..., d), s_a (..., d), s_i (..., d)) -> (..., d)``; the three inputs
    broadcast against each other, so one anchor ``(d,)`` can update many rows ``(n, d)`` at once.
    """

    family: ClassVar[str] = "tsu"
    config_class = TSUConfig

    def __init__(self, config: TSUConfig) -> None:
        super().__init__(config)
        order = tuple(x.strip() for x in config.input_order.split(","))
        if sorted(order) != sorted(TSU_INPUTS):
            raise ValueError(
                f"TSUConfig.input_order must be a permutation of {','.join(TSU_INPUTS)}, got {config.input_order!r}"
            )
        if config.similarity not in SIMILARITIES:
            raise ValueError(f"TSUConfig.similarity must be one of {SIMILARITIES}, got {config.similarity!r}")
        self.order = order
        d = config.in_dim
        hidden = config.hidden if config.hidden is not None else 2 * d
        if config.residual:
            self.mlp = nn.Sequential(nn.Linear(3 * d, hidden), nn.GELU(), nn.Linear(hidden, d))
            nn.init.zeros_(self.mlp[2].weight)
            nn.init.zeros_(self.mlp[2].bias)
        else:
            self.mlp = nn.Sequential(
                nn.Linear(3 * d, hidden), nn.GELU(), nn.Linear(hidden, d), nn.LayerNorm(d)
            )

    def forward(self, v_a: Tensor, s_a: Tensor, s_i: Tensor) -> Tensor:
        """``f_S`` on the concatenation in ``config.input_order`` (default ``[V(a), S(a), S(i)]``).

        Args:
            v_a: high-res row of the zoomed anchor ``(..., d)``.
            s_a: the anchor's state row (``Z(a)``) ``(..., d)``.
            s_i: the row to update (``Z(i)``) ``(..., d)``.

        Returns:
            the predicted high-res row ``V(i)`` ``(..., d)``.
        """
        d = self.config.in_dim
        for name, t in (("v_a", v_a), ("s_a", s_a), ("s_i", s_i)):
            if t.shape[-1] != d:
                raise ValueError(f"TSU.forward: {name} must end in width {d}, got shape {tuple(t.shape)}")
        inputs = dict(zip(("v_a", "s_a", "s_i"), torch.broadcast_tensors(v_a, s_a, s_i)))
        out = self.mlp(torch.cat([inputs[name] for name in self.order], dim=-1))
        return inputs["v_a"] + out if self.config.residual else out

    def forward_rows(self, v_a: Tensor, s_a: Tensor, anchor: Tensor, s_i: Tensor) -> Tensor:
        r"""``forward(v_a[anchor], s_a[anchor], s_i)`` for many rows sharing few anchors, computed cheaply.

        The first layer is split by input, ``W [v; s_a; s_i] = (W_v v + W_a s_a + b) + W_i s_i``, so the
        anchor part is computed once per anchor and each row costs ``h x d`` instead of ``h x 3d``
        multiply-adds; equal to :meth:`forward` to float rounding (tested, both architectures).

        Args:
            v_a, s_a: anchor rows ``(A, d)``.
            anchor: ``(R,)`` long, the anchor of each row.
            s_i: the rows to update ``(R, d)``.

        Returns:
            ``(R, d)``.
        """
        first = self.mlp[0]
        blocks = dict(zip(self.order, first.weight.split(self.config.in_dim, dim=1), strict=True))
        part = nn.functional.linear(v_a, blocks["v_a"], first.bias) + nn.functional.linear(s_a, blocks["s_a"])
        out = self.mlp[1:](part[anchor] + nn.functional.linear(s_i, blocks["s_i"]))
        return v_a[anchor] + out if self.config.residual else out

r"""WISE-FUSE: VLM-guided coarse-to-fine selection, then text-fused MIL (reconstruction).

**This is a reconstruction.** WISE-FUSE (Shin, Kim, Jeong; arXiv 2508.14537) is public as an abstract
and Fig. 1 only (``mil-models.md`` §6): score low-res patches with a vision-language model against
LLM-written class descriptions, keep a top subset, encode only those patches at high resolution,
fuse the high-res features with the text embeddings, classify with MIL. The VLM, prompts, selection
ratio, cross-class aggregation, fusion operator and MIL head are not published; each choice here is
a :class:`WiseFuseConfig` field and is unverified.

Forward pass on one slide with ``N`` low-res patches:

1. **Score** (no learned parameters): :math:`s_{ic} = \cos(v_i, t_c)` between the patch's low-res VLM
   image embedding :math:`v_i` (batch key ``vlm``) and class text embedding :math:`t_c` (buffer
   ``text_embeddings (C, e)``, one unit vector per class). ``score_rule``: ``"max_foreground"``
   :math:`\max_{c \notin bg} s_{ic}`; ``"max"`` :math:`\max_c s_{ic}`; ``"margin"``
   :math:`\max_{c \notin bg} s_{ic} - \max_{c \in bg} s_{ic}`.
2. **Select**: keep the :math:`M = \lceil \text{keep\_frac} \cdot N \rceil` best patches (ties by input
   order; ``keep_frac·N`` is rounded to 9 decimals first so 0.3·10 keeps 3).
3. **High-res**: each kept patch's valid children :math:`u_{ij}` are pooled (``hr_pool``: mean, or a
   learned gated attention over children) and projected, :math:`h_i = \mathrm{ReLU}(W \bar u_i)`.
4. **Fuse** (``fusion``): ``"cross_attention"``: :math:`h_i \leftarrow \mathrm{LN}(h_i +
   \mathrm{MHA}(h_i, T, T))` with text tokens :math:`T = W_t\, t_c` (C tokens); ``"film"``:
   :math:`h_i \leftarrow h_i \odot (1 + \gamma) + \beta`, :math:`(\gamma, \beta) = W_f [s_{i\cdot}]`
   from the patch's class similarities; ``"none"``.
5. **MIL**: gated attention over the kept patches -> ``Linear(hidden, C)``.

The returned ``attention (B, N)`` covers every input patch in input order, 0 for patches not kept.
Only the kept patches' high-res features are read, so a pipeline can encode just those
(:meth:`WiseFuse.select` gives the indices from the VLM view alone).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wsigym.errors import DataError
from zoo.models.base import MILConfig, MILModel, check_batched
from zoo.nn import GatedAttention, attention_pool, masked_softmax

SCORE_RULES = ("max_foreground", "max", "margin")
HR_POOLS = ("mean", "attention")
FUSIONS = ("cross_attention", "film", "none")


@dataclass
class WiseFuseConfig(MILConfig):
    """Args (unpublished; defaults are choices):
    in_dim: width of the high-res features.
    vlm_dim: width e of the VLM image/text embeddings (512 for CONCH/PLIP/QuiltNet-B).
    keep_frac: fraction of low-res patches kept for high-res (rounded up).
    score_rule: ``"max_foreground"``, ``"max"`` or ``"margin"`` (see the module docstring).
    background_classes: class indices treated as background/normal for the score rule.
    hr_pool: children -> parent: ``"mean"`` or ``"attention"``.
    fusion: ``"cross_attention"``, ``"film"`` or ``"none"``.
    hidden: width of the patch stream; heads: attention heads of the cross-attention.
    attn_dim: hidden width of the gated-attention head; dropout: dropout in the head.
    """

    vlm_dim: int = 512
    keep_frac: float = 0.25
    score_rule: str = "max_foreground"
    background_classes: list[int] = field(default_factory=lambda: [0])
    hr_pool: str = "mean"
    fusion: str = "cross_attention"
    hidden: int = 128
    heads: int = 4
    attn_dim: int = 128
    dropout: float = 0.0


def kept_count(keep_frac: float, n: int) -> int:
    """``ceil(keep_frac * n)`` (product rounded to 9 decimals first), at least 1, at most ``n``."""
    return max(1, min(n, math.ceil(round(keep_frac * n, 9))))


class WiseFuse(MILModel):
    """WISE-FUSE (reconstruction; see the module docstring).

    Inputs: ``features (B, N, k, d)`` high-res children grouped by parent,
    ``mask (B, N)``, ``child_mask (B, N, k)``, ``vlm (B, N, e)`` low-res VLM embeddings.
    Outputs: ``logits (B, C)``, ``attention (B, N)`` (0 outside the kept set), ``selected (B, N)`` bool,
    ``scores (B, N)`` (VLM relevance), ``embedding (B, hidden)``.

    ``text_embeddings`` is a buffer (saved with the weights); set it with
    :meth:`set_text_embeddings` before the first forward.
    """

    family: ClassVar[str] = "wisefuse"
    config_class = WiseFuseConfig
    input_view = "hier"
    needs_hr: ClassVar[bool] = True

    def __init__(self, config: WiseFuseConfig) -> None:
        super().__init__(config)
        c = config
        for name, value, allowed in (
            ("score_rule", c.score_rule, SCORE_RULES),
            ("hr_pool", c.hr_pool, HR_POOLS),
            ("fusion", c.fusion, FUSIONS),
        ):
            if value not in allowed:
                raise ValueError(f"WiseFuseConfig.{name} must be one of {allowed}, got {value!r}")
        if not 0.0 < c.keep_frac <= 1.0:
            raise ValueError(f"WiseFuseConfig.keep_frac must be in (0, 1], got {c.keep_frac}")
        bad = [i for i in c.background_classes if not 0 <= i < c.num_classes]
        if bad:
            raise ValueError(
                f"WiseFuseConfig.background_classes {bad} are not class indices < {c.num_classes}"
            )
        fg = [i for i in range(c.num_classes) if i not in c.background_classes]
        if c.score_rule in ("max_foreground", "margin") and not fg:
            raise ValueError(
                f"WiseFuseConfig.score_rule {c.score_rule!r} needs a class outside background_classes"
            )
        if c.score_rule == "margin" and not c.background_classes:
            raise ValueError("WiseFuseConfig.score_rule 'margin' needs background_classes")
        self.register_buffer("text_embeddings", torch.zeros(c.num_classes, c.vlm_dim))
        self.child_attention = (
            GatedAttention(c.in_dim, c.attn_dim, 1, True) if c.hr_pool == "attention" else None
        )
        self.projection = nn.Sequential(nn.Linear(c.in_dim, c.hidden), nn.ReLU(), nn.Dropout(c.dropout))
        if c.fusion == "cross_attention":
            self.text_proj = nn.Linear(c.vlm_dim, c.hidden)
            self.cross_attention = nn.MultiheadAttention(
                c.hidden, c.heads, dropout=c.dropout, batch_first=True
            )
            self.fusion_norm = nn.LayerNorm(c.hidden)
        elif c.fusion == "film":
            self.film = nn.Linear(c.num_classes, 2 * c.hidden)
            nn.init.zeros_(self.film.weight)
            nn.init.zeros_(self.film.bias)
        self.attention = GatedAttention(c.hidden, c.attn_dim, 1, True, c.dropout)
        self.classifier = nn.Linear(c.hidden, c.num_classes)

    # ---- text ----------------------------------------------------------------------------------
    @torch.no_grad()
    def set_text_embeddings(self, embeddings: Tensor | Any) -> WiseFuse:
        """Store class text embeddings ``(C, e)`` (L2-normalised here); returns self."""
        t = torch.as_tensor(embeddings, dtype=torch.float32)
        expected = tuple(self.text_embeddings.shape)
        if tuple(t.shape) != expected:
            raise ValueError(
                f"WiseFuse.set_text_embeddings: expected shape {expected} (C, vlm_dim), got {tuple(t.shape)}"
            )
        if not torch.isfinite(t).all() or (t.norm(dim=-1) == 0).any():
            raise ValueError("WiseFuse.set_text_embeddings: embeddings must be finite and non-zero per class")
        self.text_embeddings.copy_(F.normalize(t, dim=-1))
        return self

    # ---- selection -----------------------------------------------------------------------------
    def prepare_for(self, dataset: Any) -> None:
        """Set the text embeddings from ``dataset`` (:func:`text_embeddings_for_dataset`) unless set."""
        if bool((self.text_embeddings.norm(dim=-1) == 0).any()):
            self.set_text_embeddings(text_embeddings_for_dataset(dataset))

    def similarities(self, vlm: Tensor) -> Tensor:
        """Cosine similarities ``(B, N, C)`` of ``vlm (B, N, e)`` to the class text embeddings."""
        if bool((self.text_embeddings.norm(dim=-1) == 0).any()):
            raise RuntimeError(
                "WiseFuse: text_embeddings are not set; call set_text_embeddings(...) "
                "(e.g. from text_embeddings_from_open_clip or dataset.vlm_text_embeddings())"
            )
        return F.normalize(vlm.float(), dim=-1) @ self.text_embeddings.T

    def relevance(self, sims: Tensor) -> Tensor:
        """Patch scores ``(B, N)`` from similarities ``(B, N, C)`` by ``score_rule``."""
        c = self.config
        if c.score_rule == "max":
            return sims.amax(-1)
        bg = torch.zeros(c.num_classes, dtype=torch.bool, device=sims.device)
        bg[list(c.background_classes)] = True
        fg_max = sims.masked_fill(bg, float("-inf")).amax(-1)
        if c.score_rule == "max_foreground":
            return fg_max
        return fg_max - sims.masked_fill(~bg, float("-inf")).amax(-1)

    @torch.no_grad()
    def select(self, vlm: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Coarse step only: ``vlm (B, N, e)`` -> ``index (B, M)`` of kept patches (best first),
        ``kept (B, M)`` bool (False past a slide's own ``ceil(keep_frac·N_b)``), ``scores (B, N)``."""
        return self._select(vlm, mask)

    def _select(self, vlm: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        b, n, _ = vlm.shape
        if mask is None:
            mask = torch.ones(b, n, dtype=torch.bool, device=vlm.device)
        scores = self.relevance(self.similarities(vlm)).masked_fill(~mask, float("-inf"))
        counts = torch.tensor(
            [kept_count(self.config.keep_frac, int(v)) for v in mask.sum(1).tolist()], device=vlm.device
        )
        m = int(counts.max())
        # stable descending sort: ties keep input order
        index = torch.sort(-scores, dim=1, stable=True).indices[:, :m]
        kept = torch.arange(m, device=vlm.device)[None] < counts[:, None]
        kept = kept & mask.gather(1, index)
        return index, kept, scores

    # ---- forward -------------------------------------------------------------------------------
    def inputs(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        if "vlm" not in batch:
            raise KeyError("WiseFuse needs the low-res VLM view: batch['vlm'] (bag.views['vlm'])")
        if "hr_features" not in batch:
            raise KeyError("WiseFuse reads high-res features, but the batch has no 'hr_features'")
        return {
            "features": batch["hr_features"],
            "mask": batch["mask"],
            "child_mask": batch["hr_mask"],
            "vlm": batch["vlm"],
        }

    def forward(
        self,
        features: Tensor,
        mask: Tensor | None = None,
        coords: Tensor | None = None,
        child_mask: Tensor | None = None,
        vlm: Tensor | None = None,
    ) -> dict[str, Tensor]:
        if vlm is None:
            raise ValueError("WiseFuse.forward needs vlm (B, N, e): the low-res VLM image embeddings")
        check_batched(features, type(self).__name__, "(B, N, k, D)")
        b, n, k, d = features.shape
        if vlm.shape[:2] != (b, n):
            raise ValueError(f"WiseFuse: vlm must be (B, N, e) = ({b}, {n}, e), got {tuple(vlm.shape)}")
        if mask is None:
            mask = torch.ones(b, n, dtype=torch.bool, device=features.device)
        if child_mask is None:
            child_mask = torch.ones(b, n, k, dtype=torch.bool, device=features.device)
        index, kept, scores = self._select(vlm, mask)
        m = index.shape[1]
        u = features.gather(1, index[..., None, None].expand(b, m, k, d))  # (B, M, k, d): kept only
        cm = child_mask.gather(1, index[..., None].expand(b, m, k)) & kept[..., None]
        pooled = self._pool_children(u, cm)  # (B, M, d)
        h = self.projection(pooled)
        sims_kept = self.similarities(vlm.gather(1, index[..., None].expand(b, m, vlm.shape[-1])))
        h = self._fuse(h, sims_kept)
        weights = masked_softmax(self.attention(h), kept[:, None, :])  # (B, 1, M)
        embedding = attention_pool(weights, h)[:, 0]
        attention = weights.new_zeros(b, n).scatter(1, index, weights[:, 0] * kept)
        selected = torch.zeros(b, n, dtype=torch.bool, device=features.device).scatter(1, index, kept)
        out = {
            "logits": self.classifier(embedding),
            "attention": attention,
            "selected": selected,
            "scores": scores,
            "embedding": embedding,
        }
        return out

    def _pool_children(self, u: Tensor, child_mask: Tensor) -> Tensor:
        if self.child_attention is None:
            w = child_mask.float() / child_mask.sum(-1, keepdim=True).clamp_min(1)
            return (w[..., None] * u).sum(-2)
        w = masked_softmax(self.child_attention(u), child_mask[..., None, :])  # (B, M, 1, k)
        return (w @ u)[..., 0, :]

    def _fuse(self, h: Tensor, sims: Tensor) -> Tensor:
        c = self.config
        if c.fusion == "cross_attention":
            text = self.text_proj(self.text_embeddings)[None].expand(h.shape[0], -1, -1)  # (B, C, hidden)
            attended, _ = self.cross_attention(h, text, text, need_weights=False)
            return self.fusion_norm(h + attended)
        if c.fusion == "film":
            gamma, beta = self.film(sims.to(h.dtype)).chunk(2, -1)
            return h * (1 + gamma) + beta
        return h


# ---- class descriptions and text embeddings ----------------------------------------------------
def load_class_descriptions(name_or_path: str | Path) -> dict[str, list[str]]:
    """Class descriptions ``{class name: [description, ...]}`` from a JSON file.

    ``name_or_path``: a shipped set (``"camelyon16"`` -> ``zoo/descriptions/camelyon16.json``) or a
    path to a JSON object mapping class names to non-empty lists of strings.

    Raises:
        DataError: naming the file when it is missing or not of that form.
    """
    path = Path(name_or_path)
    if path.suffix != ".json" and not path.exists():
        shipped = resources.files("zoo") / "descriptions" / f"{name_or_path}.json"
        if not shipped.is_file():
            known = sorted(
                p.name.removesuffix(".json")
                for p in (resources.files("zoo") / "descriptions").iterdir()
                if p.name.endswith(".json")
            )
            raise DataError(
                str(name_or_path), f"no such description file and not a shipped set (known: {known})"
            )
        source, text = str(shipped), shipped.read_text(encoding="utf-8")
    else:
        if not path.is_file():
            raise DataError(str(path), "description file does not exist")
        source, text = str(path), path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(source, f"not valid JSON: {e}") from None
    if not isinstance(data, dict) or not data:
        raise DataError(source, "expected a JSON object {class name: [description, ...]}")
    for cls, items in data.items():
        if (
            not isinstance(items, list)
            or not items
            or not all(isinstance(s, str) and s.strip() for s in items)
        ):
            raise DataError(source, f"class {cls!r}: expected a non-empty list of non-empty strings")
    return {str(k): list(v) for k, v in data.items()}


def text_embeddings_from_open_clip(
    model_name_or_path: str | Mapping[str, Any],
    descriptions: Mapping[str, Sequence[str]],
    pretrained: str | None = None,
    device: str | torch.device = "cpu",
    class_names: Sequence[str] | None = None,
) -> Tensor:
    """Class text embeddings ``(C, e)`` (unit rows) from an open_clip model.

    Each description is encoded and L2-normalised; a class's embedding is the normalised mean of its
    descriptions' (prompt ensembling).

    Args:
        model_name_or_path: an open_clip config name (``"ViT-B-32"``), an ``hf-hub:`` id, a
            ``local-dir:`` path, or a model config dict (``embed_dim``, ``vision_cfg``, ``text_cfg``),
            registered under a name derived from its content.
        descriptions: ``{class name: [text, ...]}`` (see :func:`load_class_descriptions`).
        pretrained: open_clip ``pretrained`` tag or local checkpoint path; None = random weights
            (tests only; nothing is downloaded for a config name or dict).
        class_names: row order (defaults to the order of ``descriptions``); every name must be there.

    Raises:
        KeyError: for a class name without descriptions.
    """
    import hashlib
    import tempfile

    import open_clip

    if isinstance(model_name_or_path, Mapping):
        cfg = dict(model_name_or_path)
        name = "zoo-" + hashlib.sha1(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:12]
        with tempfile.TemporaryDirectory() as tmp:
            cfg_path = Path(tmp) / f"{name}.json"
            cfg_path.write_text(json.dumps(cfg), encoding="utf-8")
            open_clip.add_model_config(cfg_path)
    else:
        name = str(model_name_or_path)
    names = list(class_names) if class_names is not None else list(descriptions)
    missing = [cname for cname in names if cname not in descriptions]
    if missing:
        raise KeyError(f"text_embeddings_from_open_clip: no descriptions for classes {missing}")
    model = open_clip.create_model(name, pretrained=pretrained, device=device, pretrained_text=False)
    tokenizer = open_clip.get_tokenizer(name)
    model.eval()
    rows = []
    with torch.no_grad():
        for cname in names:
            tokens = tokenizer(list(descriptions[cname])).to(device)
            emb = F.normalize(model.encode_text(tokens).float(), dim=-1)
            rows.append(F.normalize(emb.mean(0), dim=-1))
    return torch.stack(rows).cpu()


def text_embeddings_for_dataset(
    dataset: Any,
    descriptions: Mapping[str, Sequence[str]] | str | None = None,
    model_name_or_path: str | Mapping[str, Any] | None = None,
    pretrained: str | None = None,
    device: str | torch.device = "cpu",
) -> Tensor:
    """Text embeddings ``(C, e)`` for ``dataset``'s classes.

    Uses ``dataset.vlm_text_embeddings()`` when the dataset has one (the synthetic benchmark's
    simulated VLM); otherwise encodes ``descriptions`` (a dict or a shipped set name) with
    :func:`text_embeddings_from_open_clip`.
    """
    own = getattr(dataset, "vlm_text_embeddings", None)
    if callable(own):
        return torch.as_tensor(own(), dtype=torch.float32)
    if descriptions is None or model_name_or_path is None:
        raise ValueError(
            f"dataset {getattr(dataset, 'name', dataset)!r} has no vlm_text_embeddings(); "
            "pass descriptions and model_name_or_path (an open_clip model)"
        )
    if isinstance(descriptions, str):
        descriptions = load_class_descriptions(descriptions)
    return text_embeddings_from_open_clip(
        model_name_or_path, descriptions, pretrained, device, class_names=list(dataset.class_names)
    )

"""The slide bag: one whole-slide image as the environment and the models see it.

A slide is cut into ``N`` low-resolution tissue patches (e.g. 256 px at 5x, 2048 level-0 px on a
40x scan). Each low-res patch holds ``k`` high-resolution children (``k = (hi/lo)^2``: 16 for
5x -> 20x). Features of both resolutions come from the same patch encoder.

Shapes (numpy, float32 features, int64 coordinates, level-0 top-left ``(x, y)`` pixels):

=====================  ===============  =====================================================
field                  shape            meaning
=====================  ===============  =====================================================
``features``           ``(N, d)``       ``Z``: low-res features, one row per tissue patch
``coords``             ``(N, 2)``       level-0 top-left corner of each low-res patch
``hr_features``        ``(N, k, d)``    ``U``: features of the k high-res children (optional)
``hr_mask``            ``(N, k)``       True where a child lies on tissue (valid)
``hr_coords``          ``(N, k, 2)``    level-0 top-left corner of each child
``tumour_fraction``    ``(N,)``         ground-truth tumour area fraction per low-res patch
``hr_tumour_fraction`` ``(N, k)``       the same per child
``views[name]``        ``(N, e)``       extra per-patch feature views, e.g. ``"vlm"``: low-res
                                        image embeddings of a vision-language model
=====================  ===============  =====================================================
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from wsigym.errors import DataError


@dataclass(frozen=True)
class SlideMeta:
    """Acquisition facts of a slide bag.

    Attributes:
        lr_magnification: objective magnification of the low-res patches (e.g. 5.0).
        hr_magnification: objective magnification of the high-res children (e.g. 20.0).
        patch_size_level0: side of a low-res patch in level-0 pixels (e.g. 2048 at 40x base).
        hr_patch_size_level0: side of a child in level-0 pixels (e.g. 512).
        mpp: microns per level-0 pixel, when known.
        encoder: name of the patch encoder that produced the features.
        extra: anything else a reader wants to keep (JSON-serialisable).
    """

    lr_magnification: float = 5.0
    hr_magnification: float = 20.0
    patch_size_level0: int = 2048
    hr_patch_size_level0: int = 512
    mpp: float | None = None
    encoder: str = "unknown"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def children_per_side(self) -> int:
        """Children along one side of a low-res patch (4 for 5x -> 20x)."""
        return max(1, round(self.patch_size_level0 / self.hr_patch_size_level0))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SlideMeta:
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in known}
        extra = dict(kwargs.pop("extra", {}) or {})
        extra.update({k: v for k, v in d.items() if k not in known})
        return cls(**kwargs, extra=extra)


@dataclass
class SlideBag:
    """One slide: low-res state, high-res children, label and optional ground truth.

    See the module docstring for shapes. ``label`` indexes ``class_names``.
    Call :meth:`validate` after building one from a file; readers do.
    """

    slide_id: str
    features: np.ndarray
    coords: np.ndarray
    label: int
    class_names: tuple[str, ...]
    hr_features: np.ndarray | None = None
    hr_mask: np.ndarray | None = None
    hr_coords: np.ndarray | None = None
    tumour_fraction: np.ndarray | None = None
    hr_tumour_fraction: np.ndarray | None = None
    meta: SlideMeta = field(default_factory=SlideMeta)
    views: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def n(self) -> int:
        """Number of low-res patches N."""
        return int(self.features.shape[0])

    @property
    def dim(self) -> int:
        """Feature width d."""
        return int(self.features.shape[1])

    @property
    def k(self) -> int | None:
        """Children per low-res patch, or None without high-res features."""
        return None if self.hr_features is None else int(self.hr_features.shape[1])

    def validate(self, source: str = "<memory>") -> SlideBag:
        """Check shapes, dtypes, finiteness, label and child geometry; return self.

        Raises:
            DataError: naming ``source`` and what was expected.
        """

        def fail(what: str) -> None:
            raise DataError(source, what)

        z = self.features
        if not isinstance(z, np.ndarray) or z.ndim != 2 or z.shape[0] == 0:
            fail(f"low-res features must be a non-empty (N, d) array, got shape {getattr(z, 'shape', None)}")
        if not np.issubdtype(z.dtype, np.floating):
            fail(f"low-res features must be floating point, got dtype {z.dtype}")
        n, d = z.shape
        bad = ~np.isfinite(z).all(axis=1)
        if bad.any():
            fail(f"low-res features have NaN/inf in {int(bad.sum())} rows (first: row {int(np.argmax(bad))})")
        if self.coords.shape != (n, 2):
            fail(f"coords must have shape ({n}, 2) to match the features, got {self.coords.shape}")
        if not np.issubdtype(self.coords.dtype, np.integer):
            fail(f"coords must be integers (level-0 pixels), got dtype {self.coords.dtype}")
        if not self.class_names:
            fail("class_names is empty")
        if not (0 <= int(self.label) < len(self.class_names)):
            fail(f"label {self.label!r} is not an index into the classes {list(self.class_names)}")
        if self.hr_features is not None:
            u = self.hr_features
            if u.ndim != 3 or u.shape[0] != n or u.shape[2] != d:
                fail(f"high-res features must have shape ({n}, k, {d}), got {u.shape}")
            if not np.issubdtype(u.dtype, np.floating):
                fail(f"high-res features must be floating point, got dtype {u.dtype}")
            k = u.shape[1]
            mask = self.hr_mask if self.hr_mask is not None else np.ones((n, k), dtype=bool)
            if mask.shape != (n, k) or mask.dtype != np.bool_:
                fail(f"hr_mask must be a bool array of shape ({n}, {k}), got {mask.shape} {mask.dtype}")
            badu = ~np.isfinite(u).all(axis=2) & mask
            if badu.any():
                fail(f"high-res features have NaN/inf in {int(badu.sum())} valid children")
            if not mask.any(axis=1).all():
                fail(f"{int((~mask.any(axis=1)).sum())} low-res patches have no valid high-res child")
            if self.hr_coords is not None:
                if self.hr_coords.shape != (n, k, 2):
                    fail(f"hr_coords must have shape ({n}, {k}, 2), got {self.hr_coords.shape}")
                self._check_children_inside(fail, mask)
        if self.tumour_fraction is not None and self.tumour_fraction.shape != (n,):
            fail(f"tumour_fraction must have shape ({n},), got {self.tumour_fraction.shape}")
        if self.hr_tumour_fraction is not None and (
            self.hr_features is None or self.hr_tumour_fraction.shape != self.hr_features.shape[:2]
        ):
            fail("hr_tumour_fraction must have shape (N, k) and needs high-res features")
        for name, view in self.views.items():
            if view.ndim != 2 or view.shape[0] != n or not np.isfinite(view).all():
                fail(f"view {name!r} must be a finite ({n}, e) array, got shape {view.shape}")
        return self

    def _check_children_inside(self, fail: Any, mask: np.ndarray) -> None:
        ps, cs = self.meta.patch_size_level0, self.meta.hr_patch_size_level0
        rel = self.hr_coords - self.coords[:, None, :]
        inside = (rel >= 0).all(axis=2) & (rel + cs <= ps).all(axis=2)
        outside = mask & ~inside
        if outside.any():
            i = int(np.argwhere(outside)[0][0])
            fail(
                f"{int(outside.sum())} high-res children do not fit inside their low-res parent "
                f"(patch {i} at {self.coords[i].tolist()}, parent size {ps}, child size {cs})"
            )

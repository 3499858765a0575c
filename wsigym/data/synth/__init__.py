"""synth-c16: the embedded benchmark whose *spatial* statistics are real and whose *features* are simulated.

- Geometry: real CAMELYON16 tumour annotations (shipped as a compact raster, :mod:`.geometry`) placed on
  simulated tissue (:mod:`.layout`).
- Features: a documented generative model (:mod:`.generator`), regenerated per slide from its seed.
- Dataset + cache: :class:`SynthC16` (:mod:`.dataset`); knobs: :class:`SynthConfig` (:mod:`.config`).
- ``wsigym synth build|describe`` (:mod:`.cli`, :mod:`.describe`); ``wsigym synth calibrate`` lives in
  :mod:`wsigym.calibration` (it trains zoo models; the data layer imports none).
"""

from wsigym.data.synth.config import SynthConfig
from wsigym.data.synth.dataset import SynthC16

__all__ = ["SynthC16", "SynthConfig"]

"""A separate process that builds the caches, for tests/envs/test_precompute_cache.py (not a test module).

``python cache_worker.py MODE CACHE_ROOT DATASET_DIR [READY GO]``; ``WSIGYM_CACHE`` is set to CACHE_ROOT.

- ``build``: writes READY, waits for GO, then opens synth-c16-tiny at DATASET_DIR (slowed down, so
  that concurrent builders overlap) and builds the ``V`` of its test split (slowed down too); prints
  JSON ``{"synth_builds", "v_computed", "v_sha256"}``.
- ``hang-synth``: builds synth-c16-tiny at DATASET_DIR and hangs after three slides (to be killed).
- ``hang-v``: builds the ``V`` of the test split of an existing DATASET_DIR and hangs inside the
  first publish, after writing its temp file (to be killed).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path

mode, cache, dataset_dir = sys.argv[1:4]
os.environ["WSIGYM_CACHE"] = cache

import torch  # noqa: E402

import zoo  # noqa: E402
from wsigym.data.synth import SynthC16  # noqa: E402
from wsigym.data.synth import dataset as synth_module  # noqa: E402
from wsigym.envs import precompute_cache  # noqa: E402
from wsigym.envs.slide_source import SlideSource  # noqa: E402

torch.set_num_threads(1)
torch.manual_seed(0)
hafed = zoo.create_model("hafed", in_dim=384).eval()
computed = 0
aggregate = hafed.aggregate


def slow_aggregate(*args, **kwargs):
    global computed
    computed += 1
    time.sleep(0.05)
    return aggregate(*args, **kwargs)


hafed.aggregate = slow_aggregate
simulate = synth_module.simulate_layout
layouts = 0


def slow_layout(*args, **kwargs):
    global layouts
    layouts += 1
    if mode == "hang-synth" and layouts > 3:
        time.sleep(600)
    time.sleep(0.02)
    return simulate(*args, **kwargs)


synth_module.simulate_layout = slow_layout

if mode == "build":
    ready, go = Path(sys.argv[4]), Path(sys.argv[5])
    ready.write_text("ready")
    while not go.exists():
        time.sleep(0.01)
if mode == "hang-v":
    save = precompute_cache.save_file

    def hanging_save(arrays, path):
        save(arrays, path)
        time.sleep(600)

    precompute_cache.save_file = hanging_save

ds = SynthC16.tiny(cache_dir=dataset_dir, progress=False)
source = SlideSource(ds, "test", 0, hafed, progress=False)
digest = hashlib.sha256(source.v.numpy().tobytes()).hexdigest()
print(json.dumps({"synth_builds": SynthC16.build_count, "v_computed": computed, "v_sha256": digest}))

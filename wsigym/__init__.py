"""wsigym: Gymnasium environments for where-to-zoom agents on whole-slide images.

Importing the package registers the environments:

- ``WSIZoom-v0``: SASHA's MDP with the Targeted State Update (TSU) of similar patches;
- ``WSIZoomGlobal-v0``: every unvisited patch is updated after a zoom (RLogist-style ablation);
- ``WSIZoomNoUpdate-v0``: only the zoomed row changes (ablation).
"""

from __future__ import annotations

from gymnasium.envs.registration import register

__version__ = "0.1.0"

_ENTRY = "wsigym.envs.zoom:WSIZoomEnv"
_VECTOR_ENTRY = "wsigym.envs.vector:WSIZoomVectorEnv"

register(id="WSIZoom-v0", entry_point=_ENTRY, vector_entry_point=_VECTOR_ENTRY, kwargs={"update": "tsu"})
register(
    id="WSIZoomGlobal-v0", entry_point=_ENTRY, vector_entry_point=_VECTOR_ENTRY, kwargs={"update": "global"}
)
register(
    id="WSIZoomNoUpdate-v0", entry_point=_ENTRY, vector_entry_point=_VECTOR_ENTRY, kwargs={"update": "none"}
)

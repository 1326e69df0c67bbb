"""A ground-truth feature world (DESIGN §10): activations with known features, stored as an activation store.

    cfg = preset("small")                     # or WorldConfig(d=..., n_features=..., ...)
    world = build_world(cfg, "runs/world")    # activation store + true atoms, structure and codes
    for x, s in zip(world.store.iter_batches(1024), world.iter_truth(1024)): ...
"""

from saelens_amort.world.config import PRESETS, WorldConfig, preset
from saelens_amort.world.generate import WorldStructure, draw_chunk, draw_structure
from saelens_amort.world.store import HOOK_NAME, World, build_world

__all__ = ["HOOK_NAME", "PRESETS", "World", "WorldConfig", "WorldStructure", "build_world", "draw_chunk",
           "draw_structure", "preset"]

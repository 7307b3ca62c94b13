"""The keys a model section may hold at each level, apart from the code that reads them.

``spec`` expands them and ``schema`` describes them; a key added here must be handled in both
(``schema`` checks it is described). A layer's other keys are its type's arguments.
"""
from __future__ import annotations

MODEL_KEYS = ("name", "input", "input_dtype", "projection", "blocks", "layers", "skips", "output",
              "width_multiplier", "depth_multiplier")
BLOCK_KEYS = ("args", "layers", "skips", "projection", "output")
INSTANCE_KEYS = ("id", "block", "args", "first_args", "repeat", "copy_id", "input", "projection", "when")
# `tie:` shares a parameter with another layer (skiptrain/tying.py), so it is not a constructor argument
LAYER_META_KEYS = ("id", "type", "input", "scale", "when", "tie")
SKIP_KEYS = ("from", "to", "merge", "projection", "axis", "id", "order", "when")

"""Built-in layer types: every suitable ``torch.nn`` class, and skiptrain's own."""
from . import own, torch_nn  # noqa: F401  (both register on import)

"""Built-in layer types: every suitable ``torch.nn`` class, torchvision's building blocks, and skiptrain's own."""
from . import attention, indexing, own, tensors, torch_nn, torchvision_ops  # noqa: F401  (each registers on import)

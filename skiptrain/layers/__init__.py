"""Built-in layer types: every suitable ``torch.nn`` class, skiptrain's own, and torchvision's building blocks.

The types built on torchvision register on demand (``on_demand``): importing torchvision takes
about a second (it loads its models), which `validate` would pay on every config otherwise.
``registry.get`` calls it when a name is not registered yet, ``registry.names`` always.
"""
from . import causal, indexing, own, tensors, torch_nn  # noqa: F401  (each registers on import)


def on_demand() -> None:
    """Register the types built on torchvision; again if a test's scoped registry dropped them."""
    from . import attention, torchvision_ops

    torchvision_ops.register_all()
    attention.register_all()

"""The layer vocabulary and the graph: Keras layers as PyTorch modules (`layers`), a Keras
functional model replayed by a plan (`graph.KerasModel`), and its inference copy (`inference`).
This layer imports torch and numpy only."""

from .graph import KerasModel
from .inference import keep_freed_memory, optimize_for_inference

__all__ = ["KerasModel", "keep_freed_memory", "optimize_for_inference"]

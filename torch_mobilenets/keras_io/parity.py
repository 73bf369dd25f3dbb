"""How parity with Keras is measured, in one place for the command line, the benchmark and the
tests: the largest difference relative to max(1, the largest reference value), so logits near
zero are compared absolutely and large ones relatively."""

from __future__ import annotations

import numpy as np

PARITY_TOLERANCE = 1e-4


def relative_error(got, expected) -> float:
    """max |got - expected| / max(1, max |expected|), on arrays or tensors alike."""
    got, expected = np.asarray(got, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    return float(np.abs(got - expected).max() / max(1.0, float(np.abs(expected).max())))

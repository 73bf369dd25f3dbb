"""ImageNet-1k class names and Keras-compatible ``decode_predictions``."""

from __future__ import annotations

import functools
import json
from importlib.resources import files

import numpy as np
import torch

# Byte-identical to the file Keras downloads (md5 c2c37ea517e94d9795004a39431a14cb);
# regenerate with convert/make_class_index.py.
_CLASS_INDEX_FILE = "imagenet_class_index.json"


@functools.cache
def load_class_index() -> dict[int, tuple[str, str]]:
    """Return ``{class_index: (wnid, name)}`` for the 1000 ImageNet-1k classes.

    The dict is cached and shared between callers; do not mutate it.
    """
    resource = files("torch_mobilenets") / "data" / _CLASS_INDEX_FILE
    raw = json.loads(resource.read_text(encoding="utf-8"))
    return {int(k): (wnid, name) for k, (wnid, name) in raw.items()}


def _to_numpy(preds) -> np.ndarray:
    if isinstance(preds, np.ndarray):
        return preds
    if isinstance(preds, torch.Tensor):
        preds = preds.detach().cpu()
        # numpy has no bfloat16; float32 holds every bfloat16 value exactly.
        if preds.dtype == torch.bfloat16:
            preds = preds.float()
        return preds.numpy()
    return np.asarray(preds)


def decode_predictions(preds, top: int = 5) -> list[list[tuple[str, str, float]]]:
    """Decode a batch of ImageNet predictions like Keras' ``decode_predictions``.

    Args:
        preds: torch tensor or numpy array of shape ``(samples, 1000)``.
        top: number of best classes to return per sample.

    Returns:
        One list per sample of ``(wnid, name, score)`` tuples, highest score
        first; ``score`` is a Python float.

    Raises:
        ValueError: if ``preds`` is not of shape ``(samples, 1000)``.
    """
    preds = _to_numpy(preds)
    if preds.ndim != 2 or preds.shape[1] != 1000:
        raise ValueError(
            "`decode_predictions` expects a batch of predictions "
            "(i.e. a 2D array of shape (samples, 1000)). "
            f"Received array with shape: {preds.shape}"
        )
    index = load_class_index()
    results = []
    for pred in preds:
        # Same selection as Keras (including its slicing for top <= 0) so that
        # ties resolve to the same classes.
        top_indices = pred.argsort()[-top:][::-1]
        result = [(*index[int(i)], float(pred[i])) for i in top_indices]
        # list.sort is stable, so equal scores keep the argsort order, as in Keras.
        result.sort(key=lambda item: item[2], reverse=True)
        results.append(result)
    return results

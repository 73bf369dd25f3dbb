"""The public constructors: a pure builder (`torch_mobilenets.models`) composed with loading what
`weights` names, as Keras' builders do in one call.

    MobileNetV2 = with_weights(models.MobileNetV2)
    model = MobileNetV2(weights="imagenet", alpha=0.35)   # Keras' signature and defaults
"""

from __future__ import annotations

import functools
import inspect
import warnings
from collections.abc import Callable

from ..keras_io import load_weights
from ..models import arguments
from ..nn.graph import KerasModel
from .download import imagenet_weights


def load_requested_weights(
    model: KerasModel, weights: arguments.Weights, stacklevel: int = 1
) -> KerasModel:
    """Load what `weights` names into a freshly built `model`: nothing for None; for "imagenet"
    Keras' choice of official file, downloaded, verified and converted once into torch's hub
    cache; else the path of a Keras file or a converted `.safetensors`. Warnings point
    `stacklevel` frames up (1: the caller)."""
    if weights is None:
        return model
    if weights == "imagenet":
        weights = imagenet_weights(model.config, stacklevel + 1)
    return load_weights(model, weights, assign=True)  # a fresh model: take the tensors as they are


def build_with_weights(
    builder: Callable[..., KerasModel], args: tuple, kwargs: dict, stacklevel: int = 1
) -> KerasModel:
    """`builder(*args, **kwargs)` with weights loaded, `weights` defaulting to "imagenet" as in
    Keras; Keras' warnings point `stacklevel` frames up (1: the caller)."""
    bound = public_signature(builder).bind(*args, **kwargs)
    bound.apply_defaults()
    weights = bound.arguments["weights"]
    model = builder(**bound.arguments)
    message = arguments.channels_warning(
        model.config["family"], bound.arguments.get("input_shape"), weights
    )
    if message:
        warnings.warn(message, UserWarning, stacklevel=stacklevel + 1)
    return load_requested_weights(model, weights, stacklevel + 1)


@functools.cache
def public_signature(builder: Callable) -> inspect.Signature:
    """The builder's signature with Keras' default, `weights="imagenet"`."""
    signature = inspect.signature(builder)
    parameters = [
        p.replace(default="imagenet") if p.name == "weights" else p
        for p in signature.parameters.values()
    ]
    return signature.replace(parameters=parameters)


@functools.cache
def with_weights(builder: Callable[..., KerasModel]) -> Callable[..., KerasModel]:
    """The public constructor of a builder: the same arguments and docstring, and `weights`
    loaded. One per builder, so `tm.FAMILIES[name]` is `tm.MobileNetV2` itself."""

    @functools.wraps(builder)
    def constructor(*args, **kwargs) -> KerasModel:
        return build_with_weights(builder, args, kwargs, stacklevel=2)

    constructor.__signature__ = public_signature(builder)  # type: ignore[attr-defined]
    return constructor

"""Image preprocessing presets: an image to exactly the input a Keras MobileNet gets from Keras'
own pipeline,

    img = keras.utils.load_img(path, target_size=(rows, rows))   # RGB, PIL "nearest" resize
    x = keras.utils.img_to_array(img)                           # float32 pixels in [0, 255]
    x = keras.applications.<module>.preprocess_input(x)         # V1/V2: to [-1, 1]; V3: as is

but channels first, as a PyTorch model takes it. V3 models scale pixels themselves (their
`rescaling` layer), so their preset leaves pixels in [0, 255], unless the model was built with
`include_preprocessing=False`.
"""

from __future__ import annotations

import io
import os

import numpy as np
import torch

from ..keras_io.config import SPEC_FAMILY
from ..models.preprocessing import preprocesses_input, scale_to_unit_range

# Keras' `load_img` interpolation names, as PIL resampling filters.
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "hamming", "box", "lanczos")


class KerasPreprocessing:
    """Callable preset: PIL image, image file path, or uint8 tensor `(3, H, W)` / `(N, 3, H, W)`
    -> float32 tensor `(3, size, size)` / `(N, 3, size, size)`, ready for the model.

    `size=None` keeps the image's own size (a dynamic-size model). `scale` applies Keras'
    "tf" mode `x / 127.5 - 1` (V1, V2, and V3 without its `rescaling` layer).
    """

    def __init__(
        self, size: int | tuple | None = 224, scale: bool = True, interpolation: str = "nearest"
    ):
        if interpolation not in INTERPOLATIONS:
            raise ValueError(
                f"interpolation must be one of {INTERPOLATIONS}; got {interpolation!r}"
            )
        self.size = (size, size) if isinstance(size, int) else (tuple(size) if size else None)
        self.scale = scale
        self.interpolation = interpolation

    @classmethod
    def for_family(
        cls, family: str, size: int | tuple | None = 224, include_preprocessing: bool = True
    ) -> KerasPreprocessing:
        """The preset of a family's models: V3 models with their `rescaling` layer take pixels."""
        scaled_by_model = family.startswith("mobilenet_v3") and include_preprocessing
        return cls(size, scale=not scaled_by_model)

    @classmethod
    def for_model(cls, model) -> KerasPreprocessing:
        """The preset for a built model: its static input size (224 when it has none, the size of
        the official files), and its family's scaling. A user's model (`load_model`) takes
        pixels when it scales them itself, else [-1, 1] as every MobileNet's preprocess_input
        gives."""
        config = model.config
        if config.get("family") == SPEC_FAMILY:
            _, rows, cols = model.input_shape
            return cls((rows, cols) if rows and cols else 224, scale=not preprocesses_input(model))
        _, rows, cols = config.get("input_shape") or (3, None, None)
        size = (rows, cols) if rows and cols else 224
        return cls.for_family(config["family"], size, config.get("include_preprocessing", True))

    def __call__(self, image) -> torch.Tensor:
        if isinstance(image, torch.Tensor):
            return self._tensor(image)
        return self._to_input(self._load(image))

    def _tensor(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype != torch.uint8 or images.dim() not in (3, 4) or images.shape[-3] != 3:
            raise ValueError(
                "expected a uint8 tensor of shape (3, H, W) or (N, 3, H, W); got "
                f"{images.dtype} {tuple(images.shape)}"
            )
        if images.dim() == 4:
            return torch.stack([self._tensor(image) for image in images])
        from PIL import Image

        # Through PIL, so that resizing is PIL's, bit for bit, as in Keras' load_img.
        return self._to_input(Image.fromarray(images.permute(1, 2, 0).contiguous().numpy()))

    def _load(self, image):
        from PIL import Image

        if isinstance(image, (str, os.PathLike)):
            with open(image, "rb") as f:
                image = Image.open(io.BytesIO(f.read()))
        if not isinstance(image, Image.Image):
            raise TypeError(
                f"expected a PIL image, an image path or a uint8 tensor; got {type(image).__name__}"
            )
        return image

    def _to_input(self, image) -> torch.Tensor:
        from PIL import Image

        if image.mode != "RGB":
            image = image.convert("RGB")
        if self.size is not None:
            width_height = (self.size[1], self.size[0])
            if image.size != width_height:
                image = image.resize(
                    width_height, getattr(Image.Resampling, self.interpolation.upper())
                )
        x = torch.from_numpy(np.asarray(image, dtype=np.float32).transpose(2, 0, 1).copy())
        return scale_to_unit_range(x) if self.scale else x

    def __repr__(self) -> str:
        return (
            f"KerasPreprocessing(size={self.size}, scale={self.scale}, "
            f"interpolation={self.interpolation!r})"
        )

"""KerasCV preset folders: the backbone configuration a preset's `config.json` records."""

from __future__ import annotations

import json
from pathlib import Path

from ..models.mobilenet_v3_backbone import STACKWISE
from .reader import MAX_JSON_BYTES, WeightsFileError, check_input_file, reading


def preset_arguments(folder: Path) -> tuple[dict, bool]:
    """(`MobileNetV3Backbone` arguments, whether weights are included) from a KerasCV preset
    folder's config.json."""
    config_file = folder / "config.json"
    with reading(config_file, what="not a KerasCV preset folder"):
        check_input_file(config_file, MAX_JSON_BYTES)
        saved = json.loads(config_file.read_bytes())
        config = saved["config"]
        if not isinstance(config, dict):
            raise WeightsFileError(f"{config_file}: 'config' is not a JSON object")
    if "MobileNetV3Backbone" not in str(saved.get("registered_name", saved.get("class_name"))):
        raise WeightsFileError(
            f"{folder}: holds a {saved.get('class_name')}, not a MobileNetV3Backbone"
        )
    arguments = {k: config[k] for k in (*STACKWISE, "include_rescaling", "alpha") if k in config}
    if config.get("input_shape"):
        height, width, channels = config["input_shape"]
        arguments["input_shape"] = (channels, height, width)
    return arguments, saved.get("weights") is not None

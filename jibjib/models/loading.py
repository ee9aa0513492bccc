"""A trained model.keras loaded for inference: float32 whatever the training's dtype policy.

Importing this module registers the training loss and metrics (jibjib.models.losses, .metrics), so
`keras.models.load_model` can also compile a model.keras after it.
"""

from __future__ import annotations

import os

import keras

from jibjib.models import losses, metrics  # noqa: F401 - registers the loss and metrics with keras.saving

# Dtype names that make a layer compute in half precision (train.mixed_precision on a GPU).
_HALF_PRECISION = frozenset({"float16", "bfloat16", "mixed_float16", "mixed_bfloat16"})


def _float32_config(config):
    """A serialized model with every half-precision dtype, nested sub-models included, set to float32."""
    if isinstance(config, list):
        return [_float32_config(item) for item in config]
    if not isinstance(config, dict):
        return config
    out = {key: _float32_config(value) for key, value in config.items()}
    dtype = config.get("dtype")
    if (dtype.get("config", {}).get("name") if isinstance(dtype, dict) else dtype) in _HALF_PRECISION:
        out["dtype"] = "float32"
    return out


def load_for_inference(path: str | os.PathLike[str]) -> keras.Model:
    """Load model.keras to compute in float32, whatever dtype policy it was trained with.

    A model trained under mixed_float16 keeps that policy in model.keras, and
    evaluation and export on a CPU would then compute in float16. Its variables
    are float32 already, so the same architecture rebuilt in float32 takes them
    unchanged.
    """
    model = keras.models.load_model(path, compile=False)
    config = keras.saving.serialize_keras_object(model)
    float32 = _float32_config(config)
    if float32 == config:
        return model
    rebuilt = keras.saving.deserialize_keras_object(float32)
    rebuilt.set_weights(model.get_weights())
    return rebuilt

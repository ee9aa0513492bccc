"""VGGish (AudioSet) in Keras: the trunk, its classifier, and the official TF1 checkpoint loaded into it.

Every model takes VGGish log-mel patches (96 frames x 64 mel bands, float32)
and returns logits: losses use ``from_logits=True``; softmax (single-label) or
sigmoid (multi-label) is applied by the caller or at export. The builders are
plain functions without global state, so they also work inside a
``tf.distribute.Strategy`` scope. The builders' keyword defaults are the
config schema's (vggish section).

Only the model modules import TensorFlow; they are imported by training and
export code only, so the feature steps of the workflow never pay for it.
"""

from __future__ import annotations

import logging
import os

import keras
import tensorflow as tf
from keras import layers

from jibjib.core.errors import ConfigError
from jibjib.core.params import VGGISH
from jibjib.core.settings import schema_default
from jibjib.models.checkpoint import checkpoint_prefix, checkpoint_problem

logger = logging.getLogger(__name__)

PATCH_FRAMES = VGGISH.patch_frames  # 96
MEL_BANDS = VGGISH.mel_bands  # 64
EMBEDDING_SIZE = 128

# The trunk's weighted layers in order: Keras layer name, TF1 scope of the
# official checkpoint, kernel shape (conv HWIO, dense [in, out]). Keras 3 forbids
# "/" in layer names, hence the flat names.
_TRUNK_LAYERS: tuple[tuple[str, str, tuple[int, ...]], ...] = (
    ("conv1", "vggish/conv1", (3, 3, 1, 64)),
    ("conv2", "vggish/conv2", (3, 3, 64, 128)),
    ("conv3_1", "vggish/conv3/conv3_1", (3, 3, 128, 256)),
    ("conv3_2", "vggish/conv3/conv3_2", (3, 3, 256, 256)),
    ("conv4_1", "vggish/conv4/conv4_1", (3, 3, 256, 512)),
    ("conv4_2", "vggish/conv4/conv4_2", (3, 3, 512, 512)),
    ("fc1_1", "vggish/fc1/fc1_1", (6 * 4 * 512, 4096)),
    ("fc1_2", "vggish/fc1/fc1_2", (4096, 4096)),
    ("fc2", "vggish/fc2", (4096, EMBEDDING_SIZE)),
)

TRUNK_LAYER_NAMES: tuple[str, ...] = tuple(name for name, _, _ in _TRUNK_LAYERS)

# Official TF1 variable name -> (Keras layer name, "kernel" | "bias", shape).
VGGISH_VARIABLES: dict[str, tuple[str, str, tuple[int, ...]]] = {}
for _layer, _scope, _shape in _TRUNK_LAYERS:
    VGGISH_VARIABLES[f"{_scope}/weights"] = (_layer, "kernel", _shape)
    VGGISH_VARIABLES[f"{_scope}/biases"] = (_layer, "bias", (_shape[-1],))
del _layer, _scope, _shape

VGGISH_PARAMS = 72_141_184


class CheckpointError(ConfigError):
    """A VGGish checkpoint is missing, unreadable or does not fit the trunk.

    A configuration error (vggish.checkpoint), so the command line reports it
    as one line like the other config problems."""


def vggish_trunk(name: str = "vggish") -> keras.Model:
    """VGGish (AudioSet) as a Keras model: (batch, 96, 64) log-mel -> (batch, 128) embedding.

    Layer for layer the network of Google's TF1 reference, so the official
    checkpoint loads unchanged (see `load_vggish_checkpoint`). As upstream does
    today, the 128-d embedding has no activation.
    """

    def conv(filters: int, layer_name: str) -> layers.Conv2D:
        return layers.Conv2D(filters, 3, padding="same", activation="relu", name=layer_name)

    def pool(layer_name: str) -> layers.MaxPooling2D:
        return layers.MaxPooling2D(2, strides=2, padding="same", name=layer_name)

    inputs = keras.Input((PATCH_FRAMES, MEL_BANDS), dtype="float32", name="log_mel")
    x = layers.Reshape((PATCH_FRAMES, MEL_BANDS, 1), name="add_channel")(inputs)
    x = pool("pool1")(conv(64, "conv1")(x))
    x = pool("pool2")(conv(128, "conv2")(x))
    x = pool("pool3")(conv(256, "conv3_2")(conv(256, "conv3_1")(x)))
    x = pool("pool4")(conv(512, "conv4_2")(conv(512, "conv4_1")(x)))
    # Row-major flatten of NHWC (6, 4, 512), the same order as TF1's reshape, so
    # fc1_1's [12288, 4096] weights apply as they are.
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(4096, activation="relu", name="fc1_1")(x)
    x = layers.Dense(4096, activation="relu", name="fc1_2")(x)
    outputs = layers.Dense(EMBEDDING_SIZE, name="fc2")(x)
    return keras.Model(inputs, outputs, name=name)


def load_vggish_checkpoint(trunk: keras.Model, path: str | os.PathLike[str]) -> None:
    """Copy the 18 official VGGish tensors from a TF1 checkpoint into `trunk`.

    `path` is the single V1 file (``vggish_model.ckpt`` as Google ships it) or
    the prefix of a V2 checkpoint (``prefix.index`` + ``prefix.data-*``). The
    file is only read as tensors, nothing in it is executed. Extra tensors are
    ignored. Everything is checked before any weight is assigned, so on
    `CheckpointError` the trunk is left unchanged.
    """
    path = checkpoint_prefix(os.fspath(path))
    # Refuse by file format first: TensorFlow's reader never runs code, but a
    # Keras model or pickle given here must not even reach a library that might.
    problem = checkpoint_problem(path)
    if problem:
        raise CheckpointError(f"{path}: {problem}")
    # The C++ reader surfaces errors as assorted Python types (OpError
    # subclasses, IndexError for a short read, ...), so catch them all here.
    try:
        reader = tf.train.load_checkpoint(path)
        shapes = reader.get_variable_to_shape_map()
        dtypes = reader.get_variable_to_dtype_map()
    except Exception as error:
        raise CheckpointError(f"{path}: not a readable TF checkpoint ({_first_line(error)})") from error

    for tensor, (_, _, shape) in VGGISH_VARIABLES.items():
        if tensor not in shapes:
            raise CheckpointError(f"{path}: tensor {tensor} is missing")
        if tuple(shapes[tensor]) != shape:
            raise CheckpointError(
                f"{path}: tensor {tensor} has shape {list(shapes[tensor])}, expected {list(shape)}"
            )
        if dtypes[tensor] != tf.float32:
            raise CheckpointError(f"{path}: tensor {tensor} has dtype {dtypes[tensor].name}, expected float32")

    # A truncated data file can pass the index checks above and fail only here.
    values = {}
    for tensor in VGGISH_VARIABLES:
        try:
            values[tensor] = reader.get_tensor(tensor)
        except Exception as error:
            raise CheckpointError(f"{path}: tensor {tensor} cannot be read ({_first_line(error)})") from error

    names = {layer.name for layer in trunk.layers}
    if "conv1" not in names and "vggish" in names:
        trunk = trunk.get_layer("vggish")  # a classifier was passed: load its trunk
    for tensor, (layer_name, attribute, _) in VGGISH_VARIABLES.items():
        getattr(trunk.get_layer(layer_name), attribute).assign(values[tensor])


def _first_line(error: BaseException) -> str:
    text = getattr(error, "message", None) or str(error)
    return text.strip().splitlines()[0] if text.strip() else type(error).__name__


def _set_trainable(trunk: keras.Model, trainable: str) -> None:
    """Freeze the trunk layers before `trainable` ("all", "head" or a trunk layer name, checked by the caller)."""
    if trainable == "all":
        return
    if trainable == "head":
        trunk.trainable = False
        return
    first = TRUNK_LAYER_NAMES.index(trainable)
    for index, layer_name in enumerate(TRUNK_LAYER_NAMES):
        trunk.get_layer(layer_name).trainable = index >= first


def vggish_classifier(
    n_classes: int,
    head_units: int = schema_default("vggish.head_units"),
    multi_label: bool = schema_default("vggish.multi_label"),
    checkpoint: str | os.PathLike[str] | None = schema_default("vggish.checkpoint"),
    trainable: str = schema_default("vggish.trainable"),
    dropout: float = schema_default("vggish.dropout"),
) -> keras.Model:
    """VGGish trunk -> Dense(head_units, ReLU) -> [Dropout] -> Dense(n_classes) logits.

    `multi_label` does not change the graph (the output is logits either way);
    it only allows a single output class. `trainable` is "all", "head" (trunk
    frozen) or the first trainable trunk layer, e.g. "conv4_1" or "fc1_1".
    """
    if n_classes < (1 if multi_label else 2):
        raise ValueError(f"n_classes={n_classes}: a {'multi' if multi_label else 'single'}-label "
                         f"classifier needs at least {1 if multi_label else 2} classes")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout={dropout} is not in [0, 1)")

    if trainable not in ("all", "head") + TRUNK_LAYER_NAMES:
        valid = ", ".join(("all", "head") + TRUNK_LAYER_NAMES)
        raise ValueError(f"trainable={trainable!r} is not one of: {valid}")

    trunk = vggish_trunk()
    _set_trainable(trunk, trainable)
    if checkpoint is None:
        logger.warning("VGGish trunk starts from random weights: no vggish.checkpoint set")
    else:
        load_vggish_checkpoint(trunk, checkpoint)

    inputs = keras.Input((PATCH_FRAMES, MEL_BANDS), dtype="float32", name="log_mel")
    x = layers.Dense(head_units, activation="relu", name="head")(trunk(inputs))
    if dropout:
        x = layers.Dropout(dropout, name="dropout")(x)
    # float32 logits under mixed precision: the loss and the export read them at full precision.
    outputs = layers.Dense(n_classes, name="logits", dtype="float32")(x)
    return keras.Model(inputs, outputs, name="vggish_classifier")

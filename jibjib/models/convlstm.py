"""The ConvLSTM: a small 2-D CNN per log-mel patch, then an LSTM over a file's patch sequence.

Takes VGGish log-mel patches (96 frames x 64 mel bands, float32) and
returns logits, like the VGGish classifier. The builder's keyword defaults
are the config schema's (convlstm section).
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import layers

from jibjib.core.params import VGGISH
from jibjib.core.settings import schema_default
from jibjib.models.vggish import MEL_BANDS, PATCH_FRAMES


def _patch_encoder(conv_filters: Sequence[int]) -> keras.Model:
    """One patch (96, 64) and whether it is real -> feature vector: [conv 3x3, BatchNorm, ReLU, max-pool] per
    filter count, then the mean over time of each (mel position, filter).

    In training BatchNorm normalises with the statistics of the real patches
    only (its `mask`): padding never enters them.
    """
    inputs = keras.Input((PATCH_FRAMES, MEL_BANDS), dtype="float32", name="patch")
    real = keras.Input((), dtype="bool", name="real")
    # A single input channel: the 2-D kernels slide over time x mel, so a call
    # shifted in pitch or time still matches (mel bands as channels would not).
    x = layers.Reshape((PATCH_FRAMES, MEL_BANDS, 1), name="add_channel")(inputs)
    for block, filters in enumerate(conv_filters, start=1):
        # No conv bias: BatchNorm's offset replaces it.
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"conv{block}")(x)
        # BatchNorm's mask has the shape of its input without the channels.
        cells = keras.ops.logical_and(keras.ops.ones_like(x[..., 0], dtype="bool"), real[:, None, None])
        x = layers.BatchNormalization(name=f"bn{block}")(x, mask=cells)
        # An op rather than a ReLU layer, which would hand BatchNorm's mask on to the pooling (that drops it,
        # with a warning).
        x = keras.ops.relu(x)
        x = layers.MaxPooling2D(2, padding="same", name=f"pool{block}")(x)
    # Average over time only: where in the spectrum a call sits tells species
    # apart, so the mel axis is kept (a global pool would discard pitch).
    x = layers.AveragePooling2D((x.shape[1], 1), name="time_pool")(x)
    outputs = layers.Flatten(name="flatten")(x)
    return keras.Model([inputs, real], outputs, name="patch_encoder")


def convlstm_classifier(
    n_classes: int,
    seq_len: int = schema_default("convlstm.seq_len"),
    conv_filters: Sequence[int] = tuple(schema_default("convlstm.conv_filters")),
    lstm_units: int = schema_default("convlstm.lstm_units"),
    dense_units: int = schema_default("convlstm.dense_units"),
    dropout: float = schema_default("convlstm.dropout"),
) -> keras.Model:
    """Per-patch 2-D CNN -> LSTM over the patch sequence -> Dense(ReLU) -> Dropout -> logits.

    Inputs (a list in this order, or a dict keyed by name):
      ``patches``: float32 (batch, seq_len, 96, 64), shorter recordings padded;
      ``mask``: bool (batch, seq_len), True for real patches, False for padding.
    Padding must sit at the end (a right-padded mask, the real patches first)
    and every sequence needs a real patch: on a GPU the LSTM runs cuDNN's
    kernel, which refuses other masks (Keras asserts it at run time). Padded
    patches are replaced by silence (the log-mel of a silent frame) before the
    CNN, are left out of BatchNorm's batch statistics in training, and the
    LSTM stops at the last real patch: the logits do not depend on what the
    padded patches contain. The logits are float32 also under a
    mixed-precision policy.
    """
    if n_classes < 1 or seq_len < 1 or not conv_filters:
        raise ValueError("n_classes and seq_len must be positive and conv_filters non-empty")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout={dropout} is not in [0, 1)")

    patches = keras.Input((seq_len, PATCH_FRAMES, MEL_BANDS), dtype="float32", name="patches")
    mask = keras.Input((seq_len,), dtype="bool", name="mask")
    # where() rather than a product, so NaN or inf in padding cannot leak through.
    x = keras.ops.where(mask[:, :, None, None], patches, VGGISH.silence)

    # The CNN is time-distributed by folding time into the batch, rather than
    # with keras.layers.TimeDistributed: that layer loops over the time steps in
    # Python, so BatchNorm would see seq_len small batches per step and update
    # its moving statistics seq_len times.
    encoder = _patch_encoder(conv_filters)
    features = encoder([keras.ops.reshape(x, (-1, PATCH_FRAMES, MEL_BANDS)), keras.ops.reshape(mask, (-1,))])
    features = keras.ops.reshape(features, (-1, seq_len, encoder.output.shape[-1]))

    x = layers.LSTM(lstm_units, name="lstm")(features, mask=mask)
    x = layers.Dense(dense_units, activation="relu", name="dense")(x)
    x = layers.Dropout(dropout, name="dropout")(x)
    # float32 logits under mixed precision: the loss and the export read them at full precision.
    outputs = layers.Dense(n_classes, name="logits", dtype="float32")(x)
    return keras.Model([patches, mask], outputs, name="convlstm_classifier")

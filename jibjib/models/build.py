"""The classifier a training run's settings describe."""

from __future__ import annotations

import keras

from jibjib.core.settings import ConvlstmSettings, RunSettings, VggishSettings
from jibjib.models.convlstm import convlstm_classifier
from jibjib.models.vggish import vggish_classifier


def build_model(run: RunSettings, n_classes: int) -> keras.Model:
    """The untrained classifier of `run` (VGGish or ConvLSTM) with `n_classes` logits."""
    net = run.net
    if isinstance(net, VggishSettings):
        return vggish_classifier(n_classes, head_units=net.head_units, multi_label=net.multi_label,
                                 checkpoint=net.checkpoint, trainable=net.trainable, dropout=net.dropout)
    if isinstance(net, ConvlstmSettings):
        return convlstm_classifier(n_classes, seq_len=net.seq_len, conv_filters=net.conv_filters,
                                   lstm_units=net.lstm_units, dense_units=net.dense_units, dropout=net.dropout)
    raise TypeError(f"no model is built from {type(net).__name__}")

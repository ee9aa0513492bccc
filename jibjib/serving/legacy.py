"""The old query service's contract (gojibjib/jibjib-query, app/code/resources/detect.py).

That client computes VGGish log-mel patches itself, sends them to TF Serving's
`serving_default` as input `inputs` (float32 (n, 96, 64)), reads output
`outputs` as (n, classes) from its float_val and shape, sums the squared rows
and maps the class index to a species through a pickled `train_id_list`. With
`export.legacy_serving` the SavedModel serves exactly that, and the waveform
signature keeps working under its own name, `waveform`.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import tensorflow as tf

from jibjib.core import fsutil

INPUT_KEY, OUTPUT_KEY = "inputs", "outputs"
# Protocol 2: the client's first deployments ran Python 2, whose pickle reads nothing newer.
PICKLE_PROTOCOL = 2


def legacy_function(module: Any) -> Any:
    """`inputs` (n, 96, 64) log-mel patches of one recording -> `outputs` (n, classes), one row per patch.

    `module` is the export's ExportModule. For VGGish a row is its patch's probabilities. The ConvLSTM
    scores sequences of seq_len patches (the last one padded and masked, as evaluation does), and each
    patch gets its sequence's row: the client's sum over rows then weighs every sequence by the patches
    it holds, and the shape stays what the client reads.
    """
    params = module.params
    classes = int(module.labels.shape[0])

    def serve(inputs: tf.Tensor) -> dict[str, tf.Tensor]:
        n = tf.shape(inputs)[0]
        unit_scores = module._probabilities(module._unit_logits(inputs[None]))[0]
        if module.seq_len is not None:
            unit_scores = tf.repeat(unit_scores, module.seq_len, axis=0)[:n]
        # A static class count, so the signature (and saved_model_cli) shows (-1, classes).
        return {OUTPUT_KEY: tf.ensure_shape(unit_scores, [None, classes])}

    return tf.function(serve, input_signature=[
        tf.TensorSpec([None, params.patch_frames, params.mel_bands], tf.float32, INPUT_KEY)])


def write_train_id_list(path: str | os.PathLike, classes: list[str]) -> Path:
    """The species names in class order as a plain pickled list: the client's `train_id_list[index]`."""
    path = Path(path)
    with fsutil.atomic_open(path, "wb") as f:
        pickle.dump([str(c) for c in classes], f, protocol=PICKLE_PROTOCOL)
    return path


def card_section(classes: int, seq_len: int | None) -> dict[str, Any]:
    """The model card's `serving` entry for a legacy export."""
    return {
        "serving_default": "legacy",
        "inputs": f"float32 (n, 96, 64) VGGish log-mel patches of one recording, key `{INPUT_KEY}`",
        "outputs": f"float32 (n, {classes}) per-patch probabilities, key `{OUTPUT_KEY}`"
                   + ("" if seq_len is None else f" (each patch carries the scores of its sequence of {seq_len})"),
        "class_names": "assets/train_id_list.pickle (a plain list, class order; pickle protocol 2)",
        "waveform_signature": "waveform",
    }

"""export.legacy_serving: the contract of gojibjib/jibjib-query, tested the way that client calls it.

No TF Serving binary installs here, so the client's PredictRequest is executed
against the loaded SavedModel's signature, as the server would: the request's
TensorProtos become arrays, the named signature runs, and its outputs go back
into a PredictResponse as float_val with their shape (TF Serving fills float_val,
and the client reads `float_val` and `tensor_shape.dim`).
"""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import REPO, TINY

predict_pb2 = pytest.importorskip("tensorflow_serving.apis.predict_pb2",
                                  reason="tensorflow-serving-api is a test dependency: run `make setup`")

MODELS = ["vggish", "convlstm"]


def serve(loaded, request) -> object:
    """What TF Serving does with a Predict call: run the named signature on the request's inputs."""
    import tensorflow as tf

    signature = loaded.signatures[request.model_spec.signature_name]
    inputs = {key: tf.constant(tf.make_ndarray(proto)) for key, proto in request.inputs.items()}
    response = predict_pb2.PredictResponse()
    response.model_spec.CopyFrom(request.model_spec)
    for key, value in signature(**inputs).items():
        array = value.numpy()
        proto = response.outputs[key]
        proto.dtype = tf.float32.as_datatype_enum
        for size in array.shape:
            proto.tensor_shape.dim.add(size=size)
        proto.float_val.extend(array.astype(np.float32).ravel().tolist())
    return response


def client_request(patches: np.ndarray):
    """jibjib-query's request (detect.py), with tf.make_tensor_proto for tf.contrib's make_tensor_proto."""
    import tensorflow as tf

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "jibjib"
    request.model_spec.signature_name = "serving_default"
    request.inputs["inputs"].CopyFrom(tf.make_tensor_proto(patches, dtype=tf.float32))
    return request


def split_test_patches(tiny_workflow: Path) -> list[np.ndarray]:
    from jibjib.training.examples import load_patches

    split = pd.read_csv(tiny_workflow / "results" / "split.tsv", sep="\t")
    return [load_patches(tiny_workflow / "results" / "features" / Path(p).with_suffix(".npz"))
            for p in split.loc[split["split"] == "test", "path"]]


@pytest.mark.parametrize("model", MODELS)
def test_predict_request_of_the_old_client(tiny_workflow: Path, serving_exports: dict[str, Path], model: str) -> None:
    import tensorflow as tf

    export = serving_exports[model]
    loaded = tf.saved_model.load(str(export))
    with open(export / "assets" / "train_id_list.pickle", "rb") as f:
        train_id_list = pickle.load(f)
    labels = (export / "assets" / "labels.txt").read_text().split()
    assert type(train_id_list) is list and train_id_list == labels
    bird_id_map = {label: 100 + i for i, label in enumerate(sorted(labels))}  # the app's database ids

    for patches in split_test_patches(tiny_workflow):
        response = serve(loaded, client_request(patches))
        # As detect.py reads it.
        pred = [x for x in response.outputs["outputs"].float_val]
        size_vector = int(response.outputs["outputs"].tensor_shape.dim[0].size)
        num_classes = int(response.outputs["outputs"].tensor_shape.dim[1].size)
        assert (size_vector, num_classes) == (len(patches), len(labels)) and len(pred) == size_vector * num_classes
        outputs = np.array(pred).reshape(size_vector, num_classes)
        assert np.allclose(outputs.sum(axis=1), 1.0, atol=1e-5)
        # Per patch, the scores the log_mel signature gives its patch (VGGish) or its sequence (ConvLSTM).
        units = loaded.signatures["log_mel"](patches=tf.constant(patches))["scores"].numpy()
        if model == "convlstm":
            units = np.repeat(units, TINY["convlstm"]["seq_len"], axis=0)[: len(patches)]
        assert np.abs(outputs - units).max() < 1e-5
        accumulated = (outputs ** 2).sum(axis=0)
        first_bird = int(np.argmax(accumulated))
        assert bird_id_map[train_id_list[first_bird]] == 100 + sorted(labels).index(labels[first_bird])


def test_waveform_signature_moves_to_its_name(tiny_workflow: Path, serving_exports: dict[str, Path]) -> None:
    """`jibjib predict` (which scores waveforms) still works on a legacy export, through `waveform`."""
    wav = next((tiny_workflow / "birds" / "Beta_two").glob("*.wav"))
    args = ["predict", "--model", str(serving_exports["convlstm"]), str(wav), "--top-k", "1"]
    legacy = subprocess.run([sys.executable, "-m", "jibjib", *args], capture_output=True, text=True, timeout=300,
                            env={"PYTHONPATH": str(REPO), "PATH": ""})
    default = subprocess.run([sys.executable, "-m", "jibjib", *args[:2], str(tiny_workflow / "results" / "export" /
                                                                         "convlstm" / "1"), *args[3:]],
                             capture_output=True, text=True, timeout=300,
                             env={"PYTHONPATH": str(REPO), "PATH": ""})
    assert legacy.returncode == 0 and default.returncode == 0, legacy.stderr + default.stderr
    assert legacy.stdout == default.stdout and legacy.stdout.count("\n") == 2


@pytest.mark.parametrize("model", MODELS)
def test_saved_model_cli_shows_the_legacy_names(serving_exports: dict[str, Path], model: str) -> None:
    cli = Path(sys.executable).parent / "saved_model_cli"
    shown = subprocess.run([str(cli), "show", "--all", "--dir", str(serving_exports[model])],
                           capture_output=True, text=True, timeout=300)
    assert shown.returncode == 0, shown.stderr[-2000:]
    sections = {block.split("]", 1)[0].strip("'"): block
                for block in shown.stdout.split("signature_def[")[1:]}
    default = sections["serving_default"]
    inputs, outputs = default.split("The given SavedModel SignatureDef contains the following output(s):")
    assert "inputs['inputs']" in inputs and "shape: (-1, 96, 64)" in inputs and "DT_FLOAT" in inputs
    assert "outputs['outputs']" in outputs and "shape: (-1, 3)" in outputs
    assert "inputs['waveform']" in sections["waveform"]

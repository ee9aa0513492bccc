"""The Keras models: VGGish trunk shape, official-checkpoint loading, freezing, training, masking."""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

from conftest import REPO_ENV  # noqa: E402
from jibjib.models.convlstm import convlstm_classifier
from jibjib.models.vggish import (
    TRUNK_LAYER_NAMES, VGGISH_PARAMS, VGGISH_VARIABLES, CheckpointError, load_vggish_checkpoint, vggish_classifier,
    vggish_trunk,
)

# The 18 tensors of Google's vggish_model.ckpt, written out independently of the module.
OFFICIAL_SHAPES = {
    "vggish/conv1/weights": (3, 3, 1, 64), "vggish/conv1/biases": (64,),
    "vggish/conv2/weights": (3, 3, 64, 128), "vggish/conv2/biases": (128,),
    "vggish/conv3/conv3_1/weights": (3, 3, 128, 256), "vggish/conv3/conv3_1/biases": (256,),
    "vggish/conv3/conv3_2/weights": (3, 3, 256, 256), "vggish/conv3/conv3_2/biases": (256,),
    "vggish/conv4/conv4_1/weights": (3, 3, 256, 512), "vggish/conv4/conv4_1/biases": (512,),
    "vggish/conv4/conv4_2/weights": (3, 3, 512, 512), "vggish/conv4/conv4_2/biases": (512,),
    "vggish/fc1/fc1_1/weights": (12288, 4096), "vggish/fc1/fc1_1/biases": (4096,),
    "vggish/fc1/fc1_2/weights": (4096, 4096), "vggish/fc1/fc1_2/biases": (4096,),
    "vggish/fc2/weights": (4096, 128), "vggish/fc2/biases": (128,),
}
SAVER_VERSIONS = {"v1": tf.compat.v1.train.SaverDef.V1, "v2": tf.compat.v1.train.SaverDef.V2}


def reference_vggish(x, w: dict):
    """TF1 VGGish forward pass (NHWC), written from the published architecture."""
    def conv(net, scope):
        net = tf.compat.v1.nn.conv2d(net, w[f"{scope}/weights"], strides=[1, 1, 1, 1], padding="SAME")
        return tf.nn.relu(net + w[f"{scope}/biases"])

    def pool(net):
        return tf.compat.v1.nn.max_pool(net, ksize=[1, 2, 2, 1], strides=[1, 2, 2, 1], padding="SAME")

    def fc(net, scope):
        return tf.matmul(net, w[f"{scope}/weights"]) + w[f"{scope}/biases"]

    net = tf.reshape(x, [-1, 96, 64, 1])
    net = pool(conv(net, "vggish/conv1"))
    net = pool(conv(net, "vggish/conv2"))
    net = pool(conv(conv(net, "vggish/conv3/conv3_1"), "vggish/conv3/conv3_2"))
    net = pool(conv(conv(net, "vggish/conv4/conv4_1"), "vggish/conv4/conv4_2"))
    net = tf.reshape(net, [-1, 6 * 4 * 512])
    net = tf.nn.relu(fc(net, "vggish/fc1/fc1_1"))
    net = tf.nn.relu(fc(net, "vggish/fc1/fc1_2"))
    return fc(net, "vggish/fc2")


def write_tf1_checkpoint(path: Path, values: dict[str, np.ndarray], version: str,
                         batch: np.ndarray | None = None) -> np.ndarray | None:
    """Save `values` as TF1 variables with tf.compat.v1.train.Saver; optionally run the reference graph."""
    graph = tf.Graph()
    with graph.as_default():
        # Placeholders as initial values keep the 290 MB of weights out of the GraphDef.
        feeds, variables = {}, {}
        for name, value in values.items():
            initial = tf.compat.v1.placeholder(tf.as_dtype(value.dtype), value.shape)
            variables[name] = tf.compat.v1.Variable(initial, name=name)
            feeds[initial] = value
        saver = tf.compat.v1.train.Saver(var_list=variables, write_version=SAVER_VERSIONS[version])
        if batch is not None:
            x = tf.compat.v1.placeholder(tf.float32, [None, 96, 64])
            embedding = reference_vggish(x, variables)
        with tf.compat.v1.Session(graph=graph) as session:
            session.run(tf.compat.v1.global_variables_initializer(), feed_dict=feeds)
            saver.save(session, str(path), write_meta_graph=False, write_state=False)
            return session.run(embedding, {x: batch}) if batch is not None else None


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    """Random VGGish weights saved in both layouts, a batch and the TF1 reference embeddings."""
    folder = tmp_path_factory.mktemp("vggish_ckpt")
    rng = np.random.default_rng(0)
    values = {}
    for name, shape in OFFICIAL_SHAPES.items():
        # He-scaled weights and non-zero biases keep the embedding O(1) and make
        # a misplaced bias visible.
        fan_in = int(np.prod(shape[:-1])) if name.endswith("weights") else 1
        scale = np.sqrt(2.0 / fan_in) if name.endswith("weights") else 0.1
        values[name] = (scale * rng.standard_normal(shape, dtype=np.float32)).astype(np.float32)
    extras = {"global_step": np.array(1234, np.int64),
              "vggish/fc2/weights/Adam": np.zeros((4096, 128), np.float32)}
    batch = rng.standard_normal((2, 96, 64), dtype=np.float32)
    paths = {"v1": folder / "vggish_model.ckpt", "v2": folder / "v2" / "model.ckpt-1"}
    paths["v2"].parent.mkdir()
    reference = None
    for version, path in paths.items():
        reference = write_tf1_checkpoint(path, {**values, **extras}, version, batch)
    assert np.abs(reference).max() > 0.1  # the comparisons below are not against ~0
    yield {"values": values, "batch": batch, "reference": reference, "paths": paths, "folder": folder}
    shutil.rmtree(folder)  # ~600 MB; pytest would keep it for three runs


@pytest.fixture
def scratch(tmp_path: Path):
    """tmp_path, emptied afterwards: the checkpoints written here are up to 290 MB each."""
    yield tmp_path
    shutil.rmtree(tmp_path, ignore_errors=True)


def assert_matches_reference(trunk: keras.Model, official: dict) -> None:
    got = trunk.predict(official["batch"], verbose=0)
    want = official["reference"]
    assert got.shape == want.shape == (2, 128)
    assert np.abs(got - want).max() < 1e-4 * max(1.0, np.abs(want).max())


def test_trunk_architecture() -> None:
    trunk = vggish_trunk()
    assert trunk.count_params() == VGGISH_PARAMS == 72_141_184
    assert trunk.input_shape == (None, 96, 64) and trunk.output_shape == (None, 128)
    assert len(trunk.weights) == 18
    assert {name: shape for name, (_, _, shape) in VGGISH_VARIABLES.items()} == OFFICIAL_SHAPES
    for name, (layer, attribute, shape) in VGGISH_VARIABLES.items():
        assert tuple(getattr(trunk.get_layer(layer), attribute).shape) == shape, name
    # The embedding has no activation (current upstream): fc2 can output negatives.
    assert trunk.get_layer("fc2").activation is keras.activations.linear
    assert trunk.get_layer("fc1_2").activation is keras.activations.relu


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_checkpoint_round_trip(official: dict, version: str) -> None:
    trunk = vggish_trunk()
    load_vggish_checkpoint(trunk, official["paths"][version])
    for name, (layer, attribute, _) in VGGISH_VARIABLES.items():
        np.testing.assert_array_equal(getattr(trunk.get_layer(layer), attribute).numpy(),
                                      official["values"][name], err_msg=name)
    assert_matches_reference(trunk, official)
    if version == "v2":  # the .index file name is accepted for its prefix
        load_vggish_checkpoint(trunk, str(official["paths"]["v2"]) + ".index")


def test_classifier_loads_checkpoint_under_mirrored_strategy(official: dict) -> None:
    strategy = tf.distribute.MirroredStrategy()
    with strategy.scope():
        model = vggish_classifier(2, checkpoint=official["paths"]["v1"], trainable="head")
        model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    assert_matches_reference(model.get_layer("vggish"), official)
    model.get_layer("vggish").get_layer("fc2").bias.assign(np.zeros(128, np.float32))
    load_vggish_checkpoint(model, official["paths"]["v2"])  # a classifier stands for its trunk
    assert_matches_reference(model.get_layer("vggish"), official)
    model.train_on_batch(official["batch"], np.array([0, 1]))
    assert model.predict(official["batch"], verbose=0).shape == (2, 2)


def test_missing_checkpoint(tmp_path: Path) -> None:
    trunk = vggish_trunk()
    with pytest.raises(CheckpointError, match=r"nothing_here\.ckpt: no such checkpoint"):
        load_vggish_checkpoint(trunk, tmp_path / "nothing_here.ckpt")
    assert issubclass(CheckpointError, ValueError)


def test_truncated_v1_checkpoint(official: dict, scratch: Path) -> None:
    source = official["paths"]["v1"]
    broken = scratch / "vggish_model.ckpt"
    with open(source, "rb") as full, open(broken, "wb") as half:
        half.write(full.read(source.stat().st_size // 2))
    with pytest.raises(CheckpointError, match=r"vggish_model\.ckpt: not a readable TF checkpoint"):
        load_vggish_checkpoint(vggish_trunk(), broken)


def test_truncated_v2_data_names_tensor_and_leaves_trunk_unchanged(official: dict, scratch: Path) -> None:
    source = official["paths"]["v2"]
    prefix = scratch / "model.ckpt-1"
    shutil.copy(f"{source}.index", f"{prefix}.index")
    data = Path(f"{source}.data-00000-of-00001")
    with open(data, "rb") as full, open(f"{prefix}.data-00000-of-00001", "wb") as half:
        half.write(full.read(data.stat().st_size // 2))  # cuts into fc1_1/weights, the largest tensor
    trunk = vggish_trunk()
    before = [w.numpy() for w in trunk.weights]
    with pytest.raises(CheckpointError, match=r"model\.ckpt-1: tensor vggish/fc1/fc1_1/weights cannot be read"):
        load_vggish_checkpoint(trunk, prefix)
    for old, new in zip(before, trunk.weights):
        np.testing.assert_array_equal(old, new.numpy())  # conv tensors read fine but were not assigned


@pytest.mark.parametrize("fault, message", [
    ("shape", r"bad\.ckpt: tensor vggish/fc2/weights has shape \[4096, 64\], expected \[4096, 128\]"),
    ("missing", r"bad\.ckpt: tensor vggish/fc1/fc1_2/biases is missing"),
    ("dtype", r"bad\.ckpt: tensor vggish/conv2/biases has dtype float64, expected float32"),
])
def test_bad_tensor(scratch: Path, fault: str, message: str) -> None:
    values = {name: np.zeros(shape, np.float32) for name, shape in OFFICIAL_SHAPES.items()}
    if fault == "shape":
        values["vggish/fc2/weights"] = np.zeros((4096, 64), np.float32)
    elif fault == "missing":
        del values["vggish/fc1/fc1_2/biases"]
    else:
        values["vggish/conv2/biases"] = np.zeros(128, np.float64)
    path = scratch / "bad.ckpt"
    write_tf1_checkpoint(path, values, "v2")
    with pytest.raises(CheckpointError, match=message):
        load_vggish_checkpoint(vggish_trunk(), path)


@pytest.mark.parametrize("trainable, first", [("all", 0), ("head", None), ("conv4_1", 4), ("fc1_1", 6)])
def test_trainable(trainable: str, first: int | None, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="jibjib.models"):
        model = vggish_classifier(3, trainable=trainable)
    assert "VGGish trunk starts from random weights: no vggish.checkpoint set" in caplog.text
    trunk = model.get_layer("vggish")
    trained = {w.path for w in model.trainable_weights}
    for index, name in enumerate(TRUNK_LAYER_NAMES):
        layer = trunk.get_layer(name)
        should_train = first is not None and index >= first
        assert all((w.path in trained) == should_train for w in layer.weights), name
    n_trunk = 0 if first is None else 2 * (len(TRUNK_LAYER_NAMES) - first)
    assert len(model.trainable_weights) == n_trunk + 4  # + head and logits kernels and biases
    assert model.output_shape == (None, 3)


def test_trainable_unknown_name() -> None:
    with pytest.raises(ValueError, match=r"'conv5'.*all, head, conv1, conv2, conv3_1.*fc2"):
        vggish_classifier(2, trainable="conv5")


def separable_patches(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Noise patches, shaped labels.shape + (96, 64): class 0 loud in the low mel bands, class 1 in the high."""
    x = rng.standard_normal((*labels.shape, 96, 64)).astype(np.float32)
    x[labels == 1, :, 40:] += 3.0
    x[labels == 0, :, :24] += 3.0
    return x


def test_vggish_classifier_trains() -> None:
    keras.utils.set_random_seed(1)
    y = np.arange(8) % 2
    x = separable_patches(y, np.random.default_rng(1))
    model = vggish_classifier(2, head_units=16, trainable="head", dropout=0.1)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    # A large step size: the random trunk's embeddings are small (~0.04).
    model.compile(optimizer=keras.optimizers.Adam(2e-2), loss=loss)
    before = float(loss(y, model(x, training=False)))
    for _ in range(10):
        model.train_on_batch(x, y)
    after = float(loss(y, model(x, training=False)))
    assert after < 0.6 * before, (before, after)


def tiny_convlstm(**kwargs) -> keras.Model:
    return convlstm_classifier(2, seq_len=4, conv_filters=(4, 8), lstm_units=8, dense_units=8, **kwargs)


def test_a_saved_model_loads_compiled_with_its_loss_after_importing_the_loader(tmp_path: Path) -> None:
    """model.keras names the training loss and metrics: a fresh process that imports
    jibjib.models.loading, and no training module, loads it compiled."""
    from jibjib.models.losses import ClassWeightedCrossentropy
    from jibjib.models.metrics import ClassAveragePrecision, SpeciesAccuracy

    model = tiny_convlstm()
    model.compile(optimizer="adam", loss=ClassWeightedCrossentropy([0.5, 2.0], multi_label=True),
                  metrics=[SpeciesAccuracy(True), ClassAveragePrecision([True, False], multi_label=True)])
    model.save(tmp_path / "model.keras")
    script = ("import sys, keras, jibjib.models.loading\n"
              "model = keras.models.load_model(sys.argv[1])\n"
              "assert not [name for name in sys.modules if name.startswith('jibjib.training')]\n"
              "x = {'patches': keras.ops.zeros((2, 4, 96, 64)), 'mask': keras.ops.ones((2, 4), 'bool')}\n"
              "logs = model.evaluate(x, keras.ops.eye(2), verbose=0, return_dict=True)\n"
              "assert sorted(logs) == ['accuracy', 'cmap', 'loss'], logs\n"
              "print(type(model.loss).__name__, model.loss.class_weights, model.loss.multi_label)\n")
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path / "model.keras")], capture_output=True,
                            text=True, env=REPO_ENV, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines()[-1] == "ClassWeightedCrossentropy [0.5, 2.0] True"


def test_convlstm_shapes_and_size() -> None:
    model = convlstm_classifier(5)
    assert model.output_shape == (None, 5)
    assert [tuple(i.shape) for i in model.inputs] == [(None, 3, 96, 64), (None, 3)]  # convlstm.seq_len: 3
    # Small enough for CPU training; the LSTM sees each patch as 8 mel positions x 128 filters.
    assert 300_000 < model.count_params() < 1_000_000
    assert model.get_layer("patch_encoder").output.shape[-1] == 8 * 128
    # 2-D convolutions over time x mel with one input channel, not mel bands as channels.
    assert tuple(model.get_layer("patch_encoder").get_layer("conv1").kernel.shape) == (3, 3, 1, 32)
    x = np.zeros((2, 3, 96, 64), np.float32)
    assert model.predict({"patches": x, "mask": np.ones((2, 3), bool)}, verbose=0).shape == (2, 5)


def test_convlstm_trains() -> None:
    keras.utils.set_random_seed(2)
    y = np.arange(8) % 2
    x = separable_patches(np.repeat(y[:, None], 4, axis=1), np.random.default_rng(2))
    mask = np.ones((8, 4), bool)
    mask[::2, 3] = False
    model = tiny_convlstm(dropout=0.0)
    model.compile(optimizer=keras.optimizers.Adam(1e-2),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    losses = [float(model.train_on_batch({"patches": x, "mask": mask}, y)) for _ in range(20)]
    assert np.mean(losses[-3:]) < 0.6 * losses[0], losses


@pytest.mark.parametrize("training", [False, True])
def test_convlstm_ignores_padded_patches(training: bool) -> None:
    keras.utils.set_random_seed(3)
    model = tiny_convlstm(dropout=0.0)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 4, 96, 64)).astype(np.float32)
    mask = np.array([[True, True, False, False], [True, False, False, False]])  # right-padded, as cuDNN needs
    outputs = []
    for fill in (0.0, 1e6, np.nan, None):
        padded = x.copy()
        padded[~mask] = rng.standard_normal((int((~mask).sum()), 96, 64)) if fill is None else fill
        outputs.append(keras.ops.convert_to_numpy(model([padded, mask], training=training)))
    assert np.isfinite(outputs[0]).all()
    for other in outputs[1:]:
        np.testing.assert_array_equal(outputs[0], other)
    # ...while the real patches do matter.
    changed = x.copy()
    changed[0, 1] += 1.0
    assert not np.array_equal(keras.ops.convert_to_numpy(model([changed, mask], training=training)), outputs[0])


def test_convlstm_under_mirrored_strategy() -> None:
    with tf.distribute.MirroredStrategy().scope():
        model = tiny_convlstm()
        model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x = np.zeros((4, 4, 96, 64), np.float32)
    model.fit({"patches": x, "mask": np.ones((4, 4), bool)}, np.array([0, 1, 0, 1]), epochs=1, verbose=0)


def test_convlstm_batchnorm_statistics_leave_padding_out() -> None:
    """In training BatchNorm normalises with the batch's statistics: those of the real patches only, however
    many padded patches the batch holds (they are silence, but still not data)."""
    keras.utils.set_random_seed(4)
    padded_model = tiny_convlstm(dropout=0.0)
    whole_model = tiny_convlstm(dropout=0.0)
    whole_model.set_weights(padded_model.get_weights())
    rng = np.random.default_rng(4)
    p = rng.normal(-1.0, 2.0, (3, 96, 64)).astype(np.float32)
    silence = np.full((96, 64), np.log(0.01), np.float32)
    padded = np.stack([[p[0], p[1], silence, silence], [p[2], silence, silence, silence]])
    whole = np.stack([[p[0], p[1], p[2], p[2]]])
    padded_model([padded, np.array([[1, 1, 0, 0], [1, 0, 0, 0]], bool)], training=True)
    whole_model([whole, np.array([[1, 1, 1, 0]], bool)], training=True)
    for name in ("bn1", "bn2"):
        a, b = (m.get_layer("patch_encoder").get_layer(name) for m in (padded_model, whole_model))
        np.testing.assert_allclose(a.moving_mean.numpy(), b.moving_mean.numpy(), rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(a.moving_variance.numpy(), b.moving_variance.numpy(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("model_name", ["vggish", "convlstm"])
def test_both_models_train_in_mixed_precision_with_float32_logits(model_name: str) -> None:
    """Under mixed_float16 (what train.mixed_precision sets on a GPU; numerics checked here on the CPU): the
    logits are float32, and outputs, loss and gradients finite."""
    from jibjib.models.losses import ClassWeightedCrossentropy

    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        keras.utils.set_random_seed(5)
        rng = np.random.default_rng(5)
        y = np.eye(2, dtype=np.float32)[np.arange(4) % 2]
        if model_name == "vggish":  # two patches: float16 on a CPU is slow, and VGGish is large
            model = vggish_classifier(2, head_units=8, trainable="head", dropout=0.0)
            x, y = separable_patches(np.arange(2), rng) - 3.0, y[:2]
        else:
            model = tiny_convlstm(dropout=0.0)
            x = {"patches": separable_patches(np.repeat((np.arange(4) % 2)[:, None], 4, axis=1), rng) - 3.0,
                 "mask": np.array([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 0]], bool)}
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=ClassWeightedCrossentropy([1.0, 1.0]))
        logits = model(x, training=False)
        assert logits.dtype == "float32" and np.isfinite(keras.ops.convert_to_numpy(logits)).all()
        assert model.get_layer("logits").dtype_policy.name == "float32"
        losses = [float(model.train_on_batch(x, y)) for _ in range(2)]
        assert np.isfinite(losses).all(), losses
        assert all(np.isfinite(w).all() for w in model.get_weights())
    finally:
        keras.mixed_precision.set_global_policy("float32")

"""The frozen part of a VGGish trunk and what follows it: the two halves the embedding cache splits a classifier in.

The trunk is a linear chain (jibjib.models.vggish.vggish_trunk), so its frozen part
is the sub-model from the log-mel to the cut layer's output, and the rest is
the layers after it. The head model built here reuses the classifier's own
layer objects: training it trains the classifier's weights, and the shipped
model.keras is the whole classifier as ever.
"""

from __future__ import annotations

import hashlib
import os

import keras

from jibjib.models.vggish import load_vggish_checkpoint, vggish_trunk


def trunk_of(classifier: keras.Model) -> keras.Model:
    """The VGGish trunk inside a vggish_classifier."""
    return classifier.get_layer("vggish")


def _chain(trunk: keras.Model) -> list[keras.layers.Layer]:
    """The trunk's layers after its input, in order."""
    return [layer for layer in trunk.layers if not isinstance(layer, keras.layers.InputLayer)]


def _split_at(trunk: keras.Model, cut: str) -> int:
    """How many chain layers the frozen part has: `cut` and the weightless layers after it (pool, flatten),
    so the cached output is what the first trainable layer takes in."""
    chain = _chain(trunk)
    end = [layer.name for layer in chain].index(cut) + 1
    while end < len(chain) and not chain[end].weights:
        end += 1
    return end


def frozen_part(trunk: keras.Model, cut: str) -> keras.Model:
    """(batch, 96, 64) log-mel -> (batch, floats): the trunk up to `cut` and the pool or flatten after it,
    flattened per patch."""
    output = _chain(trunk)[_split_at(trunk, cut) - 1].output
    if len(output.shape) > 2:
        output = keras.layers.Flatten()(output)
    return keras.Model(trunk.input, output, name=f"vggish_to_{cut}")


def frozen_weights_digest(trunk: keras.Model, cut: str) -> str:
    """SHA-256 over the weights of every trunk layer up to and including `cut`.

    What the cache was computed with, whatever decided it (the checkpoint's
    content, or the seed of a random trunk): training compares it with its
    own trunk before it trusts the cache.
    """
    digest = hashlib.sha256(cut.encode())
    for layer in _chain(trunk):
        for weight in layer.weights:
            value = keras.ops.convert_to_numpy(weight.value)
            digest.update(f"{layer.name}/{weight.name}:{value.dtype.str}:{value.shape}".encode())
            digest.update(value.tobytes())
        if layer.name == cut:
            return digest.hexdigest()
    raise ValueError(f"{cut!r} is not a layer of the trunk")


def head_model(classifier: keras.Model, cut: str) -> keras.Model:
    """The classifier after `cut`: cached output -> remaining trunk layers -> head -> [dropout] -> logits.

    The same layer objects as in `classifier`, so their weights are shared.
    """
    trunk = trunk_of(classifier)
    chain = _chain(trunk)
    end = _split_at(trunk, cut)
    rest = chain[end:]
    inputs = keras.Input(tuple(chain[end - 1].output.shape[1:]), dtype="float32", name=f"{cut}_output")
    x = inputs
    for layer in rest:
        x = layer(x)
    for name in ("head", "dropout", "logits"):
        if any(layer.name == name for layer in classifier.layers):
            x = classifier.get_layer(name)(x)
    return keras.Model(inputs, x, name=f"vggish_after_{cut}")


def seeded_trunk(checkpoint: str | os.PathLike | None, seed: int) -> keras.Model:
    """The trunk a training run with this checkpoint and train.seed starts from.

    train() seeds Keras with train.seed and builds the classifier, whose trunk
    is built first: seeding the same way and building the trunk alone draws
    the same random weights when there is no checkpoint.
    """
    keras.utils.set_random_seed(int(seed))
    trunk = vggish_trunk()
    if checkpoint:
        load_vggish_checkpoint(trunk, checkpoint)
    return trunk

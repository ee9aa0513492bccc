"""The model that trains: the classifier, with the augmentation of its training batches in its train step.

The CPU side of the input only gathers raw examples
(jibjib.training.inputs.gathered_batches); `AugmentingTrainer` augments
each batch inside the training step (jibjib.training.augment.augment_gathered:
background mix, distance, gain, masks, mixup), so the augmentation is part of
the step's computation on whatever device trains, compiled with it by XLA
when `train.jit_compile` is on. Under a distribution strategy each replica
augments its own share of the batch, drawing from its own examples' seeds.
Evaluation, prediction and the saved model see the classifier alone: the
trainer is never saved (model.keras is the classifier), so neither
model.keras nor the export contains the augmentation.

`compile_options` turns `train.jit_compile` and `train.steps_per_execution`
into what Keras's compile takes, for the devices this process has.
"""

from __future__ import annotations

from typing import Any

import keras

from jibjib.core.params import FrontEnd
from jibjib.core.settings import AugmentSettings, TrainSettings
from jibjib.training.augment import augment_gathered
from jibjib.training.inputs.batches import model_inputs

# steps_per_execution "auto": steps Keras runs per call into the compiled function where a GPU trains (one
# host round trip per this many batches); on a CPU the host is the device and 1 loses nothing.
GPU_STEPS_PER_EXECUTION = 16


class AugmentingTrainer(keras.Model):
    """`classifier` as it trains: fed gathered batches, it augments them in `train_step` only.

    `call` takes a gathered batch (jibjib.training.inputs.batches), makes it
    model inputs (float32, padding silence) and runs the classifier:
    validation batches pass unchanged. The weights are the classifier's.
    """

    def __init__(self, classifier: keras.Model, augmentation: AugmentSettings, frontend: FrontEnd,
                 seq_len: int | None) -> None:
        super().__init__(name="trainer")
        self.classifier = classifier
        self.augmentation, self.frontend, self.seq_len = augmentation, frontend, seq_len
        self.built = True  # every weight is the classifier's, which is built

    def call(self, batch: dict, training: bool = False) -> Any:
        return self.classifier(model_inputs(batch, self.seq_len, self.frontend), training=training)

    def train_step(self, data: Any) -> Any:
        batch, target = data
        batch, target = augment_gathered(batch, target, self.augmentation, self.frontend)
        return super().train_step(_with_weight(batch, target))

    def test_step(self, data: Any) -> Any:
        return super().test_step(_with_weight(*data))


def _with_weight(batch: dict, target: Any) -> tuple:
    """(batch, target) or, where the batch carries loss weights (weak negatives), (batch, target, weight)."""
    if "weight" not in batch:
        return batch, target
    batch = dict(batch)
    return batch, target, batch.pop("weight")


def compile_options(train: TrainSettings, gpus: int) -> dict[str, Any]:
    """Keras compile's jit_compile and steps_per_execution for `train` on a machine with `gpus` GPUs.

    jit_compile "auto": XLA on a GPU, off on a CPU (where it measured slower).
    Keras's own "auto" turns XLA off whenever a distribution strategy is in
    scope, and training always runs in one, so the choice is made here. A
    model with a layer XLA cannot compile (the ConvLSTM's LSTM on a GPU runs
    cuDNN's kernel) trains without it: Keras turns it off for that model.
    steps_per_execution "auto": GPU_STEPS_PER_EXECUTION on a GPU, else 1.
    """
    jit = train.jit_compile
    steps = train.steps_per_execution
    return {"jit_compile": gpus > 0 if jit == "auto" else bool(jit),
            "steps_per_execution": (GPU_STEPS_PER_EXECUTION if gpus else 1) if steps == "auto" else int(steps)}

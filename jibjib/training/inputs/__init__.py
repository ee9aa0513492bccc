"""The training input: tf.data batches of a split's examples, from npz files, packed features or cached embeddings.

- `spec`: InputSpec, what the input cuts, targets and augments.
- `pipeline`: `gathered_batches`, the per-file (`npz`) or `packed` examples, gathered in the
  `order` drawn from the run's seed, for the training step to augment (jibjib.training.trainer);
  `training_dataset`, the same augmented on the CPU.
- `cached`: the batches of a frozen trunk's cached outputs (the embedding cache).
"""

from jibjib.training.inputs.order import InputShare
from jibjib.training.inputs.pipeline import gathered_batches, training_dataset
from jibjib.training.inputs.spec import InputSpec

__all__ = ["InputShare", "InputSpec", "gathered_batches", "training_dataset"]

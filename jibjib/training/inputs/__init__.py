"""The training input: tf.data batches of a split's examples, from npz files, packed features or cached embeddings.

- `spec`: InputSpec, what the input cuts, targets and augments.
- `pipeline`: `training_dataset`, the per-file (`npz`) or `packed` batches through the shared
  transforms of `batches`, in the `order` drawn from the run's seed.
- `cached`: the batches of a frozen trunk's cached outputs (the embedding cache).
"""

from jibjib.training.inputs.pipeline import training_dataset
from jibjib.training.inputs.spec import InputSpec

__all__ = ["InputSpec", "training_dataset"]

"""The training stage: one model trained on the features of a split.

- `run`: `train`, the run from start to end.
- `data`, `plan`: what a run trains on, and how its input feeds the model.
- `examples`: the examples a file gives, counted and cut (no TensorFlow).
- `inputs/`: the tf.data input (per-file, packed or cached embeddings), which gathers examples on the CPU;
  `augment`: the augmentation ops; `trainer`: the model that trains, augmenting in its train step.
- `schedule`: the learning rate; `state`: the saved state and what a resume must share;
  `callbacks`: the epoch log; `distribute`: the tf.distribute strategy; `report`: train.json.
"""

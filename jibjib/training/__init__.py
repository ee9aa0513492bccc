"""Training: input pipeline, augmentation and the training run."""

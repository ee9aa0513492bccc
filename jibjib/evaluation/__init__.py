"""A trained model on the test split: metrics, calibration, per-class thresholds fitted on val, figures
and the markdown report (`jibjib evaluate`)."""

"""Audio files -> VGGish log-mel features: decoding, resampling, the front end, per-file npz, the QC
rows that account for every file, and the content signatures that decide what is stale."""

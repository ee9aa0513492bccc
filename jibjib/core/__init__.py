"""Shared by every stage: typed settings (from the config schema), front-end parameters, errors, atomic file
writing, TensorFlow's log routing and the versions that produced a result."""

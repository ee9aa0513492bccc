"""What produced a result: recorded in train.json and in the export's model card."""

from __future__ import annotations

import platform


def software_versions() -> dict[str, str]:
    """jibjib's, TensorFlow's, Keras's, NumPy's and Python's versions (imports TensorFlow)."""
    import keras
    import numpy as np
    import tensorflow as tf

    from jibjib import __version__

    return {"jibjib": __version__, "tensorflow": tf.__version__, "keras": keras.__version__,
            "numpy": np.__version__, "python": platform.python_version()}

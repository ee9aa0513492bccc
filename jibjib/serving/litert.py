"""A TFLite file run through LiteRT (ai-edge-litert), without TensorFlow: what `jibjib analyze --engine tflite` runs.

Importing this module loads neither TensorFlow nor LiteRT; LiteRT loads when a
model is opened, which takes well under a second where TensorFlow takes about
five. LiteRT's default XNNPACK delegate runs the float and dynamic-range int8
kernels on the CPU.
"""

from __future__ import annotations

import os

import numpy as np

from jibjib.core.errors import ExportError


class LiteRTModel:
    """One TFLite file with one float32 input and one float32 output; the input's first axis may be resized.

    `threads`: LiteRT's threads (XNNPACK's pool) for each call; 0 for all of the machine's.
    """

    def __init__(self, path: str | os.PathLike, threads: int = 0) -> None:
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as exc:
            raise ExportError(f"LiteRT is not installed ({exc}): pip install ai-edge-litert==2.3.0") from None
        self.path = str(path)
        self._interpreter = Interpreter(model_path=self.path, num_threads=threads or (os.cpu_count() or 1))
        self._interpreter.allocate_tensors()
        [source], [target] = self._interpreter.get_input_details(), self._interpreter.get_output_details()
        self._source, self._target = source["index"], target["index"]
        self.input_shape = tuple(int(n) for n in source["shape"])
        self.batch = self.input_shape[0]

    def __call__(self, inputs: np.ndarray) -> np.ndarray:
        """Outputs for inputs of the model's input shape, except the first axis (resized when it changes)."""
        inputs = np.ascontiguousarray(inputs, np.float32)
        if inputs.shape[0] != self.batch:
            # Only the last, smaller batch of a file changes the size: XNNPACK plans again, once.
            self._interpreter.resize_tensor_input(self._source, [inputs.shape[0], *self.input_shape[1:]])
            self._interpreter.allocate_tensors()
            self.batch = inputs.shape[0]
        self._interpreter.set_tensor(self._source, inputs)
        self._interpreter.invoke()
        return self._interpreter.get_tensor(self._target).copy()

"""The networks and what surrounds them: the models stage.

- `checkpoint`: where a VGGish checkpoint is and whether it is one (no TensorFlow: read at parse time).
- `vggish`: the VGGish trunk and classifier, and the official checkpoint loaded into them.
- `convlstm`: the ConvLSTM over patch sequences.
- `losses`: the class-weighted training loss (registered with keras.saving).
- `build`: the classifier a run's settings describe.
- `loading`: model.keras loaded for inference, in float32.

This file imports nothing: the workflow imports `checkpoint` at parse time without TensorFlow.
"""

"""Other ways to serve an export: TFLite files for phones (`tflite`) and the old query service's contract (`legacy`)."""

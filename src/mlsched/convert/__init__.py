"""mlsched-convert: SavedModel -> int8 TFLite + decision table bundle (build time, TensorFlow)."""

"""TensorFlow for the convert tests, imported on first use rather than at collection: once
loaded it breaks tflite_runtime in the same process, so those modules run after the
runtime tests (tests/conftest.py orders them)."""

from __future__ import annotations


class LazyTensorFlow:
    def __getattr__(self, name):
        if name.startswith("_"):  # collection probes attributes (_mock_name, ...)
            raise AttributeError(name)
        import tensorflow

        return getattr(tensorflow, name)


tf = LazyTensorFlow()

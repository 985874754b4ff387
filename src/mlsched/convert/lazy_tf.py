"""TensorFlow, imported on first use: the converter's commands start without it, the runtime never loads it."""

from __future__ import annotations

import logging
import os


def tensorflow():
    """The ``tensorflow`` module, quiet (its C++ logging off) and with reproducible float sums."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    import tensorflow as tf

    tf.get_logger().setLevel(logging.ERROR)
    return tf

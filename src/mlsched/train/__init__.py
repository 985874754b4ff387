"""mlsched-train: records of the kernel's questions -> a migration model (build time, TensorFlow).

``records`` reads what the collector (``mlsched-lite run --record``) and the scheduler's
exploration (``scx_mlsched --explore-out``) wrote; ``learn`` labels and trains on them and
writes a SavedModel that ``mlsched-convert`` turns into a bundle; ``teacher`` and ``train``
make the default model from its documented rule.
"""

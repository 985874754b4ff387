"""mlsched: machine-learned task-migration decisions for the scheduler path.

``mlsched.convert`` (build time, TensorFlow) turns a SavedModel into a bundle;
``mlsched.runtime`` (run time, no TensorFlow) answers from it.
"""

__version__ = "0.1.0"

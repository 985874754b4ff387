"""mlsched-lite runtime: bundle reader, decision engine, kernel path. Never imports TensorFlow.

Library use::

    from mlsched.runtime import MLScheduler, MigrationFeatures
    MLScheduler().should_migrate(MigrationFeatures(cpu=4, cpu_idle=2, cpu_not_idle=6,
                                                   src_dom_load=0.9, dst_dom_load=0.2))
"""

from .api import MigrationFeatures, MLScheduler
from .bundle import Bundle, BundleError, default_bundle_path
from .engine import BatchResult, Counters, Decision, Engine, EngineError
from .interp import BackendError

__all__ = [
    "BackendError",
    "BatchResult",
    "Bundle",
    "BundleError",
    "Counters",
    "Decision",
    "Engine",
    "EngineError",
    "MLScheduler",
    "MigrationFeatures",
    "default_bundle_path",
]

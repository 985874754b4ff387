"""The library API: ``MLScheduler(...).should_migrate(MigrationFeatures(...))``.

::

    from mlsched.runtime import MLScheduler, MigrationFeatures
    s = MLScheduler()                      # the shipped default bundle; or MLScheduler("bundle/")
    s.should_migrate(MigrationFeatures(cpu=4, cpu_idle=2, cpu_not_idle=6,
                                       src_dom_load=0.9, dst_dom_load=0.2))    # -> True
    s.should_migrate_batch(features)       # [n, 5] or [n, 10] raw features -> bool [n]
    s.stats                                # Counters: requests, hits, misses, invalid, ...
    s.reads                                # the features the bundle's model reads, in its order

A thin layer over ``Engine`` (engine.py): the bundle is loaded and checked once,
then every call is a table lookup or, on a miss, one interpreter call. A request
always carries the five features; the engine feeds the model the ones its bundle's
manifest maps to its inputs (``features.InputMap``). Feature
values are never an error: NaN/±inf or negative counts answer False (STAY) and
count as ``invalid``; loads outside [0, 1] are clamped.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import astuple, dataclass

import numpy as np

from .bundle import load_bundle
from .engine import BatchResult, Counters, Decision, Engine
from .wire import MIGRATE


@dataclass(frozen=True)
class MigrationFeatures:
    """The five features of one migration request (raw: CPU counts and loads in [0, 1])."""

    cpu: int
    cpu_idle: int
    cpu_not_idle: int
    src_dom_load: float
    dst_dom_load: float

    def as_row(self) -> tuple:
        return astuple(self)


class MLScheduler:
    """Migration decisions from an mlsched bundle: table first, int8 interpreter on misses."""

    def __init__(self, bundle_path: str | os.PathLike | None = None, backend: str = "auto",
                 ncpus: int | None = None, allow_insecure_bundle: bool = False):
        self.bundle = load_bundle(bundle_path, allow_insecure=allow_insecure_bundle)
        self.engine = Engine(self.bundle, ncpus=ncpus, backend=backend)

    @property
    def stats(self) -> Counters:
        """A snapshot of the counters (requests, hits and the part of them table level 2
        answered, misses, interpreter rows, invalid, clamped)."""
        return self.engine.counters.snapshot()

    @property
    def backend(self) -> str:
        return self.engine.backend

    @property
    def reads(self) -> tuple[str, ...]:
        """The features the bundle's model reads, in the order of its inputs."""
        return self.bundle.inputs.reads

    def decide(self, features: MigrationFeatures, probability: bool = False) -> Decision:
        """The full answer for one request: decision, source, optionally the model probability."""
        return self.engine.decide_one(*_row(features), probability=probability)

    def should_migrate(self, features: MigrationFeatures) -> bool:
        """True to migrate the task, False to leave it (also for invalid features)."""
        return self.decide(features).decision == MIGRATE

    def decide_batch(self, features, probabilities: bool = False) -> BatchResult:
        """Per-row decisions and sources for [n, 5] / [n, 10] raw features or MigrationFeatures."""
        return self.engine.decide(_matrix(features), probabilities=probabilities)

    def should_migrate_batch(self, features) -> np.ndarray:
        """bool [n]: True where the task should migrate."""
        return self.decide_batch(features).decisions == MIGRATE


def _row(features) -> tuple:
    if isinstance(features, MigrationFeatures):
        return features.as_row()
    row = tuple(features)
    if len(row) != 5:
        raise ValueError(f"expected MigrationFeatures or 5 values, got {len(row)}")
    return row


def _matrix(features):
    if isinstance(features, np.ndarray):
        return features
    if isinstance(features, Iterable) and not isinstance(features, (str, bytes)):
        rows = list(features)
        if not rows:
            return np.zeros((0, 5))
        if isinstance(rows[0], MigrationFeatures):
            return [_row(r) for r in rows]
        return rows
    raise ValueError("features must be an array [n, 5] or [n, 10] or a list of MigrationFeatures")

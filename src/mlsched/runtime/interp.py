"""TFLite interpreter shim: the miss path of the request -> decision flow.

Table misses (UNSURE cells, keys outside the table geometry) end here, batched:
one ``invoke`` per batch, never one per row. Either interpreter package serves:
``ai_edge_litert`` (LiteRT) or ``tflite_runtime``; ``auto`` takes LiteRT when it
is installed. TensorFlow itself is never imported.

The bundle's model is full-int8: the input tensor takes normalized features
(its own columns, ``Model.width``, as the manifest's feature mapping names them) quantized with the
model's own (scale, zero point), the output is an int8 probability. Quantization
of the input happens here, in numpy, so every caller (the table builder, the
engine, the tests) feeds the interpreter identically.

Interpreters are allocated once per batch-size bucket (``BUCKETS``) and reused;
a batch is cut into bucket-sized chunks, the last one zero-padded, so a call
never resizes or reallocates tensors.

Both backends run TFLite's builtin int8 kernels, without the default XNNPACK
delegate (``OP_RESOLVER``): XNNPACK requantizes with float scales where the builtin
kernels use fixed-point multipliers, and on a steep model that moves decisions
near the boundary between LiteRT (XNNPACK on by default) and tflite-runtime
(builtin kernels). Builtin kernels make the two backends agree bit for bit.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from .features import FEATURE_WIDTH, MAX_INPUTS, THRESHOLD

log = logging.getLogger(__name__)

BACKENDS = {"litert": "ai_edge_litert.interpreter", "tflite-runtime": "tflite_runtime.interpreter"}
#: Batch sizes an interpreter is allocated for (powers of 4 up to the daemon's batch of 4096).
#: A chunk runs in the smallest bucket that holds it when at least half of that bucket is
#: used, else in the largest bucket it fills: padding never doubles the work.
BUCKETS = (1, 4, 16, 64, 256, 1024, 4096)
#: Kernel set both backends use (see the module doc): builtin kernels, no default delegates.
OP_RESOLVER = "BUILTIN_WITHOUT_DEFAULT_DELEGATES"


@contextlib.contextmanager
def quiet_stderr(keep: bool = False):
    """Silence what native code (TFLite's delegate banner, TensorFlow's C++ logging) writes to fd 2."""
    if keep:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


class BackendError(RuntimeError):
    """No usable TFLite interpreter package."""


def available_backends() -> list[str]:
    found = []
    for name, module in BACKENDS.items():
        try:
            importlib.import_module(module)
        except ImportError:
            continue
        found.append(name)
    return found


def load_backend(backend: str = "auto"):
    """Return (name, Interpreter class) for ``auto``, ``litert`` or ``tflite-runtime``."""
    names = list(BACKENDS) if backend == "auto" else [backend]
    if backend != "auto" and backend not in BACKENDS:
        raise BackendError(f"unknown backend {backend!r}: use auto, litert or tflite-runtime")
    errors = []
    for name in names:
        try:
            module = importlib.import_module(BACKENDS[name])
        except ImportError as e:
            errors.append(f"{name}: {e}")
            continue
        return name, module.Interpreter
    pkg = {"litert": "ai-edge-litert", "tflite-runtime": "tflite-runtime"}
    want = " or ".join(pkg[n] for n in names)
    raise BackendError(f"no TFLite interpreter available ({'; '.join(errors)}): pip install {want}")


def pick_bucket(rows: int) -> int:
    """The interpreter bucket for the next chunk of ``rows`` rows (see BUCKETS)."""
    for b in BUCKETS:
        if b >= rows:
            return b if 2 * rows >= b else max(c for c in BUCKETS if c <= rows)
    return BUCKETS[-1]


class Model:
    """An int8 TFLite migration model: normalized float features in, probabilities out."""

    def __init__(self, model: str | Path | bytes, backend: str = "auto", threads: int = 1,
                 width: int | None = None):
        """``width``: the input width the caller will feed (the manifest's); None takes the model's."""
        self.backend, self._cls = load_backend(backend)
        self._resolver = getattr(sys.modules[self._cls.__module__], "OpResolverType", None)
        self._content = model if isinstance(model, bytes) else Path(model).read_bytes()
        self._threads = threads
        self._interps: dict[int, tuple] = {}
        self.width = FEATURE_WIDTH
        probe = self._interpreter(1, resize=False)[0]
        inp, out = probe.get_input_details()[0], probe.get_output_details()[0]
        shape = [int(v) for v in inp["shape"]]
        if len(shape) != 2 or not 1 <= shape[1] <= MAX_INPUTS or list(out["shape"][1:]) != [1]:
            raise ValueError(f"model takes {shape} -> {list(out['shape'])}, expected"
                             f" [n, 1..{MAX_INPUTS}] -> [n, 1]")
        if width is not None and shape[1] != width:
            raise ValueError(f"model takes {shape[1]} features, the manifest says {width}")
        self.width = shape[1]
        if shape[0] != 1:        # the probe was not allocated at bucket 1's shape
            self._interps.clear()
        self.input_dtype = np.dtype(inp["dtype"])
        self.output_dtype = np.dtype(out["dtype"])
        self.in_scale, self.in_zero = inp["quantization"]
        self.out_scale, self.out_zero = out["quantization"]
        self.quantized = self.input_dtype == np.int8
        if self.quantized:
            info = np.iinfo(self.input_dtype)
            self._qmin, self._qmax = info.min, info.max

    def clone(self) -> Model:
        """Another Model over the same bytes and backend, with its own interpreters (for
        another thread)."""
        return Model(self._content, backend=self.backend, threads=self._threads,
                     width=self.width)

    def _interpreter(self, bucket: int, resize: bool = True):
        entry = self._interps.get(bucket)
        if entry is None:
            with quiet_stderr(keep=log.isEnabledFor(logging.DEBUG)):
                kw = {}
                if self._resolver is not None:
                    kw["experimental_op_resolver_type"] = getattr(self._resolver, OP_RESOLVER)
                it = self._cls(model_content=self._content, num_threads=self._threads, **kw)
                idx_in = it.get_input_details()[0]["index"]
                idx_out = it.get_output_details()[0]["index"]
                if resize:
                    it.resize_tensor_input(idx_in, [bucket, self.width])
                it.allocate_tensors()
            entry = (it, idx_in, idx_out)
            self._interps[bucket] = entry
        return entry

    def quantize_input(self, u: np.ndarray) -> np.ndarray:
        """Normalized features -> the input tensor's dtype (int8: round half to even, saturate)."""
        u = np.asarray(u, dtype=np.float32)
        if not self.quantized:
            return u
        q = np.rint(u / np.float32(self.in_scale)) + self.in_zero
        return np.clip(q, self._qmin, self._qmax).astype(self.input_dtype)

    def raw(self, u: np.ndarray, quantized: bool = False) -> np.ndarray:
        """Run the interpreter over normalized features [n, width]; returns the raw output [n].

        ``quantized``: ``u`` is already the input tensor's values (``quantize_input``'s output).
        """
        x = np.asarray(u, dtype=self.input_dtype) if quantized else self.quantize_input(u)
        if x.ndim != 2 or x.shape[1] != self.width:
            raise ValueError(f"features {list(x.shape)}: this model takes [n, {self.width}]")
        n = x.shape[0]
        out = np.empty(n, dtype=self.output_dtype)
        start = 0
        while start < n:
            bucket = pick_bucket(n - start)
            take = min(n - start, bucket)
            it, idx_in, idx_out = self._interpreter(bucket)
            if take == bucket:
                chunk = x[start:start + take]
            else:
                chunk = np.zeros((bucket, self.width), dtype=x.dtype)
                chunk[:take] = x[start:start + take]
            it.set_tensor(idx_in, np.ascontiguousarray(chunk))
            it.invoke()
            out[start:start + take] = it.get_tensor(idx_out)[:take, 0]
            start += take
        return out

    def probability(self, u: np.ndarray, quantized: bool = False) -> np.ndarray:
        r = self.raw(u, quantized)
        if self.output_dtype == np.int8:
            return ((r.astype(np.float32) - self.out_zero) * np.float32(self.out_scale))
        return r.astype(np.float32)

    def decide(self, u: np.ndarray, quantized: bool = False) -> np.ndarray:
        """MIGRATE (1) where the probability exceeds THRESHOLD, else STAY (0); uint8 [n]."""
        return (self.probability(u, quantized) > THRESHOLD).astype(np.uint8)


def table_deciders(model: Model, workers: int | None = None) -> list:
    """Decision functions on the model's input tensor values for ``table.build_exact``: one
    per worker thread (default: one per usable CPU), each with its own interpreters."""
    n = workers or max(1, len(os.sched_getaffinity(0)))
    models = [model] + [model.clone() for _ in range(n - 1)]
    return [lambda xq, m=m: m.decide(xq, quantized=True) for m in models]

"""``mlsched-convert --inspect``: every signature of a model and what the converter would do with it.

Nothing is written. For each signature: its inputs and outputs (names, dtypes,
shapes); then, for the ones the converter would take, the input width and padding,
the output it would read and its kind (and how that was found), what it does to the
output, whether the input scaling folds into the model, and the output's range on
features of a small host. Signatures it would refuse show the one-line reason.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import calibration, graph, loader
from .errors import ConvertError

#: Host and rows used to show an output's range.
PROBE_CPUS = 8
PROBE_ROWS = 2000


def inspect(path: Path, signature: str | None = None, output: str | None = None,
            output_kind: str = "auto", verbose: bool = False) -> str:
    """The report as text; a model that cannot be read at all raises ConvertError."""
    from mlsched.runtime.interp import quiet_stderr

    from .converter import check_output_values, load

    with quiet_stderr(keep=verbose):
        source = loader.open_model(path)
    try:
        default = loader.pick_signature(source, signature).name
    except ConvertError as e:
        default, why = None, str(e)
    lines = [f"model         {path} ({source.style}, {len(source.signatures)} signature"
             f"{'' if len(source.signatures) == 1 else 's'})"]
    for name, sig in source.signatures.items():
        mark = "  <- converted" if name == default else ""
        lines.append(f"signature     {name}{mark}")
        lines += [f"  input       {i.describe()}" for i in sig.inputs]
        lines += [f"  output      {o.describe()}" for o in sig.outputs]
        where = f"{path}: signature {name!r}"
        try:
            inp = loader.check_input(sig, where)
            out = loader.pick_output(sig, output, where)
        except ConvertError as e:
            lines.append(f"  would refuse: {str(e).removeprefix(where).lstrip(': ')}")
            continue
        with quiet_stderr(keep=verbose):
            try:
                m = load(path, name, out.name, output_kind)
            except ConvertError as e:
                lines.append(f"  would refuse: {e}")
                continue
            probe = calibration.synthesize(PROBE_CPUS, PROBE_ROWS, np.random.default_rng(0))
            raw = m.raw(probe[:, :m.width])
            try:
                check_output_values(m, raw, output_kind)
            except ConvertError as e:
                lines.append(f"  would refuse: {e}")
                continue
            folded, how = graph.fold_scale(m.graph, np.ones(m.width))
        choice = loader.Choice(source, sig, inp, out)
        lines += [
            f"  width       {m.width}: padding {choice.padding}",
            f"  reads       output {out.name!r}: {m.kind} ({m.kind_from}); {m.head}",
            f"  folds       input scaling {how if folded is not None else 'not: ' + how}",
            f"  range       {raw.min():.4g}..{raw.max():.4g} on {PROBE_ROWS} rows of a"
            f" {PROBE_CPUS}-CPU host",
        ]
    if default is None:
        lines.append(f"converts      nothing as asked: {why}")
    return "\n".join(lines)

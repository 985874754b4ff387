"""``mlsched-convert --inspect``: every signature of a model and what the converter would do with it.

Nothing is written. For each signature: its inputs and outputs (names, dtypes,
shapes); then, for the ones the converter would take, every decision a conversion
takes: the input width and which feature each input reads (``--features``, else the
five in order and pads), the output it would read and its kind (and how that was
found), what it does to the output, how the input scaling gets into the model (folded
into its first op, a rescale inserted behind the ops that pick its columns, or neither),
how many hidden layers get their channels equalized, the output's range on features
of a small host and where the boundary (the flag's, or the kind's default) puts MIGRATE
on them. Signatures it would refuse show the one-line
reason.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import calibration, loader
from .errors import ConvertError

#: Host and rows used to show an output's range.
PROBE_CPUS = 8
PROBE_ROWS = 2000


def inspect(path: Path, signature: str | None = None, output: str | None = None,
            output_kind: str = "auto", verbose: bool = False, features: str | None = None,
            migrate_above: float | None = None, migrate_at_least: float | None = None) -> str:
    """The report as text; a model that cannot be read at all raises ConvertError."""
    from mlsched.runtime.interp import quiet_stderr

    from .converter import (
        boundary_for,
        check_boundary_flags,
        check_output_values,
        equalizable,
        load,
        model_input,
        parse_features,
        scale_inputs,
    )

    check_boundary_flags(migrate_above, migrate_at_least)
    named = parse_features(features)
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
            inp = loader.check_input(sig, where, named)
            out = loader.pick_output(sig, output, where)
        except ConvertError as e:
            lines.append(f"  would refuse: {str(e).removeprefix(where).lstrip(': ')}")
            continue
        with quiet_stderr(keep=verbose):
            try:
                m = load(path, name, out.name, output_kind, named, migrate_above,
                         migrate_at_least)
            except ConvertError as e:
                lines.append(f"  would refuse: {e}")
                continue
            probe = calibration.synthesize(PROBE_CPUS, PROBE_ROWS, np.random.default_rng(0))
            raw = m.on_features(probe)
            try:
                check_output_values(m, raw, output_kind)
            except ConvertError as e:
                lines.append(f"  would refuse: {e}")
                continue
            g, norm, scaling = scale_inputs(m, PROBE_CPUS, True, probe)
            _, layers = equalizable(g, model_input(m.inputs, norm, probe), 1.0)
        choice = loader.Choice(source, sig, inp, out)
        kind_default = boundary_for(m.kind, None, None)
        quartiles = ", ".join(f"{v:.4g}" for v in np.percentile(raw, [25, 50, 75]))
        lines += [
            f"  width       {m.width}: " + ("one input per --features name" if named
                                             else f"padding {choice.padding}"),
            f"  inputs      {m.inputs.describe()}"
            + (" (--features)" if named else " (the five features in order, then zero pads)"),
            f"  reads       output {out.name!r}: {m.kind} ({m.kind_from}); {m.head}",
            f"  folds       {_scaling_line(scaling)}",
            f"  hidden      {layers} Dense -> ReLU -> Dense layer{'' if layers == 1 else 's'}:"
            " hidden channels can be brought towards one range (equalized at the strength"
            " whose int8 model agrees best)" if layers else
            "  hidden      nothing to equalize (no Dense -> ReLU -> Dense of constant weights)",
            f"  range       {raw.min():.4g}..{raw.max():.4g} (quartiles {quartiles}) on"
            f" {PROBE_ROWS} rows of a {PROBE_CPUS}-CPU host",
            f"  boundary    {m.boundary.describe()}: {_share(m.boundary, raw)} of those rows"
            " MIGRATE" + ("" if not m.boundary.explicit else
                          f"; the default, {kind_default.describe()}, gives"
                          f" {_share(kind_default, raw)}"),
        ]
    if default is None:
        lines.append(f"converts      nothing as asked: {why}")
    return "\n".join(lines)


def _scaling_line(scaling) -> str:
    """How the input scaling gets into the model, in the words of the ``folds`` line."""
    if scaling.how == "folded":
        return "input scaling " + scaling.text.split(" folded ", 1)[1]
    if scaling.how == "rescaled":
        return f"input scaling not, rescale inserted: {scaling.text}"
    return f"input scaling not: {scaling.text}"


def _share(boundary, raw: np.ndarray) -> str:
    return f"{float(boundary.decide(raw).mean()):.1%}"

"""``mlsched-convert``: a SavedModel or Keras model in, a bundle for mlsched-lite out."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

EPILOG = """\
examples:
  mlsched-convert models/default/saved_model -o /tmp/bundle
        convert for this host's CPU count, calibrating on synthesized features
  mlsched-convert model/ -o bundle/ --cpus 64 --table-mode nearest --force
        a 64-CPU table that never misses (nearest cell), replacing bundle/
  mlsched-convert model.keras -o bundle/ --calibration features.csv
        calibrate on recorded features (mlsched-lite run --record features.csv)
  mlsched-convert model/ -o bundle/ --signature serve --min-agreement 0.995
  mlsched-convert --inspect model/
        list every signature and what the converter would do with it; writes nothing
  mlsched-convert model.h5 -o bundle/ --model-output migrate --output-kind logit
        convert the output named 'migrate', a logit (> 0 is MIGRATE)
  mlsched-convert stress.h5 -o bundle/ --features cpu_idle,cpu_not_idle,src_dom_load,dst_dom_load
                  --output-kind linear --migrate-above 0.5
        a model of four inputs, in that order, whose linear output means MIGRATE near 1
  mlsched-convert --inspect stress.h5 --features src_dom_load,dst_dom_load,cpu_idle,cpu_not_idle
        what it would do, and the output's range and boundary on an 8-CPU host's features

models: a SavedModel (Keras export(), tf.saved_model.save of a Keras model or of a
tf.Module) or a .keras/.h5 file; one input [n, 5] (the five features) or [n, 10]
(five features, five zero pads), or any width with --features naming what each input
reads, float16/32/64; one output per row ([n, 1] or [n]): a probability, a logit, a
linear score or a 0/1 label (--output-kind auto tells them by the op that makes the
output: Sigmoid, a comparison or Round, anything else = logit)

features: cpu, cpu_idle, cpu_not_idle (counts, 0..N), src_dom_load, dst_dom_load (0..1);
pad for an input that reads zero

where MIGRATE starts: probability > 0.5, logit > 0, linear > 0, label = 1, unless
--migrate-above X (output > X) or --migrate-at-least X (output >= X)

exit status: 0 done, 2 bad input (nothing written), 3 int8 agreement below
--min-agreement (nothing written; --force accepts it)
"""


def parse_args(argv):
    ap = argparse.ArgumentParser(
        prog="mlsched-convert", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Convert a migration model (SavedModel directory or .keras/.h5) into an mlsched"
                    " bundle: full-int8 TFLite, decision table, manifest with hashes, fidelity report.")
    ap.add_argument("model", type=Path,
                    help="SavedModel directory or .keras/.h5 file: [n, 5|10] float -> [n, 1] or [n]")
    ap.add_argument("-o", "--output", type=Path, metavar="BUNDLE_DIR",
                    help="bundle directory to create (refused if it exists, unless --force)")
    ap.add_argument("--inspect", action="store_true",
                    help="print the model's signatures and what the converter would do; write nothing")
    ap.add_argument("--cpus", type=int, default=os.cpu_count() or 1,
                    help="CPUs of the target host: table geometry and feature ranges (default: this host's, %(default)s)")
    ap.add_argument("--calibration", type=Path, metavar="FILE",
                    help="representative features: .npz with 'features' [n, 10] or CSV with a header")
    ap.add_argument("--signature", help="SavedModel signature (default: serving_default, else the only one)")
    ap.add_argument("--model-output", metavar="NAME",
                    help="the model output to convert, when the signature has several")
    ap.add_argument("--output-kind", choices=("auto", "probability", "logit", "linear", "label"),
                    default="auto",
                    help="what the output is: probability (> 0.5 MIGRATE), logit (> 0), linear"
                         " (a score, > 0 unless --migrate-above), label (0/1);"
                         " auto: from the op that makes it (default)")
    ap.add_argument("--features", metavar="NAME,...",
                    help="which feature each model input reads, in the model's order: any of"
                         " cpu, cpu_idle, cpu_not_idle, src_dom_load, dst_dom_load (each once),"
                         " pad for a zero input (default: the five in order, then zero pads)")
    ap.add_argument("--migrate-above", type=float, metavar="X",
                    help="MIGRATE where the model's output is above X (default: the output"
                         " kind's boundary)")
    ap.add_argument("--migrate-at-least", type=float, metavar="X",
                    help="MIGRATE where the model's output is X or more")
    ap.add_argument("--min-agreement", type=float, default=0.99, metavar="F",
                    help="refuse when int8 and float decisions agree on fewer held-out samples (default %(default)s)")
    ap.add_argument("--table-levels", type=int, choices=(1, 2), default=2,
                    help="2: both table levels from the int8 model's complete picture, every cell"
                         " checked (N*(N+1)*65536 interpreter rows, minutes for large N);"
                         " 1: level 1 alone from probes inside each cell, seconds at any size,"
                         " UNSURE cells answered by the interpreter (default %(default)s)")
    ap.add_argument("--table-mode", choices=("boundary", "nearest"), default="boundary",
                    help="boundary: cells the model is not sure about are misses (default); nearest: never miss")
    ap.add_argument("--no-normalize", dest="normalize", action="store_false",
                    help="quantize raw features as they are (only for models that take inputs in [0, 1] already)")
    ap.add_argument("--force", action="store_true", help="replace BUNDLE_DIR; accept low agreement")
    ap.add_argument("-v", "--verbose", action="store_true", help="debug logging, TensorFlow's own output")
    return ap.parse_args(argv)


def options(a: argparse.Namespace, progress: bool = True):
    """The converter's Options from parsed arguments."""
    from .converter import Options

    return Options(model=a.model, output=a.output, cpus=a.cpus, calibration=a.calibration,
                   signature=a.signature, model_output=a.model_output, output_kind=a.output_kind,
                   min_agreement=a.min_agreement, table_mode=a.table_mode,
                   table_levels=a.table_levels, force=a.force, progress=progress,
                   normalize=a.normalize, features=a.features, migrate_above=a.migrate_above,
                   migrate_at_least=a.migrate_at_least)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if a.verbose else logging.WARNING,
                        format="mlsched-convert: %(message)s")
    from .converter import ConvertError, convert
    from .inspection import inspect

    if a.inspect:
        try:
            print(inspect(a.model, a.signature, a.model_output, a.output_kind, verbose=a.verbose,
                          features=a.features, migrate_above=a.migrate_above,
                          migrate_at_least=a.migrate_at_least))
        except ConvertError as e:
            print(f"mlsched-convert: {e}", file=sys.stderr)
            return e.code
        return 0
    if a.output is None:
        print("mlsched-convert: -o BUNDLE_DIR is required (or --inspect to look only)", file=sys.stderr)
        return 2
    try:
        report = convert(options(a), verbose=a.verbose)
    except ConvertError as e:
        print(f"mlsched-convert: {e}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        print("mlsched-convert: interrupted, nothing written", file=sys.stderr)
        return 130
    keys = ("cpus", "table_mode", "model", "decision", "input_scaling", "int8_vs_float_agreement",
            "table_vs_int8_agreement", "table_hit_rate", "unsure_fraction", "tflite_bytes",
            "table_bytes", "seconds")
    print(json.dumps({"bundle": str(a.output), **{k: report[k] for k in keys}}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

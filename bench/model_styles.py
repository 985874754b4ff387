"""Conversion figures for every saved-model style mlsched-convert reads.

    python -m bench.model_styles [--cpus 8] [--json FILE]

Builds each style exactly as ``tests/convert/test_convert_models.py`` and
``tests/convert/test_convert_byom.py`` do (their ``STYLES``: the teacher policy as a
hand-set network, saved the ways users save models; models written without mlsched in
mind: raw counts computed on, a subset of the features, a boundary of their own), adds
the default model, converts each for ``--cpus`` with the style's arguments and prints
one markdown row per style:
int8-vs-float agreement (all held-out rows, and off the knife edge), table-vs-interpreter
agreement, the float model's size on disk, model.tflite and table.bin sizes, and the
conversion time (TensorFlow already imported: its import is reported once, apart).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STYLE_TESTS = (ROOT / "tests" / "convert" / "test_convert_models.py",
               ROOT / "tests" / "convert" / "test_convert_byom.py")
DEFAULT_MODEL = ROOT / "models" / "default" / "saved_model"


def _styles() -> dict:
    """Every style of the test modules: name -> (builder, convert arguments, width, kind)."""
    styles = {}
    for k, path in enumerate(STYLE_TESTS):
        spec = importlib.util.spec_from_file_location(f"style_builders{k}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        styles.update(module.STYLES)
    return styles


def measure(path: Path, out: Path, cpus: int, extra: list[str]) -> dict:
    from mlsched.convert import cli
    from mlsched.convert.converter import convert

    opt = cli.options(cli.parse_args([str(path), "-o", str(out), "--cpus", str(cpus), *extra]),
                      progress=False)
    t0 = time.perf_counter()
    rep = convert(opt)
    seconds = time.perf_counter() - t0
    return {"int8_vs_float": rep["int8_vs_float_agreement"],
            "int8_vs_float_off_edge": rep["int8_vs_float_agreement_off_edge"],
            "knife_edge": rep["knife_edge_fraction"],
            "table_vs_int8": rep["table_vs_int8_agreement"],
            "float_bytes": rep["float_model_bytes"], "tflite_bytes": rep["tflite_bytes"],
            "table_bytes": rep["table_bytes"], "seconds": round(seconds, 2),
            "quantize_seconds": rep["quantize_seconds"],
            "input": f"{rep['model']['input']['dtype']} x{rep['model']['input']['width']}",
            "output": f"{rep['model']['output']['kind']}: {rep['model']['output']['head']}",
            "decision": rep["decision"]["rule"], "input_scaling": rep["input_scaling"]["how"],
            "features": ",".join(rep["model"]["input"]["features"])}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.model_styles", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpus", type=int, default=8)
    ap.add_argument("--json", type=Path, metavar="FILE", help="also write the rows as JSON")
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    from mlsched.convert.lazy_tf import tensorflow

    tf = tensorflow()
    import_seconds = time.perf_counter() - t0
    styles = _styles()
    rows = {}
    with tempfile.TemporaryDirectory(prefix="model-styles.") as tmp:
        root = Path(tmp)
        rows["default model (Keras export, 10->64->64->1)"] = measure(
            DEFAULT_MODEL, root / "default.bundle", a.cpus, [])
        for name, (build, extra, _, _) in sorted(styles.items()):
            where = root / name
            where.mkdir()
            tf.keras.utils.set_random_seed(5)
            rows[name] = measure(build(where), where / "bundle", a.cpus, extra)
    head = ("| style | input | output | MIGRATE when | scaling | int8≡float | off edge (edge)"
            " | table≡int8 | float B | tflite B | table B | s |")
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['input']} | {r['output']} | {r['decision']}"
                     f" | {r['input_scaling']} | {r['int8_vs_float']:.2%}"
                     f" | {r['int8_vs_float_off_edge']:.2%} ({r['knife_edge']:.2%})"
                     f" | {r['table_vs_int8']:.2%} | {r['float_bytes']} | {r['tflite_bytes']}"
                     f" | {r['table_bytes']} | {r['seconds']:.1f} |")
    print("\n".join(lines))
    print(f"\n{a.cpus} CPUs; TensorFlow {tf.__version__} import {import_seconds:.1f} s, not counted"
          " in the per-style seconds (report.png included)")
    if a.json:
        a.json.write_text(json.dumps({"cpus": a.cpus, "tensorflow": tf.__version__,
                                      "import_seconds": round(import_seconds, 2), "styles": rows},
                                     indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

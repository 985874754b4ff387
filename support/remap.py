"""Bundles whose model reads the features in another mapping, made without TensorFlow.

For tests of the paths that must honour a manifest's feature mapping (``features.names``):
``remapped(bundle, names, out)`` keeps the bundle's model.tflite and normalization, names
what each model input reads anew, and builds both table levels again through the new
mapping with the runtime's table builder; the manifest is format version 2.

What such a bundle answers is known without the code under test, from the original:

* the src and dst loads swapped in the names: the original's answer with the loads swapped;
* a load's input named ``pad``: the original's answer with that load 0 (a pad reads zero).
"""

from __future__ import annotations

from pathlib import Path

from mlsched.runtime import bundle as bundle_mod
from mlsched.runtime import table as table_mod
from mlsched.runtime.features import DST_LOAD, SRC_LOAD, InputMap
from mlsched.runtime.interp import Model, table_deciders

#: The default bundle's inputs with the two loads swapped, and with the dst load not read.
SWAPPED_LOADS = ["cpu", "cpu_idle", "cpu_not_idle", "dst_dom_load", "src_dom_load",
                 "pad0", "pad1", "pad2", "pad3", "pad4"]
NO_DST_LOAD = ["cpu", "cpu_idle", "cpu_not_idle", "src_dom_load",
               "pad0", "pad1", "pad2", "pad3", "pad4", "pad5"]
DECISION = {"output_kind": "probability", "threshold": 0.5, "migrate_at_least": False,
            "threshold_from": "default for a probability output"}


def remapped(source: Path, names: list[str], out: Path) -> Path:
    """A copy of bundle ``source`` whose model inputs read ``names``, tables rebuilt."""
    b = bundle_mod.Bundle.load(source, allow_insecure=True)
    inputs = InputMap(names)
    model = Model(b.model_bytes, width=b.width)
    norm = b.normalization

    def quantize(x):
        return model.quantize_input(norm.apply(inputs.select(x[:, :5])))

    built = table_mod.build_exact(b.cpus, quantize, table_deciders(model, workers=1),
                                  load_inputs=(inputs.input_of(SRC_LOAD),
                                               inputs.input_of(DST_LOAD)))
    manifest = {k: v for k, v in b.manifest.items()
                if k not in ("files", "format", "format_version", "report")}
    manifest["features"] = {"names": list(inputs.names), "width": inputs.width,
                            "normalization": norm.to_json()}
    manifest["decision"] = dict(DECISION)
    manifest["table"] = {k: v for k, v in b.manifest["table"].items() if k != "level2"}
    files = {bundle_mod.MODEL_FILE: b.model_bytes, bundle_mod.TABLE_FILE: built.table.tobytes()}
    if built.level2 is not None:
        manifest["table"]["level2"] = {"file": bundle_mod.LEVEL2_FILE, **built.level2.to_json()}
        files[bundle_mod.LEVEL2_FILE] = built.level2.to_bytes()
    return bundle_mod.write(out, files, manifest, force=True)

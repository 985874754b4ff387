"""The runtime's imports point down only: no cycle, no private name across modules.

``python -m support.imports`` prints the same graph floor by floor.
"""

from __future__ import annotations

import textwrap

from support import imports


def test_runtime_imports_point_down_only():
    assert imports.violations() == []


def test_every_runtime_module_is_on_a_floor():
    floors = imports.floor_of(imports.FLOORS)
    assert set(imports.modules()) <= set(floors)


def write(pkg, name, text):
    path = pkg / f"{name}.py"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))


def test_the_checker_finds_a_cycle_a_private_import_and_an_upward_import(tmp_path):
    pkg = tmp_path / "runtime"
    write(pkg, "low", """
        def helper():
            from .high import thing      # inside a function: still an import
            return thing
        """)
    write(pkg, "high", """
        from .low import _private, helper
        thing = helper
        """)
    write(pkg, "other", "from . import low\n")
    floors = [("top", ["high", "other"]), ("bottom", ["low"])]
    found = imports.violations(pkg, floors)
    assert any(v.startswith("import cycle: ") and "high" in v and "low" in v for v in found)
    assert any("imports private name _private from low" in v for v in found)
    assert any("runtime/low.py:3: low (floor 'bottom') imports high (floor 'top')" in v
               for v in found)
    assert not any("other.py" in v for v in found)        # a module import that points down


def test_the_checker_wants_every_module_placed(tmp_path):
    pkg = tmp_path / "runtime"
    write(pkg, "stray", "x = 1\n")
    assert imports.violations(pkg, [("top", [])]) == [
        "stray: not on any floor of support/imports.py FLOORS"]

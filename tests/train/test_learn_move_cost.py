"""mlsched-train charging each MIGRATE row what a move measured on this host costs
(``--move-cost FILE --working-set BYTES``) instead of the flat ``--migration-cost-us``.
Costs, labels and weights worked out by hand from the rows and the curve written here."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from mlsched.train import learn, move_cost, records
from mlsched.train.records import OUTCOME

TRAIN = [sys.executable, "-m", "mlsched.train.learn"]
KIB = 1024
EXPLORE = ("cpu,cpu_idle,cpu_not_idle,src_dom_load,dst_dom_load,action,propensity,wait_ns,"
           "src_queued,dst_queued,src_queued_after,dst_queued_after,kind,pid,ts_ns\n")
#: 100 µs at 16 KiB, 400 µs at 64 KiB: a 32 KiB working set is charged 250 µs.
CURVE = {
    "what": "hand-written",
    "measured": "2026-12-04T00:00:00Z",
    "host": {"cpu_model": "Test CPU", "kernel": "6.18.0"},
    "sizes": [
        {"working_set_bytes": 16 * KIB, "cost_ns": 100_000.0,
         "cost_ci95_ns": [80_000.0, 130_000.0]},
        {"working_set_bytes": 64 * KIB, "cost_ns": 400_000.0,
         "cost_ci95_ns": [300_000.0, 500_000.0]},
    ],
}


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


def exploration(tmp_path):
    """Four push rows, two pull rows; waits 300, 100, 900, 0 | 100, 200 µs; actions
    STAY, MIGRATE, STAY, MIGRATE | MIGRATE, STAY."""
    return write(tmp_path, "x.csv", EXPLORE
                 + "1,2,2,0.5,0.2,0,0.5,300000,1,0,1,0,push,1,1\n"
                 + "1,2,2,0.5,0.2,1,0.5,100000,1,0,1,0,push,2,2\n"
                 + "1,2,2,0.5,0.2,0,0.5,900000,1,0,1,0,push,3,3\n"
                 + "1,2,2,0.52,0.18,1,0.5,0,1,0,1,0,push,4,4\n"
                 + "1,2,2,0.9,0.1,1,0.5,100000,2,0,1,0,pull,5,5\n"
                 + "1,2,2,0.1,0.9,0,0.25,200000,2,0,1,0,pull,6,6\n")


def test_each_migrate_row_is_charged_the_curves_cost(tmp_path):
    rec = records.read([exploration(tmp_path)])
    curve = move_cost.MoveCostCurve.load(write(tmp_path, "m.json", json.dumps(CURVE)))
    charge = move_cost.measured_charge(curve, 32 * KIB)
    assert charge.us == pytest.approx(250.0)
    d = learn.label(rec, OUTCOME, np.ones(len(rec), dtype=bool), charge)
    # waits plus 250 µs on the MIGRATE rows
    np.testing.assert_allclose(d.outcome.cost_us, [300, 350, 900, 250, 350, 200])
    # baselines (cells under 20 rows): push mean 450, pull mean 275
    np.testing.assert_allclose(d.outcome.baseline_us, [450] * 4 + [275] * 2)
    assert d.y.tolist() == [0, 1, 1, 1, 0, 0]
    # |A| / propensity = 300, 200, 900, 400, 150, 300; mean 375
    np.testing.assert_allclose(d.w, np.array([300, 200, 900, 400, 150, 300]) / 375, rtol=1e-6)
    note = " ".join(d.notes)
    assert "250 us" in note and "measured" in note and "Test CPU" in note, d.notes
    assert "32768 bytes" in note, d.notes


def test_the_report_names_the_measured_cost_and_its_figures(tmp_path):
    curve = move_cost.MoveCostCurve.load(write(tmp_path, "m.json", json.dumps(CURVE)))
    rep = move_cost.measured_charge(curve, 32 * KIB).report
    assert rep["model"] == "measured"
    assert rep["file"] == str(tmp_path / "m.json") and len(rep["sha256"]) == 64
    assert rep["working_set_bytes"] == 32 * KIB
    assert rep["cost_ns"] == pytest.approx(250_000)
    assert rep["cost_ci95_ns"] == pytest.approx([190_000, 315_000])
    assert rep["charged_us"] == pytest.approx(250)
    assert rep["cpu_model"] == "Test CPU" and rep["measured"] == "2026-12-04T00:00:00Z"
    assert rep["outside_measured_sizes"] is False and rep["quick_run"] is False
    flat = move_cost.flat_charge(120.0, explicit=True)
    assert flat.us == 120.0 and flat.report == {"model": "flat", "charged_us": 120.0,
                                                "from": "--migration-cost-us"}


def test_a_quick_runs_curve_is_said_to_be_one(tmp_path):
    obj = json.loads(json.dumps(CURVE)) | {"method": {"quick": True}}
    curve = move_cost.MoveCostCurve.load(write(tmp_path, "m.json", json.dumps(obj)))
    charge = move_cost.measured_charge(curve, 64 * KIB)
    assert charge.us == pytest.approx(400) and charge.report["quick_run"] is True
    assert "--quick" in charge.note


def test_a_measured_cost_below_zero_is_charged_as_zero(tmp_path):
    obj = json.loads(json.dumps(CURVE))
    obj["sizes"][0].update(cost_ns=-50.0, cost_ci95_ns=[-400.0, 300.0])
    curve = move_cost.MoveCostCurve.load(write(tmp_path, "m.json", json.dumps(obj)))
    charge = move_cost.measured_charge(curve, 16 * KIB)
    assert charge.us == 0.0 and charge.report["cost_ns"] == -50.0
    assert "below 0" in charge.note


def run(*args, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([*TRAIN, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


def one_line_exit_2(r, *words) -> None:
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    for w in words:
        assert w in r.stderr, r.stderr


@pytest.mark.parametrize("args, words", [
    (["--move-cost", "{curve}", "--migration-cost-us", "500"],
     ("--move-cost", "--migration-cost-us")),
    (["--working-set", "1M"], ("--working-set", "--move-cost")),
    (["--move-cost", "{curve}", "--working-set", "lots"], ("--working-set", "lots")),
    (["--move-cost", "{tmp}/nope.json"], ("nope.json", "no such file")),
    (["--move-cost", "{bad}"], ("bad.json", "not JSON")),
])
def test_bad_cost_options_exit_2_and_leave_nothing(tmp_path, args, words):
    x = exploration(tmp_path)
    curve = write(tmp_path, "m.json", json.dumps(CURVE))
    write(tmp_path, "bad.json", "{")
    args = [a.format(curve=curve, tmp=tmp_path, bad=tmp_path / "bad.json") for a in args]
    r = run(x, "-o", tmp_path / "out", *args)
    one_line_exit_2(r, *words)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.json", "m.json", "x.csv"]


def write_exploration_records(path, rows: int, seed: int = 11) -> None:
    """Random STAY/MIGRATE at propensity 0.5; the task waits src load x 1 ms where it is,
    dst load x 1 ms after a move."""
    rng = np.random.default_rng(seed)
    src, dst = rng.integers(0, 1001, rows) / 1000, rng.integers(0, 1001, rows) / 1000
    action = rng.integers(0, 2, rows)
    wait_ns = np.where(action == 1, dst, src) * 1_000_000
    lines = [f"{i % 4},2,2,{src[i]},{dst[i]},{action[i]},0.5,{int(wait_ns[i])},1,0,1,0,"
             f"{('push', 'pull')[i % 2]},{i},{i}" for i in range(rows)]
    path.write_text(EXPLORE + "\n".join(lines) + "\n")


def test_train_with_the_measured_cost_reports_it(tmp_path):
    x, out = tmp_path / "x.csv", tmp_path / "learned"
    write_exploration_records(x, 400)
    curve = write(tmp_path, "m.json", json.dumps(CURVE))
    r = run(x, "-o", out, "--epochs", "1", "--move-cost", curve, "--working-set", "32K")
    assert r.returncode == 0, r.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["migration_cost_us"] == pytest.approx(250)
    assert report["move_cost"]["model"] == "measured"
    assert report["move_cost"]["working_set_bytes"] == 32 * KIB
    assert report["move_cost"]["cost_ci95_ns"] == pytest.approx([190_000, 315_000])
    assert any("measured" in n and "250 us" in n for n in report["notes"]), report["notes"]

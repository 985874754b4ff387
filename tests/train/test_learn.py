"""mlsched-train end to end: real records -> training -> mlsched-convert -> the runtime decides.

Every step runs as the user runs it, in a child process: TensorFlow never loads in the test
process (it would break tflite_runtime there, see conftest.py).
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from mlsched.convert.errors import ConvertError
from mlsched.runtime.recorder import Recorder
from mlsched.runtime.wire import LOAD_ONE, REQUEST_DTYPE
from mlsched.train import learn
from support.cli import lite

TRAIN = [sys.executable, "-m", "mlsched.train.learn"]
CONVERT = [sys.executable, "-m", "mlsched.convert.cli"]
CPUS = 4
#: What the recorder writes as cpu for a CPU outside the table (MLSCHED_CPU_NONE).
CPU_NONE = 0xFFFFFFFF
#: The rule the records follow: CFS moves a task to the other domain iff src - dst > GAP.
GAP = 0.3


def run(cmd, *args, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([*cmd, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


def write_collector_records(path, rows: int, seed: int = 7, outside: int = 0) -> None:
    """A 4-CPU table of two domains {0,1} {2,3}: CFS moves to the other domain iff
    src - dst > GAP; below it, some moves stay inside the domain (STAY for the model).
    The last ``outside`` rows are about CPUs 4 and 5, past the table (``--cpus 4`` on a
    6-CPU host): no index, no domain."""
    rng = np.random.default_rng(seed)
    b = np.zeros(rows, dtype=REQUEST_DTYPE)
    cpu = rng.integers(0, CPUS, rows)
    idle = rng.integers(0, CPUS + 1, rows)
    src = rng.integers(0, LOAD_ONE + 1, rows)
    dst = rng.integers(0, LOAD_ONE + 1, rows)
    across = (src - dst) / LOAD_ONE > GAP
    inside = ~across & (rng.random(rows) < 0.3)
    other = (cpu + 2) % CPUS                    # a CPU of the other domain
    sibling = cpu ^ 1                           # the other CPU of the same domain
    b["raw_cpu"], b["f"]["cpu"], b["f"]["idle"], b["f"]["busy"] = cpu, cpu, idle, CPUS - idle
    b["f"]["src_load"], b["f"]["dst_load"] = src, dst
    b["cfs_action"] = across | inside
    b["dst_cpu"] = np.where(across, other, np.where(inside, sibling, 0xFFFFFFFF))
    b["source"], b["pid"], b["ts_ns"] = 1, 1000 + np.arange(rows), 10**9 + np.arange(rows)
    if outside:
        b["raw_cpu"][-outside:] = CPUS + np.arange(outside) % 2
        b["f"]["cpu"][-outside:] = CPU_NONE
    rec = Recorder(str(path))
    rec.set_domains([[0, 1], [2, 3]])
    rec.add(b, np.zeros(rows, dtype=np.uint8))
    rec.close()


def test_records_train_convert_and_deploy(tmp_path):
    records, learned, bundle = tmp_path / "r.csv", tmp_path / "learned", tmp_path / "bundle"
    write_collector_records(records, 2000)
    r = run(TRAIN, records, "-o", learned, "--labels", "imitate", "--epochs", "8")
    assert r.returncode == 0, r.stderr
    report = json.loads((learned / "report.json").read_text())
    assert report["held_out"]["accuracy"] >= 0.9, report["held_out"]
    assert report["rows"]["read"] == report["rows"]["used"] == 2000
    cfs_moved = report["class_balance"]["before"]["MIGRATE"]
    assert report["class_balance"]["after"]["MIGRATE"] < cfs_moved   # moves inside a domain
    assert (learned / "report.png").stat().st_size > 10_000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["learned", "r.csv"]   # no temporaries

    r = run(CONVERT, learned / "saved_model", "-o", bundle, "--cpus", CPUS, "--table-levels", 1)
    assert r.returncode == 0, r.stderr
    points = tmp_path / "points.csv"
    points.write_text("cpu,cpu_idle,cpu_not_idle,src_dom_load,dst_dom_load\n"
                      "1,2,2,0.9,0.1\n"       # clearly across: MIGRATE
                      "3,1,3,0.95,0.3\n"      # MIGRATE
                      "0,2,2,0.1,0.9\n"       # STAY
                      "2,3,1,0.5,0.5\n"       # STAY
                      "1,0,4,0.3,0.2\n")      # STAY
    r = lite("decide", "--bundle", bundle, "--input", points)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["MIGRATE", "MIGRATE", "STAY", "STAY", "STAY"]


def test_rows_about_cpus_outside_the_table_do_not_set_the_count_scale(tmp_path):
    records, learned = tmp_path / "r.csv", tmp_path / "learned"
    write_collector_records(records, 2000, outside=150)
    assert f"\n{CPU_NONE}," in records.read_text()
    r = run(TRAIN, records, "-o", learned, "--labels", "imitate", "--epochs", "8")
    assert r.returncode == 0, r.stderr
    report = json.loads((learned / "report.json").read_text())
    assert report["count_scale_folded"] == CPUS
    assert report["rows"]["dropped"] == {"cpu outside the table (MLSCHED_CPU_NONE)": 150}
    assert report["rows"]["read"] == 2000 and report["rows"]["used"] == 1850
    assert "150 rows dropped: cpu outside the table" in r.stderr, r.stderr
    assert report["held_out"]["accuracy"] >= 0.9, report["held_out"]


def write_exploration_records(path, rows: int, seed: int = 11) -> None:
    """Random STAY/MIGRATE at propensity 0.5; the task waits src load x 1 ms where it is,
    dst load x 1 ms after a move: with the 500 µs migration cost, moving pays iff
    src - dst > 0.5."""
    rng = np.random.default_rng(seed)
    src, dst = rng.integers(0, 1001, rows) / 1000, rng.integers(0, 1001, rows) / 1000
    action = rng.integers(0, 2, rows)
    wait_ns = np.where(action == 1, dst, src) * 1_000_000
    idle = rng.integers(0, CPUS + 1, rows)
    lines = [f"{i % CPUS},{idle[i]},{CPUS - idle[i]},{src[i]},{dst[i]},{action[i]},0.5,"
             f"{int(wait_ns[i])},1,0,1,0,{('push', 'pull')[i % 2]},{i},{i}" for i in range(rows)]
    path.write_text("cpu,cpu_idle,cpu_not_idle,src_dom_load,dst_dom_load,action,propensity,"
                    "wait_ns,src_queued,dst_queued,src_queued_after,dst_queued_after,kind,pid,"
                    "ts_ns\n" + "\n".join(lines) + "\n")


def test_outcome_labels_learn_a_policy_cheaper_than_the_trivial_ones(tmp_path):
    records, learned = tmp_path / "x.csv", tmp_path / "learned"
    write_exploration_records(records, 2000)
    r = run(TRAIN, records, "-o", learned, "--epochs", "10")
    assert r.returncode == 0, r.stderr
    report = json.loads((learned / "report.json").read_text())
    assert report["labels"] == "outcome" and report["migration_cost_us"] == 500
    held = report["held_out"]
    assert held["accuracy_weighted"] and held["accuracy"] >= 0.8, held
    ips = held["ips_mean_cost_us"]
    assert ips["learned"]["ips_mean_cost_us"] < ips["always MIGRATE"]["ips_mean_cost_us"]
    assert ips["learned"]["ips_mean_cost_us"] < ips["logged (random)"]["mean_cost_us"]
    # moving pays on an eighth of the (src, dst) square
    assert 0.03 < held["float_migrate_rate"] < 0.3, held


def one_line_exit_2(r, *words) -> None:
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    for w in words:
        assert w in r.stderr, r.stderr


@pytest.mark.parametrize("content, words", [
    ("cpu,idle,busy\n1,2,3\n", ("bad.csv:1", "header")),
    ("cpu,cpu_idle,cpu_not_idle,src_dom_load,dst_dom_load,cfs_action,decision,source,pid,ts_ns\n"
     + "1,2,2,0.5,0.5,1,0,1,5,6\n" * 60, ("MIGRATE", "both classes")),
    ("cpu,cpu_idle,cpu_not_idle,src_dom_load,dst_dom_load,cfs_action,decision,source,pid,ts_ns\n"
     "1,2,2,0.5,0.5,1,0,1,5,6\n" "1,2,2,0.5,0.5,0,0,1,5,6\n", ("too few rows",)),
    ("cpu,cpu_idle,cpu_not_idle,src_dom_load,dst_dom_load,cfs_action,decision,source,pid,ts_ns\n"
     "1,2,2,0.5,0.5,1,0,1,5,6\n" "1,2,2,half,0.5,0,0,1,5,6\n", ("bad.csv:3", "not a number")),
    ("cpu,cpu_idle,cpu_not_idle,src_dom_load,dst_dom_load,action,propensity,wait_ns,src_queued,"
     "dst_queued,src_queued_after,dst_queued_after,kind,pid,ts_ns\n"
     "1,2,2,0.5,0.5,1,0.5,1000,1,0,1,0,push,5,6\n", ("too few rows",)),
])
def test_bad_records_exit_2_and_leave_nothing(tmp_path, content, words):
    bad = tmp_path / "bad.csv"
    bad.write_text(content)
    r = run(TRAIN, bad, "-o", tmp_path / "out")
    one_line_exit_2(r, *words)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.csv"]


def test_a_file_of_rows_outside_the_table_says_why_it_has_too_few(tmp_path):
    records = tmp_path / "r.csv"
    write_collector_records(records, 100, outside=100)
    r = run(TRAIN, records, "-o", tmp_path / "out")
    one_line_exit_2(r, "too few rows: 0 usable", "100 dropped: cpu outside the table")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.csv"]


def test_a_denormal_propensity_exits_2_naming_its_row(tmp_path):
    """Its inverse overflows to inf: the weights would be inf and NaN, the model NaN."""
    records = tmp_path / "x.csv"
    write_exploration_records(records, 200)
    lines = records.read_text().splitlines()
    lines[41] = lines[41].replace(",0.5,", ",1e-310,")
    records.write_text("\n".join(lines) + "\n")
    r = run(TRAIN, records, "-o", tmp_path / "out", "--epochs", "1")
    one_line_exit_2(r, "x.csv:42", "propensity")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.csv"]


def test_costs_past_the_float_range_exit_2(tmp_path):
    records = tmp_path / "x.csv"
    write_exploration_records(records, 200)
    r = run(TRAIN, records, "-o", tmp_path / "out", "--epochs", "1", "--migration-cost-us", "1e308")
    one_line_exit_2(r, "not finite")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.csv"]


@pytest.mark.parametrize("history, weights, word", [
    ({"loss": [0.6, float("nan")], "val_loss": [0.6, 0.5]}, [np.ones((10, 64))], "loss"),
    ({"loss": [0.6, 0.5], "val_loss": [0.6, float("inf")]}, [np.ones((10, 64))], "val_loss"),
    ({"loss": [0.6, 0.5], "val_loss": [0.6, 0.5]}, [np.ones(3), np.array([1.0, np.nan])],
     "weights"),
])
def test_training_that_ends_non_finite_is_refused(history, weights, word):
    with pytest.raises(ConvertError, match=word):
        learn.check_trained(history, weights)
    learn.check_trained({"loss": [0.6, 0.5], "val_loss": [0.6, 0.5]}, [np.ones(3)])


def test_missing_file_and_mixed_kinds_exit_2(tmp_path):
    r = run(TRAIN, tmp_path / "nope.csv", "-o", tmp_path / "out")
    one_line_exit_2(r, "nope.csv", "no such file")
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    a.write_text("cpu,cpu_idle,cpu_not_idle,src_dom_load,dst_dom_load,cfs_action,decision,"
                 "source,pid,ts_ns\n1,2,2,0.5,0.5,1,0,1,5,6\n")
    b.write_text("cpu,cpu_idle,cpu_not_idle,src_dom_load,dst_dom_load,action,propensity,wait_ns,"
                 "src_queued,dst_queued,src_queued_after,dst_queued_after,kind,pid,ts_ns\n"
                 "1,2,2,0.5,0.5,1,0.5,1000,1,0,1,0,push,5,6\n")
    r = run(TRAIN, a, b, "-o", tmp_path / "out")
    one_line_exit_2(r, "--labels")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.csv", "b.csv"]


def test_an_existing_outdir_needs_force(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep").write_text("x")
    write_collector_records(tmp_path / "r.csv", 100)
    r = run(TRAIN, tmp_path / "r.csv", "-o", tmp_path / "out")
    one_line_exit_2(r, "--force")
    assert (tmp_path / "out" / "keep").read_text() == "x"

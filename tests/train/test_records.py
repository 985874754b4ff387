"""Record files read and labelled: hand-written CSVs, labels and weights worked out by hand."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from mlsched.runtime.features import pad
from mlsched.train import learn, records
from mlsched.train.records import RecordError

OLD = "cpu,cpu_idle,cpu_not_idle,src_dom_load,dst_dom_load,cfs_action,decision,source,pid,ts_ns\n"
NEW = OLD.strip() + ",src_domain,dst_domain\n"
#: What the recorder writes as cpu for a CPU outside the table (MLSCHED_CPU_NONE).
CPU_NONE = 4294967295
EXPLORE = ("cpu,cpu_idle,cpu_not_idle,src_dom_load,dst_dom_load,action,propensity,wait_ns,"
           "src_queued,dst_queued,src_queued_after,dst_queued_after,kind,pid,ts_ns\n")


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_imitate_counts_only_moves_between_domains(tmp_path):
    new = write(tmp_path, "new.csv", NEW
                + "1,2,2,0.9,0.1,1,0,1,10,1,0,1\n"     # moved to domain 1: MIGRATE
                + "1,2,2,0.9,0.1,1,0,1,11,2,0,0\n"     # moved inside domain 0: STAY
                + "1,2,2,0.2,0.8,0,0,2,12,3,0,\n"      # woke in place: STAY
                + "1,2,2,0.9,0.1,1,0,1,13,4,,1\n")     # moved from no domain: unusable
    old = write(tmp_path, "old.csv", OLD
                + "0,3,1,0.7,0.2,1,1,1,20,5\n"         # no domain columns: MIGRATE
                + "0,3,1,0.7,0.2,0,1,2,21,6\n")
    rec = records.read([new, old])
    assert rec.kind == records.COLLECTOR
    assert rec.dropped == {"migration between unknown domains": 1}
    assert records.label_imitate(rec).tolist() == [1, 0, 0, 1, 0]
    assert [f.domain_columns for f in rec.files] == [True, False]
    assert [f.rows for f in rec.files] == [4, 2]
    np.testing.assert_array_equal(rec.features[3], np.float32([0, 3, 1, 0.7, 0.2]))


def test_rows_about_a_cpu_outside_the_table_are_dropped_and_counted(tmp_path):
    """`run --cpus 2 --record` on a bigger host: requests about the CPUs past the table carry
    no index; they say nothing of the 2-CPU table and must not set the host's size."""
    p = write(tmp_path, "r.csv", NEW
              + "1,0,2,0.9,0.1,1,0,1,10,1,0,1\n"
              + f"{CPU_NONE},1,1,0.9,0.1,1,0,1,11,2,,0\n"
              + f"{CPU_NONE},1,1,0.2,0.8,0,0,2,12,3,,\n"
              + "0,2,0,0.2,0.8,0,0,2,13,4,0,\n")
    rec = records.read([p])
    assert rec.dropped == {"cpu outside the table (MLSCHED_CPU_NONE)": 2}
    assert rec.features[:, 0].tolist() == [1, 0]
    assert rec.files[0].rows == 4
    assert learn.host_cpus(pad(rec.features)) == 2


def exploration(tmp_path):
    """Four push rows in one load cell, two pull rows alone in theirs (costs in µs at a
    migration cost of 500: 300, 600, 900, 500 | 600, 200), one row over-full (1.02)."""
    return write(tmp_path, "x.csv", EXPLORE
                 + "1,2,2,0.5,0.2,0,0.5,300000,1,0,1,0,push,1,1\n"
                 + "1,2,2,0.5,0.2,1,0.5,100000,1,0,1,0,push,2,2\n"
                 + "1,2,2,0.5,0.2,0,0.5,900000,1,0,1,0,push,3,3\n"
                 + "1,2,2,0.52,0.18,1,0.5,0,1,0,1,0,push,4,4\n"
                 + "1,2,2,0.9,0.1,1,0.5,100000,2,0,1,0,pull,5,5\n"
                 + "1,2,2,0.1,1.02,0,0.25,200000,2,0,1,0,pull,6,6\n")


def test_outcome_labels_and_weights(tmp_path):
    rec = records.read([exploration(tmp_path)])
    assert rec.kind == records.EXPLORATION and rec.clamped_loads == 1
    assert rec.features[5, 4] == 1.0
    out = records.label_outcome(rec, 500.0, min_cell_rows=2)
    np.testing.assert_allclose(out.cost_us, [300, 600, 900, 500, 600, 200])
    # push cell mean 575; each pull row alone in its cell: the pull mean, 400
    np.testing.assert_allclose(out.baseline_us, [575, 575, 575, 575, 400, 400])
    np.testing.assert_allclose(out.advantage_us, [275, -25, -325, 75, -200, 200])
    assert out.labels.tolist() == [0, 0, 1, 1, 0, 0]
    assert out.cells_fallen_back == 2
    # |A| / propensity = 550, 50, 650, 150, 400, 800; mean 2600 / 6
    raw = np.array([550, 50, 650, 150, 400, 800])
    np.testing.assert_allclose(out.weights, raw * 6 / 2600)


def test_outcome_baselines_from_training_rows_only(tmp_path):
    rec = records.read([exploration(tmp_path)])
    fit = np.array([True, True, False, False, True, True])
    out = records.label_outcome(rec, 500.0, fit=fit, min_cell_rows=2)
    # push cell: (300 + 600) / 2 = 450 from the rows fitted on
    np.testing.assert_allclose(out.baseline_us[:4], 450)
    assert out.labels[:4].tolist() == [0, 0, 1, 0]


def test_ips_table(tmp_path):
    rec = records.read([exploration(tmp_path)])
    cost = records.costs_us(rec, 500.0)
    t = records.ips_costs(rec, cost, {"always STAY": np.uint8(0), "always MIGRATE": np.uint8(1)})
    # STAY rows: 300/.5 + 900/.5 + 200/.25 = 3200 over 6; MIGRATE: 1200 + 1000 + 1200 = 3400
    assert t["always STAY"]["ips_mean_cost_us"] == pytest.approx(3200 / 6)
    assert t["always MIGRATE"]["ips_mean_cost_us"] == pytest.approx(3400 / 6)
    assert t["always STAY"]["snips_mean_cost_us"] == pytest.approx(3200 / 8)
    assert t["logged (random)"]["mean_cost_us"] == pytest.approx(3100 / 6)


def test_unusable_exploration_rows_are_dropped_with_their_reason(tmp_path):
    p = write(tmp_path, "x.csv", EXPLORE
              + "1,2,2,0.5,0.2,2,0.5,1000,1,0,1,0,push,1,1\n"
              + "1,2,2,0.5,0.2,1,0.5,-1,1,0,1,0,push,2,2\n"
              + "1,2,2,0.5,0.2,1,0.5,1000,1,0,1,0,steal,3,3\n"
              + "1,2,2,0.5,0.2,1,0.5,1e20,1,0,1,0,push,5,5\n"
              + "1,2,2,0.5,0.2,1,0.5,1000,1,0,1,0,pull,4,4\n")
    rec = records.read([p])
    assert rec.dropped == {"action neither 0 nor 1": 1, "negative wait_ns": 1,
                           "kind neither push nor pull": 1, "wait_ns past what a u64 holds": 1}
    assert len(rec) == 1


@pytest.mark.parametrize("text, where", [
    ("cpu,cpu_idle\n1,2\n", "x.csv:1"),
    (NEW + "1,2,2,0.5,0.5,1,0,1,5,6,0\n", "x.csv:2"),          # a field short
    (NEW + "1,2,2,0.5,0.5,1,0,1,5,6,0,1\n1,2,2,0.5,nan,1,0,1,5,6,0,1\n", "x.csv:3"),
    (EXPLORE + "1,2,2,0.5,0.2,1,0.5,lots,1,0,1,0,push,1,1\n", "x.csv:2"),
])
def test_bad_files_name_file_and_line(tmp_path, text, where):
    with pytest.raises(RecordError, match=where):
        records.read([write(tmp_path, "x.csv", text)])


def test_labels_pick_their_kind_of_file(tmp_path):
    a = write(tmp_path, "a.csv", NEW + "1,2,2,0.9,0.1,1,0,1,10,1,0,1\n")
    b = exploration(tmp_path)
    with pytest.raises(RecordError, match="mixed"):
        records.read([a, b])
    rec = records.read([a, b], records.OUTCOME)
    assert rec.kind == records.EXPLORATION and len(rec) == 6
    assert rec.dropped == {"collector file, not used by --labels outcome": 1}


def test_text_that_is_not_ascii_csv_names_its_line(tmp_path):
    p = tmp_path / "x.csv"
    p.write_bytes(NEW.encode() + b"1,2,2,0.5,0.5,1,0,1,5,6,0,1\n" + "1,2,2,0,5,\u00e9\n".encode())
    with pytest.raises(RecordError, match="x.csv:3"):
        records.read([p])
    with pytest.raises(RecordError, match="not a regular file"):
        records.read([tmp_path])


def test_a_last_row_cut_short_is_dropped(tmp_path):
    """A writer killed mid-row leaves a line without its newline: not a row to learn from."""
    p = write(tmp_path, "x.csv", NEW + "1,2,2,0.9,0.1,1,0,1,10,1,0,1\n1,2,2,0.9,0.1,1,0,1,1")
    rec = records.read([p])
    assert len(rec) == 1 and rec.dropped == {"last row cut short (no newline)": 1}
    assert rec.files[0].rows == 2


@pytest.mark.parametrize("propensity", ["1e-310", "0", "-0.5", "1.5", "0.0009", "nan", "inf"])
def test_a_propensity_outside_its_range_refuses_the_file(tmp_path, propensity):
    """1 / propensity weighs the row: one that is not a probability scx_mlsched can log
    (zero, past 1, below one permille, a denormal whose inverse overflows) is a broken file."""
    p = write(tmp_path, "x.csv", EXPLORE
              + "1,2,2,0.5,0.2,0,0.5,300000,1,0,1,0,push,1,1\n"
              + f"1,2,2,0.5,0.2,1,{propensity},100000,1,0,1,0,push,2,2\n")
    with pytest.raises(RecordError, match=r"x\.csv:3: propensity"):
        records.read([p])


def test_the_least_propensity_is_one_permille(tmp_path):
    p = write(tmp_path, "x.csv", EXPLORE + "1,2,2,0.5,0.2,1,0.001,100000,1,0,1,0,push,2,2\n")
    assert records.read([p]).columns["propensity"].tolist() == [np.float32(0.001)]


def test_weights_that_overflow_are_refused(tmp_path):
    """A migration cost near the float64 limit sums to infinity in the baselines."""
    rec = records.read([exploration(tmp_path)])
    with pytest.raises(RecordError, match="not finite"):
        records.label_outcome(rec, 1e308, min_cell_rows=2)


#: Bytes a parsed row may hold: the five features as float32 (20), then per kind
#: collector: cfs_action u8, two domain ids float32, has_domains bool, pid u32, ts_ns u64;
#: exploration: action u8, propensity and wait_ns float32, four queue lengths u32, kind u8,
#: pid u32, ts_ns u64.
ROW_BYTES = {records.COLLECTOR: 20 + 1 + 8 + 1 + 4 + 8,
             records.EXPLORATION: 20 + 1 + 4 + 4 + 16 + 1 + 4 + 8}


def collector_text(rows: int) -> str:
    return NEW + "".join(f"{i % 8},{i % 9},{8 - i % 9},0.5,0.25,{i % 2},0,1,{i},{10**18 + i},0,1\n"
                         for i in range(rows))


def exploration_text(rows: int) -> str:
    return EXPLORE + "".join(f"{i % 8},{i % 9},{8 - i % 9},0.5,0.25,{i % 2},0.5,{1000 * i},1,0,"
                             f"1,0,push,{i},{10**18 + i}\n" for i in range(rows))


@pytest.mark.parametrize("kind, text", [(records.COLLECTOR, collector_text),
                                        (records.EXPLORATION, exploration_text)])
def test_parsed_rows_are_compact_columns(tmp_path, kind, text):
    rows = 3000
    rec = records.read([write(tmp_path, "x.csv", text(rows))])
    assert rec.kind == kind and len(rec) == rows
    arrays = [rec.features, *rec.columns.values()]
    assert all(a.shape[0] == rows for a in arrays)
    assert sum(a.nbytes for a in arrays) / rows <= ROW_BYTES[kind]
    assert rec.columns["ts_ns"][-1] == 10**18 + rows - 1          # exact, past 2^53


def read_peak(path) -> int:
    tracemalloc.start()
    try:
        records.read([path])
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_reading_holds_a_small_constant_per_row(tmp_path):
    """What a read holds beyond a fixed amount grows by the compact row, not by rows of
    Python floats: the peak of twice the rows less the peak of the rows, per row."""
    rows = 40_000
    small = write(tmp_path, "small.csv", collector_text(rows))
    big = write(tmp_path, "big.csv", collector_text(2 * rows))
    per_row = (read_peak(big) - read_peak(small)) / rows
    assert per_row <= 1.25 * ROW_BYTES[records.COLLECTOR], per_row

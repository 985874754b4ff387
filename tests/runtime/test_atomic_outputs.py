"""Directory and by-name outputs (a bundle, mlsched-train's OUTDIR, the default model, a
plot) are whole or absent: built beside their name, swapped in once complete, nothing left
over, and a previous one kept when the new one fails."""

from __future__ import annotations

import os
import stat

import pytest

from mlsched.runtime.files import atomic_directory, atomic_path


def leftovers(d) -> list[str]:
    return sorted(p.name for p in d.iterdir() if p.name.startswith("."))


def test_a_new_directory_appears_whole(tmp_path):
    target = tmp_path / "out"
    with atomic_directory(target) as tmp:
        (tmp / "a").write_text("1")
        assert not target.exists(), "visible before it was complete"
    assert (target / "a").read_text() == "1"
    assert stat.S_IMODE(target.stat().st_mode) == 0o755
    assert leftovers(tmp_path) == []


def test_an_existing_directory_is_refused_unless_replaced(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old").write_text("kept")
    with pytest.raises(FileExistsError, match="--force"), atomic_directory(target):
        pass
    with atomic_directory(target, replace=True) as tmp:
        (tmp / "new").write_text("2")
    assert sorted(os.listdir(target)) == ["new"]
    assert leftovers(tmp_path) == []


def test_a_failure_keeps_the_previous_directory(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old").write_text("kept")
    with pytest.raises(RuntimeError, match="half way"), \
            atomic_directory(target, replace=True) as tmp:
        (tmp / "new").write_text("partial")
        raise RuntimeError("half way")
    assert sorted(os.listdir(target)) == ["old"]
    assert leftovers(tmp_path) == []


def test_a_file_written_by_name_replaces_its_target_only_when_done(tmp_path):
    target = tmp_path / "plot.png"
    target.write_bytes(b"old")
    with pytest.raises(OSError), atomic_path(target) as tmp:
        assert tmp.suffix == ".png" and tmp.parent == tmp_path
        tmp.write_bytes(b"half")
        raise OSError("the writer failed")
    assert target.read_bytes() == b"old" and leftovers(tmp_path) == []
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new" and leftovers(tmp_path) == []
    assert stat.S_IMODE(target.stat().st_mode) == 0o644


def test_the_default_model_trainer_writes_its_saved_model_whole(tmp_path):
    """`make model`'s writer (train.train) through the same helper, at a tiny size."""
    pytest.importorskip("tensorflow")
    from mlsched.train import train

    out = tmp_path / "saved_model"
    stats = train.train(out, samples=2048, epochs=1)
    assert (out / "saved_model.pb").is_file() and (out / "training.json").is_file()
    assert stats["train_samples"] == 2048
    train.train(out, samples=2048, epochs=1)          # again over it: replaced, not merged
    assert (out / "saved_model.pb").is_file() and leftovers(tmp_path) == []

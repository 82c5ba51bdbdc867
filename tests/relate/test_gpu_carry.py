"""Cutting files into parts for the GPU machine and joining them back gives the same bytes, or a clear error."""

from __future__ import annotations

import os
import shutil

import pytest

from rlgen_relate.lab.gpu_carry import CarryError, main, missing_parts, pack, unpack


def test_parts_join_back_into_identical_files_across_folders(tmp_path):
    a, b = tmp_path / "a.whl", tmp_path / "b.whl"
    a.write_bytes(os.urandom(2_500_000))
    b.write_bytes(os.urandom(700_001))
    manifest = pack([a, b], tmp_path / "carry", part_mib=1.0)
    assert [p["name"] for p in manifest["parts"]] == ["part-1", "part-2", "part-3", "part-4"]
    assert all(p["size"] <= 2**20 for p in manifest["parts"])
    # parts left on the machine by earlier calls sit elsewhere than the one this call carried
    earlier = tmp_path / "stash"
    earlier.mkdir()
    for name in ("part-1", "part-2", "part-3"):
        shutil.move(tmp_path / "carry" / name, earlier / name)
    assert missing_parts([earlier]) == ["part-4"]
    with pytest.raises(CarryError, match="parts part-4 of 4 are missing"):
        unpack([earlier], tmp_path / "out")
    joined = unpack([earlier, tmp_path / "carry"], tmp_path / "out")
    assert [p.name for p in joined] == ["a.whl", "b.whl"]
    assert joined[0].read_bytes() == a.read_bytes() and joined[1].read_bytes() == b.read_bytes()


def test_a_damaged_part_is_refused(tmp_path, capsys):
    f = tmp_path / "w.whl"
    f.write_bytes(os.urandom(300_000))
    assert main(["pack", str(f), "--out", str(tmp_path / "carry"), "--part-mib", "0.1"]) == 0
    data = tmp_path / "carry" / "part-2" / "data.bin"
    blob = bytearray(data.read_bytes())
    blob[10] ^= 0xFF
    data.write_bytes(bytes(blob))
    assert main(["unpack", str(tmp_path / "carry"), "--out", str(tmp_path / "out")]) == 1
    assert "part-2/data.bin is damaged" in capsys.readouterr().err

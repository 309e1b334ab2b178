"""Harness core: records resume keys and torn lines, atomic writes, experiment validation, tables."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pandas as pd
import pytest

from harness.experiment import Experiment, ExperimentError, from_dict, apply_overrides
from harness.records import RecordStore, point_key, write_atomic
from harness.tables import write_tables


def test_record_store_skips_torn_lines_and_keeps_latest(tmp_path):
    store = RecordStore(tmp_path / "rows.jsonl")
    a = point_key("exp", {"n": 1}, "v1")
    store.append({"key": a, "status": "error", "value": None})
    store.append({"key": a, "status": "ok", "value": 3})
    with store.path.open("a") as handle:
        handle.write('{"key": "torn", "sta')  # a crash mid-write
    assert [r["value"] for r in store.rows()] == [None, 3]
    assert store.done_keys() == {a}
    assert store.latest_by_key()[a]["value"] == 3
    assert point_key("exp", {"n": 1}, "v2") != a and point_key("exp", {"n": 1}, "v1") == a


def test_write_atomic_replaces_whole_file(tmp_path):
    path = tmp_path / "sub" / "t.md"
    write_atomic(path, "one")
    write_atomic(path, "two")
    assert path.read_text() == "two"
    assert [p.name for p in path.parent.iterdir()] == ["t.md"]


@dataclass
class _Spec(Experiment):
    models: list[str] = field(default_factory=list)
    views: list[int] = field(default_factory=lambda: [1])
    dtype: Literal["float32", "bfloat16"] = "float32"
    lr: float = 1e-3


def test_from_dict_names_unknown_keys_and_wrong_types():
    spec = from_dict(_Spec, {"name": "x", "kind": "k", "views": [1, 2], "lr": 1}, "e.yaml")
    assert spec.views == [1, 2] and spec.lr == 1.0
    with pytest.raises(ExperimentError, match=r"e.yaml: unknown key 'view'; allowed: \[.*'views'.*\]"):
        from_dict(_Spec, {"name": "x", "kind": "k", "view": [1]}, "e.yaml")
    with pytest.raises(ExperimentError, match=r"e.yaml.views\[1\]: expected int, got 'two'"):
        from_dict(_Spec, {"name": "x", "kind": "k", "views": [1, "two"]}, "e.yaml")
    with pytest.raises(ExperimentError, match=r"e.yaml.dtype: expected one of 'float32', 'bfloat16', got 'fp8'"):
        from_dict(_Spec, {"name": "x", "kind": "k", "dtype": "fp8"}, "e.yaml")
    with pytest.raises(ExperimentError, match=r"missing required key 'kind'"):
        from_dict(_Spec, {"name": "x"}, "e.yaml")


def test_overrides_parse_yaml_values():
    data = apply_overrides({"a": {"b": 1}}, ["a.b=3", "c=[1, 2]"], "e.yaml")
    assert data == {"a": {"b": 3}, "c": [1, 2]}


def test_write_tables_states_provenance(tmp_path):
    df = pd.DataFrame([{"model": "m", "psnr": 20.123456, "lpips": None, "steps": 1250},
                       {"model": "k", "psnr": 19.5, "lpips": 0.25, "steps": float("nan")}])
    paths = write_tables(df, tmp_path, "t", "Title", ["measured: cpu, float32"])
    md = paths["md"].read_text()
    assert "measured: cpu, float32" in md and "n/a" in md and "20.12" in md and "1250" in md
    assert "nan" not in md and "nan" not in paths["tex"].read_text()
    assert paths["csv"].read_text().splitlines()[0] == "model,psnr,lpips,steps"
    assert "\\toprule" in paths["tex"].read_text()

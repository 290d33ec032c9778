"""``benchmarks/gpu_check.py``, the prepared GPU check: its CPU parts are tested here (argument
handling, the refusal without CUDA, the output folder and its provenance, a failing part recorded
while the others run), on tiny shapes with ``--device cpu --tiny``. The GPU numbers themselves come
only from a run on a GPU machine (benchmarks/gpu/)."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest

from unmemorize.jsonio import strict_loads

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def gpu_check(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    for name in ("gpu_check", "_gpu_parts"):
        sys.modules.pop(name, None)
    return importlib.import_module("gpu_check")


def test_without_cuda_it_says_so_and_writes_nothing(gpu_check, monkeypatch, tmp_path, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the same answer on a machine that has CUDA
    out = tmp_path / "check"
    assert gpu_check.main(["--out", str(out)]) == 2
    assert "needs CUDA" in capsys.readouterr().err
    assert not out.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("argv, message", [
    (["--parts", "slice,warp"], "choose from"),
    (["--parts", ","], "choose from"),
    (["--device", "cpu"], "only for testing the harness"),
    (["--device", "tpu"], "give cuda, cuda:K, or cpu"),
])
def test_bad_arguments_are_refused_by_name(gpu_check, argv, message, capsys):
    with pytest.raises(SystemExit) as stop:
        gpu_check.parse_args(argv)
    assert stop.value.code == 2 and message in capsys.readouterr().err


def test_the_harness_writes_one_folder_with_provenance_and_every_part(gpu_check, tmp_path):
    out = tmp_path / "check"
    assert gpu_check.main(["--device", "cpu", "--tiny", "--parts", "slice,eigh,nccl", "--out", str(out)]) == 0
    record = strict_loads((out / "results.json").read_text())
    assert list(record["parts"]) == ["slice", "eigh", "nccl"]
    assert all(part["status"] == "ok" for part in record["parts"].values()), record["parts"]
    provenance = record["provenance"]
    assert provenance["command"].endswith("--out " + str(out)) and provenance["machine"]["torch"] and provenance["tiny"] is True
    assert len(provenance["commit"]) == 40
    slice_runs = record["parts"]["slice"]["runs"]
    assert [r["passes"] for r in slice_runs] == [6, 3, 1]  # 1, 2 and all 6 MLP matrices per pass
    eigh = record["parts"]["eigh"]
    for matrix in ("rank_deficient", "ill_conditioned"):
        assert eigh[matrix]["float64"]["residual"] < 1e-10 and eigh[matrix]["float64"]["eigenvalue_error_vs_cpu"] < 1e-10
    assert record["parts"]["nccl"]["float64"]["equal"] and record["parts"]["nccl"]["checkpoint"]["bytes"] >= 8 << 20
    assert "| eigh | ok |" in (out / "report.md").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["check"]  # no temporary folder left beside it
    assert gpu_check.main(["--device", "cpu", "--tiny", "--parts", "eigh", "--out", str(out)]) == 2  # never over an old result


def test_a_failing_part_is_recorded_and_the_others_still_run(gpu_check, tmp_path, monkeypatch):
    import _gpu_parts

    def broken(work, args):
        raise RuntimeError("cusolver error: CUSOLVER_STATUS_EXECUTION_FAILED")

    monkeypatch.setattr(_gpu_parts, "part_eigh", broken)
    out = tmp_path / "check"
    assert gpu_check.main(["--device", "cpu", "--tiny", "--parts", "eigh,nccl", "--out", str(out)]) == 0
    parts = json.loads((out / "results.json").read_text())["parts"]
    assert parts["eigh"]["status"] == "failed" and "CUSOLVER_STATUS_EXECUTION_FAILED" in parts["eigh"]["error"]
    assert parts["nccl"]["status"] == "ok"
    assert "RuntimeError" in (out / "report.md").read_text()


@pytest.mark.slow
def test_every_part_runs_on_tiny_shapes(gpu_check, tmp_path):
    out = tmp_path / "check"
    assert gpu_check.main(["--device", "cpu", "--tiny", "--out", str(out)]) == 0
    parts = json.loads((out / "results.json").read_text())["parts"]
    assert {name: part["status"] for name, part in parts.items()} == dict.fromkeys(gpu_check.PART_NAMES, "ok")
    assert parts["resume"]["max_relative_difference"] == 0.0 and parts["resume"]["resumed_metadata_resumed"] is True

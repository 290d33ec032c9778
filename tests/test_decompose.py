"""Cached eigendecompositions (``unmemorize decompose``): same edits as fresh ones, never stale, split over ranks."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import unmemorize as um
from unmemorize.basis import decompose_factors
from unmemorize.basis.cache import INDEX_FILE, cache_dir
from unmemorize.basis.decomposition import DecomposeConfig, decompose_to_cache
from unmemorize.cli import main as cli_main
from unmemorize.errors import UnmemorizeError
from unmemorize.models import get_weight, parse_dtype
from unmemorize.tiny import build_tiny_lm, write_corpus

# float32 vs float64 bases: max over modules of ||W'_32 - W'_64||_F / ||W||_F. float32 eigh has a
# backward error of order d * eps_32 * ||X|| (d <= 64 here: ~4e-6); the projection adds a few eps_32,
# and the edited weight is stored in float32 anyway (eps 6e-8). Measured: <= 7e-6 at rho 0.3 - 0.99.
# The bound holds while both dtypes keep the same pairs (checked): a pair product lambda_i mu_j that
# ties the rho threshold within float32 rounding could flip, changing W' by one near-threshold
# rank-one component -- which is why float64 is the default.
FLOAT32_TOLERANCE = 1e-4


def _collect(root: Path, name: str, corpus_seed: int) -> Path:
    model, tokenizer = build_tiny_lm("llama", seed=0)
    corpus = write_corpus(root / f"{name}.txt", documents=80, seed=corpus_seed)
    targets = um.resolve_targets(model, ["model.layers.*"])  # q/k/v and gate/up share their A
    config = um.CollectConfig(seq_len=32, max_tokens=1000, batch_size=4, progress=False)
    um.save_factors(um.collect_from_files(model, tokenizer, str(corpus), targets, config), root / name, model=model)
    return root / name


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("decompose")
    return {"factors": _collect(root, "factors", 0), "other": _collect(root, "other", 1)}


@pytest.fixture
def factors_dir(folders, tmp_path):
    """A fresh copy of the factor folder, without any cache."""
    return Path(shutil.copytree(folders["factors"], tmp_path / "factors"))


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def _assert_same_bases(a, b):
    assert list(a) == list(b)
    for name in a:
        for side in ("gradient", "activation"):
            x, y = getattr(a[name], side), getattr(b[name], side)
            assert torch.equal(x.eigenvalues, y.eigenvalues) and torch.equal(x.eigenvectors, y.eigenvectors), (name, side)
            assert x.eigenvectors.dtype == y.eigenvectors.dtype and x.clamped == y.clamped


def _edited_weights(factors, rho: float, eigh_dtype: str = "float64", cache: str = "auto"):
    model, _ = build_tiny_lm("llama", seed=0)
    plan = {name: rho for name in factors.modules}
    bases = decompose_factors(factors, parse_dtype(eigh_dtype), cache=cache)
    edit = um.apply_edit(model, plan, factors, um.EditConfig(eigh_dtype=eigh_dtype), bases=bases)
    named = dict(model.named_modules())
    return {n: get_weight(named[n]).clone() for n in plan}, edit


def test_decompose_adds_only_its_cache_to_the_factor_folder(factors_dir):
    before = _snapshot(factors_dir)
    decompose_to_cache(factors_dir, DecomposeConfig(device="cpu"), progress=False)
    after = _snapshot(factors_dir)
    assert {k: v for k, v in after.items() if not k.startswith("eigen-float64/")} == before
    index = json.loads((factors_dir / "eigen-float64" / INDEX_FILE).read_text())
    assert list(index["modules"]) == um.load_factors(factors_dir).modules and index["dtype"] == "float64"
    shared = index["modules"]["model.layers.0.self_attn.k_proj"]
    assert shared["activation_from"] == "model.layers.0.self_attn.q_proj"  # a shared A is decomposed once
    assert "A.eigenvectors" not in load_file(factors_dir / "eigen-float64" / shared["file"])
    assert [p.name for p in factors_dir.iterdir() if p.name.startswith(".eigen")] == []  # no temp or lock left


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_cached_bases_and_edits_equal_fresh_ones_bit_for_bit(factors_dir, dtype):
    decompose_to_cache(factors_dir, DecomposeConfig(dtype=dtype, device="cpu"), progress=False)
    factors = um.load_factors(factors_dir)
    cached = decompose_factors(factors, parse_dtype(dtype), cache="require")
    fresh = decompose_factors(factors, parse_dtype(dtype), cache="off")
    _assert_same_bases(cached, fresh)
    for rho in (0.6, 0.99):
        with_cache, _ = _edited_weights(factors, rho, dtype, cache="require")
        without, _ = _edited_weights(factors, rho, dtype, cache="off")
        assert all(torch.equal(with_cache[n], without[n]) for n in with_cache)


def test_edit_spectrum_and_analysis_reuse_the_cache_without_eigh(factors_dir, monkeypatch):
    decompose_to_cache(factors_dir, DecomposeConfig(device="cpu"), progress=False)
    factors = um.load_factors(factors_dir)
    expected, _ = _edited_weights(factors, 0.8, cache="off")

    def no_eigh(*args, **kwargs):
        raise AssertionError("eigh ran although the cache holds the decomposition")

    monkeypatch.setattr(torch.linalg, "eigh", no_eigh)
    model, _ = build_tiny_lm("llama", seed=0)
    edit = um.apply_edit(model, {n: 0.8 for n in factors.modules}, factors)  # decompose_factors(..., cache="auto") inside
    named = dict(model.named_modules())
    assert all(torch.equal(get_weight(named[n]), expected[n]) for n in expected) and edit.modules
    decompose_factors(um.load_factors(factors_dir, modules=factors.modules[:2]))  # spectrum / analyze call this


def test_a_cache_from_other_factors_is_refused_naming_the_module(factors_dir, folders):
    decompose_to_cache(folders["other"], DecomposeConfig(device="cpu"), overwrite=True, progress=False)
    shutil.copytree(cache_dir(folders["other"], "float64"), cache_dir(factors_dir, "float64"))
    factors = um.load_factors(factors_dir)
    for cache in ("auto", "require"):
        with pytest.raises(UnmemorizeError, match=r"model\.layers\.0\.self_attn\.q_proj: the cached eigendecomposition .* "
                           r"other factors .*fingerprint mismatch.*decompose --factors .* --overwrite"):
            decompose_factors(factors, cache=cache)
    with pytest.raises(UnmemorizeError, match="fingerprint mismatch"):
        um.apply_edit(build_tiny_lm("llama")[0], {factors.modules[3]: 0.5}, factors)
    _assert_same_bases(decompose_factors(factors, cache="off"), decompose_factors(um.load_factors(folders["factors"]), cache="off"))


def test_in_memory_changes_to_the_factors_are_not_covered_by_the_cache(factors_dir):
    decompose_to_cache(factors_dir, DecomposeConfig(device="cpu"), progress=False)
    factors = um.load_factors(factors_dir)
    name = factors.modules[-1]
    factors.gradient[name] = factors.gradient[name] * 2
    with pytest.raises(UnmemorizeError, match=f"{name}: .*gradient factor G fingerprint mismatch"):
        decompose_factors(factors, modules=[name])


def test_without_a_cache_auto_computes_and_require_says_what_to_run(factors_dir):
    factors = um.load_factors(factors_dir)
    _assert_same_bases(decompose_factors(factors), decompose_factors(factors, cache="off"))
    with pytest.raises(UnmemorizeError, match=r"no cached float32 eigendecompositions .* run 'unmemorize decompose --factors .* --dtype float32'"):
        decompose_factors(factors, torch.float32, cache="require")


def test_float32_and_float64_bases_give_edits_within_the_documented_tolerance(factors_dir):
    for dtype in ("float32", "float64"):
        decompose_to_cache(factors_dir, DecomposeConfig(dtype=dtype, device="cpu"), progress=False)
    factors = um.load_factors(factors_dir)
    for rho in (0.3, 0.9, 0.99):
        w64, edit64 = _edited_weights(factors, rho, "float64", cache="require")
        w32, edit32 = _edited_weights(factors, rho, "float32", cache="require")
        for name, original in edit64.originals.items():
            assert edit32.modules[name].kept_pairs == edit64.modules[name].kept_pairs
            difference = float((w32[name].double() - w64[name].double()).norm() / original.double().norm())
            assert difference <= FLOAT32_TOLERANCE, (name, rho, difference)
            assert not torch.equal(w32[name], w64[name]) or rho == 1  # the two dtypes really are different computations


def test_existing_cache_is_refused_unless_overwrite_and_bad_devices_are_named(factors_dir, capsys, monkeypatch):
    assert cli_main(["decompose", "--factors", str(factors_dir), "--device", "cpu", "--quiet"]) == 0
    assert cli_main(["decompose", "--factors", str(factors_dir), "--device", "cpu", "--quiet"]) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert cli_main(["decompose", "--factors", str(factors_dir), "--device", "cpu", "--quiet", "--overwrite"]) == 0
    assert cli_main(["decompose", "--factors", str(factors_dir / "nope")]) == 2
    assert "not a factor folder" in capsys.readouterr().err
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the same on a machine with CUDA (the fixture is shared)
    assert cli_main(["decompose", "--factors", str(factors_dir), "--device", "cuda", "--dtype", "float32"]) == 2
    assert "CUDA is not available" in capsys.readouterr().err
    assert not cache_dir(factors_dir, "float32").exists()


def test_a_failure_midway_leaves_no_cache_and_no_temporary_folder(factors_dir, monkeypatch):
    import unmemorize.basis.decomposition as module

    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(module, "write_module_shard", failing)
    with pytest.raises(OSError):
        decompose_to_cache(factors_dir, DecomposeConfig(device="cpu"), progress=False)
    assert len(calls) == 3
    assert [p.name for p in factors_dir.iterdir() if "eigen" in p.name] == []


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_torchrun_ranks_write_the_same_cache_as_one_process(folders, tmp_path):
    one = Path(shutil.copytree(folders["factors"], tmp_path / "one"))
    two = Path(shutil.copytree(folders["factors"], tmp_path / "two"))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # both runs single-threaded: LAPACK's result may depend on the thread count
    single = subprocess.run([sys.executable, "-m", "unmemorize", "decompose", "--factors", str(one), "--device", "cpu", "--quiet"],
                            env=env, capture_output=True, text=True, timeout=120)
    assert single.returncode == 0, single.stderr[-2000:]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
               "--master-port", str(_free_port()), "-m", "unmemorize", "decompose", "--factors", str(two), "--device", "cpu"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "[rank 0]" in result.stderr and "[rank 1]" in result.stderr
    index_one = json.loads((one / "eigen-float64" / INDEX_FILE).read_text())
    index_two = json.loads((two / "eigen-float64" / INDEX_FILE).read_text())
    assert index_two["world_size"] == 2 and index_one["world_size"] == 1
    strip = lambda index: {n: {k: v for k, v in e.items() if k != "seconds"} for n, e in index["modules"].items()}  # noqa: E731
    assert strip(index_one) == strip(index_two)
    for entry in index_one["modules"].values():
        a, b = load_file(one / "eigen-float64" / entry["file"]), load_file(two / "eigen-float64" / entry["file"])
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # and the ranks' cache is one the library accepts for these factors, giving one process's bases
    _assert_same_bases(decompose_factors(um.load_factors(two), cache="require"), decompose_factors(um.load_factors(one), cache="require"))


def test_a_damaged_cache_is_named_not_used(factors_dir):
    decompose_to_cache(factors_dir, DecomposeConfig(device="cpu"), progress=False)
    factors = um.load_factors(factors_dir)
    index_path = cache_dir(factors_dir, "float64") / INDEX_FILE
    index = json.loads(index_path.read_text())
    shard = cache_dir(factors_dir, "float64") / index["modules"][factors.modules[0]]["file"]
    shard.write_bytes(shard.read_bytes()[:100])  # truncated
    with pytest.raises(UnmemorizeError, match=f"{factors.modules[0]}: cached eigendecomposition .* is unreadable"):
        decompose_factors(factors)
    index_path.write_text("{not json")
    with pytest.raises(UnmemorizeError, match="not a readable eigendecomposition index.*decompose --overwrite"):
        decompose_factors(factors)


def test_a_failing_eigh_is_retried_in_float64_then_on_the_cpu_and_says_so(monkeypatch, capsys):
    """cuSOLVER fails on some ill-conditioned or low-rank matrices: the decomposition is retried and the
    result equals a direct float64 eigh; every try failing raises one clear error."""
    from unmemorize.basis import decompose
    from unmemorize.errors import UnmemorizeError

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(12, 3, dtype=torch.float64, generator=generator)
    matrix = x @ x.T  # rank 3
    reference = decompose(matrix, torch.float64)
    real = torch.linalg.eigh
    calls = []

    def flaky(sym):
        calls.append(sym.dtype)
        if sym.dtype == torch.float32:
            raise torch.linalg.LinAlgError("linalg.eigh: The algorithm failed to converge because the input matrix is ill-conditioned")
        return real(sym)

    monkeypatch.setattr(torch.linalg, "eigh", flaky)
    result = decompose(matrix, torch.float32)
    assert calls == [torch.float32, torch.float64]
    assert result.eigenvalues.dtype == torch.float32 and torch.equal(result.eigenvalues, reference.eigenvalues.float())
    assert "failed to converge" in result.fallback and "computed in float64 on cpu" in result.fallback
    assert "unmemorize: note: a (12, 12) matrix: eigh failed" in capsys.readouterr().err
    assert decompose(matrix, torch.float64).fallback == ""  # no failure, nothing said

    monkeypatch.setattr(torch.linalg, "eigh", lambda sym: (_ for _ in ()).throw(RuntimeError("cusolver error: CUSOLVER_STATUS_EXECUTION_FAILED")))
    with pytest.raises(UnmemorizeError, match=r"eigh of a \(12, 12\) matrix failed every way it was tried: float64 on cpu: cusolver"):
        decompose(matrix, torch.float64)

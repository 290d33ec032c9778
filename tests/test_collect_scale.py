"""Collection at scale, proven on tiny models: torchrun ranks (gloo), SIGKILL + --resume, the
--dry-run plan, bf16 models, accelerate's device map. Each compares with a plain single run."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import relative_error, start_paused
from unmemorize.cli import main
from unmemorize.curvature import load_factors
from unmemorize.tiny import save_tiny_lm, write_corpus

COMMON = ["--seq-len", "32", "--max-tokens", "3000", "--no-progress"]


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    root = tmp_path_factory.mktemp("scale")
    save_tiny_lm(root / "llama", "llama", seed=0)
    save_tiny_lm(root / "llama-other", "llama", seed=1)
    save_tiny_lm(root / "olmoe", "olmoe", seed=0)
    write_corpus(root / "clean.txt", documents=300)
    return root


def collect(ws, out, *extra, model="llama"):
    assert main(["collect", "--model", str(ws / model), "--data", str(ws / "clean.txt"), "--out", str(out), *COMMON, *extra]) == 0
    return load_factors(out)


def largest_error(first, second) -> float:
    return max(max(relative_error(first.activation[n], second.activation[n]), relative_error(first.gradient[n], second.gradient[n]))
               for n in first.modules)


def child_env(**extra):
    return {**os.environ, "OMP_NUM_THREADS": "1", **extra}


@pytest.mark.parametrize("fisher, extra", [("true", []), pytest.param("empirical", [], marks=pytest.mark.slow),
                                           ("true", ["--modules-per-pass", "2", "--checkpoint-every", "200"])],
                         ids=["true", "empirical", "true-3-passes-checkpointed"])  # make test-all runs the empirical case
def test_two_gloo_processes_give_the_factors_of_one(ws, tmp_path, fisher, extra):
    """torchrun, 2 ranks of batch 3, vs one process of batch 8: labels are seeded per window, so the
    sampled labels (true Fisher) do not depend on how windows are shared or batched. The third case
    also reduces the ranks' sums at every checkpoint (rank 0 keeps them, the others restart from 0)
    and runs 3 passes, on a mixture-of-experts model (OLMoE: the passes split its experts' matrices)."""
    model = "olmoe" if extra else "llama"
    single = collect(ws, tmp_path / "single", "--fisher", fisher, "--batch-size", "8", "--seed", "5", model=model)
    with socket.socket() as probe:  # a free port for the rendezvous
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
                             "--master-port", port,
                             "-m", "unmemorize", "collect", "--model", str(ws / model), "--data", str(ws / "clean.txt"),
                             "--out", str(tmp_path / "ranks"), *COMMON, "--fisher", fisher, "--batch-size", "3", "--seed", "5", *extra],
                            env=child_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = load_factors(tmp_path / "ranks")
    assert ranks.metadata["processes"] == 2 and ranks.num_positions == single.num_positions
    assert largest_error(ranks, single) < 1e-5
    assert not (tmp_path / ".ranks.checkpoint").exists()
    if extra:  # every expert's routed positions, summed over the ranks, are those of one process
        assert ranks.metadata["expert_positions"] == single.metadata["expert_positions"] and ranks.metadata["passes"] == 12
    if fisher == "true" and not extra:  # the comparison can fail: another sampler seed gives other factors
        assert largest_error(collect(ws, tmp_path / "seed6", "--batch-size", "8", "--seed", "6"), single) > 1e-3


@pytest.mark.parametrize("per_pass, kill_at, model", [("2", 16, "olmoe")])  # one pass on a dense model: tests/test_resume.py
def test_sigkill_then_resume_gives_the_factors_of_an_uninterrupted_run(ws, tmp_path, capsys, per_pass, kill_at, model):
    """Killed during the 2nd of 12 passes over a mixture of experts' matrices (--modules-per-pass 2: the experts'
    routed-position counts are checkpointed with the sums); a dense one-pass run: tests/test_resume.py."""
    from unmemorize.curvature.plan import collection_plan
    from unmemorize.curvature import CollectConfig
    from unmemorize.models import load_model
    from unmemorize.targets import resolve_targets

    uninterrupted = collect(ws, tmp_path / "whole", "--modules-per-pass", per_pass, "--checkpoint-every", "0", "--batch-size", "4",
                            model=model)
    out = tmp_path / "resumed"
    argv = ["collect", "--model", str(ws / model), "--data", str(ws / "clean.txt"), "--out", str(out), *COMMON,
            "--modules-per-pass", per_pass, "--checkpoint-every", "256", "--batch-size", "4"]
    child = start_paused(argv, "checkpoint-saved", kill_at, tmp_path)
    checkpoint = tmp_path / ".resumed.checkpoint"
    sums = [p for p in checkpoint.iterdir() if p.name.startswith("sums-")]
    loaded, _ = load_model(str(ws / model))
    plan = collection_plan(loaded, resolve_targets(loaded), CollectConfig(modules_per_pass=int(per_pass)))
    if sums:  # the plan's checkpoint size is the real one (within 10%)
        assert abs(sums[0].stat().st_size - plan["checkpoint_sums_bytes"]) <= 0.1 * sums[0].stat().st_size
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=60)
    assert not out.exists() and (checkpoint / "state.json").is_file()
    assert main(argv) == 2 and "holds the checkpoint of an interrupted collection" in capsys.readouterr().err
    assert main([*argv, "--resume", "--seed", "1"]) == 2  # every setting's refusal: tests/test_resume.py
    assert "its seed (0) differs from this run's (1)" in capsys.readouterr().err
    assert main([*argv, "--resume"]) == 0
    resumed = load_factors(out)
    assert resumed.metadata["resumed"] and resumed.num_positions == uninterrupted.num_positions
    assert resumed.modules == uninterrupted.modules
    for name in uninterrupted.modules:  # the same sums, added in the same order: bit for bit
        assert torch.equal(resumed.activation[name], uninterrupted.activation[name]), name
        assert torch.equal(resumed.gradient[name], uninterrupted.gradient[name]), name
    if model == "olmoe":
        assert resumed.metadata["expert_positions"] == uninterrupted.metadata["expert_positions"]
    assert not checkpoint.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".resumed.")]


def test_dry_run_predicts_the_bytes_the_run_writes(ws, tmp_path, capsys):
    import json

    for per_pass in ("0", "2"):
        argv = ["collect", "--model", str(ws / "llama"), "--data", str(ws / "clean.txt"), "--out", str(tmp_path / per_pass), *COMMON,
                "--modules-per-pass", per_pass]
        assert main([*argv, "--dry-run"]) == 0
        plan = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert not (tmp_path / per_pass).exists()  # a dry run writes nothing
        assert plan["warmup"]["tokens_per_second"] > 0 and plan["estimated_seconds"] > 0
        assert (plan["read_ahead"]["tokens"], plan["read_ahead"]["windows"]) == (3000, 94)  # exactly what the run reads
        collect(ws, tmp_path / per_pass, "--modules-per-pass", per_pass)
        written = sum(p.stat().st_size for p in (tmp_path / per_pass).glob("*.safetensors"))
        assert abs(plan["factor_file_bytes"] - written) <= 0.1 * written, (plan["factor_file_bytes"], written)
    unbounded = ["collect", "--model", str(ws / "llama"), "--data", str(ws / "clean.txt"), "--out", str(tmp_path / "unbounded"),
                 "--seq-len", "32", "--no-progress", "--max-tokens", "0"]  # 0: no budget
    assert main([*unbounded, "--dry-run"]) == 0  # no budget: the data are checked, the time is unknown
    plan = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert plan["estimated_seconds"] is None and plan["read_ahead"]["tokens"] > 3000


def test_a_bfloat16_model_accumulates_float32_factors_close_to_the_float32_models(ws, tmp_path):
    full = collect(ws, tmp_path / "f32", "--fisher", "empirical")
    half = collect(ws, tmp_path / "bf16", "--fisher", "empirical", "--model-dtype", "bfloat16")
    other = collect(ws, tmp_path / "other", "--fisher", "empirical", model="llama-other")
    assert all(t.dtype == torch.float32 for t in [*half.activation.values(), *half.gradient.values()])
    assert half.metadata["model_dtype"] == "bfloat16"
    assert largest_error(half, full) < 0.03  # bfloat16 keeps 8 bits: ~0.4% per operation through two blocks
    assert largest_error(other, full) > 0.3  # control: other weights are far outside that tolerance


def test_device_map_on_the_cpu_gives_the_factors_of_plain_loading(ws, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # on the CPU also where CUDA exists: accelerate asks these
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    plain = collect(ws, tmp_path / "plain")
    mapped = collect(ws, tmp_path / "mapped", "--device-map", "auto")
    for name in plain.modules:
        assert torch.equal(plain.activation[name], mapped.activation[name]) and torch.equal(plain.gradient[name], mapped.gradient[name])


def test_device_map_targets_offloaded_off_the_devices_are_refused_by_name(ws, tmp_path, capsys, monkeypatch):
    """accelerate keeps offloaded modules' weights on 'meta' and streams them in: their weights cannot be
    fingerprinted or edited. --max-memory forces the offload here (disk, on a CPU machine)."""
    from unmemorize.matrices import offloaded_matrices
    from unmemorize.models import load_model
    from unmemorize.targets import resolve_targets

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    out = tmp_path / "offloaded"
    argv = ["collect", "--model", str(ws / "llama"), "--data", str(ws / "clean.txt"), "--out", str(out), *COMMON, "--device-map", "auto"]
    assert main([*argv, "--max-memory", "cpu=20KiB"]) == 2
    error = capsys.readouterr().err
    assert "--device-map left 6 target module(s) offloaded to the CPU or disk" in error and "model.layers.0.mlp.gate_proj" in error
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".offloaded")]
    model, _ = load_model(str(ws / "llama"), device_map="auto", max_memory={"cpu": "20KiB"})
    targets = resolve_targets(model)
    assert offloaded_matrices(model, targets) == targets
    roomy, _ = load_model(str(ws / "llama"), device_map="auto", max_memory={"cpu": "2GiB"})  # control: room for every block
    assert offloaded_matrices(roomy, targets) == []


def test_edit_dry_run_predicts_the_folder_it_writes(ws, tmp_path, capsys):
    import json

    factors = tmp_path / "factors"
    collect(ws, factors)
    argv = ["edit", "--model", str(ws / "llama"), "--factors", str(factors), "--out", str(tmp_path / "edited"), "--rho", "0.8"]
    assert main([*argv, "--dry-run"]) == 0
    estimate = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert not (tmp_path / "edited").exists() and estimate["matrices_decomposed"] == 10  # gate and up share one A per block
    assert main(argv) == 0
    written = sum(p.stat().st_size for p in (tmp_path / "edited").iterdir())
    assert abs(estimate["disk_bytes"] - written) <= 0.1 * written, (estimate["disk_bytes"], written)


def test_a_resume_must_match_the_model_dtype_and_the_device_type(ws):
    from unmemorize.curvature import CollectConfig
    from unmemorize.curvature.checkpoint import Checkpoint
    from unmemorize.errors import UnmemorizeError
    from unmemorize.curvature.collect import collection_settings
    from unmemorize.data import list_data_files
    from unmemorize.models import load_model
    from unmemorize.targets import resolve_targets

    settings = {}
    for dtype in ("float32", "bfloat16"):
        model, _ = load_model(str(ws / "llama"), dtype)
        settings[dtype] = collection_settings(model, resolve_targets(model), list_data_files(ws / "clean.txt"), CollectConfig(), "next_token")
    assert (settings["float32"]["model_dtype"], settings["bfloat16"]["model_dtype"]) == ("float32", "bfloat16")
    assert settings["float32"]["device_type"] == "cpu"
    assert settings["float32"]["weights"] == settings["bfloat16"]["weights"]  # why the dtype must be a setting of its own
    folder = ws / ".dtype-check.checkpoint"
    Checkpoint(folder, settings["float32"]).save({"windows": 0}, {})
    elsewhere = {**settings["float32"], "device_type": "cuda"}
    with pytest.raises(UnmemorizeError, match=r"its device_type \('cpu'\) differs from this run's \('cuda'\)"):
        Checkpoint(folder, elsewhere).load()
    Checkpoint(folder, settings["float32"]).remove()


def test_a_checkpoint_is_on_disk_before_state_json_names_it(tmp_path, monkeypatch):
    """fsync of the sums file and of the new state before the rename that publishes them, and of the
    folder after it: a node crash cannot leave a state.json naming sums that never reached the disk."""
    from unmemorize.curvature import checkpoint as module

    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(module.os, "fsync", lambda fd: events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))) or real_fsync(fd))
    monkeypatch.setattr(module.os, "replace", lambda a, b: events.append(("replace", str(b))) or real_replace(a, b))
    folder = tmp_path / ".out.checkpoint"
    saved = module.Checkpoint(folder, {"seed": 0})
    saved.save({"windows": 4}, {"m.A": torch.ones(3, 3), "m.G": torch.ones(2, 2)})
    sums = str(folder / "sums-000001.safetensors")
    assert events == [("fsync", sums), ("fsync", str(folder / "state.json.tmp")), ("replace", str(folder / "state.json")),
                      ("fsync", str(folder))]


def test_the_default_checkpoint_cadence_counts_work_time_only(monkeypatch):
    """A resumed run spends its first seconds loading sums and re-reading data up to the checkpoint:
    the cadence must come from the rounds' own time (1 s each here), not from the start-up (100 s)."""
    from unmemorize.curvature import CollectConfig
    from unmemorize.curvature import collect as module
    from unmemorize.curvature.distributed import SINGLE_PROCESS

    now = [0.0]
    monkeypatch.setattr(module.time, "perf_counter", lambda: now[0])
    cadence = module._Cadence(CollectConfig(), SINGLE_PROCESS, tokens_per_round=4096)  # t = 0
    due = []
    for step in range(5):
        now[0] = 100.0 + step  # round 0 ends after 100 s (start-up, re-reading, warm-up); rounds 1-4 take 1 s each
        due.append(cadence.due(step))
    assert cadence.every == module.CHECKPOINT_SECONDS  # one round per second: a checkpoint every 600 rounds
    assert not any(due)
    assert module._Cadence(CollectConfig(checkpoint_every=8192), SINGLE_PROCESS, 4096).every == 2


def test_torchrun_ranks_join_with_the_configured_timeout(monkeypatch):
    """NCCL's default 10 minutes can end a healthy run while rank 0 writes a large checkpoint: the
    timeout is ours to set (default one hour, ``--process-group-timeout``)."""
    import datetime

    import torch.distributed as dist

    from unmemorize.curvature import distributed

    joined = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda **kwargs: joined.append(kwargs))
    group = distributed.init_from_environment("cpu", timeout_seconds=7200)
    assert joined == [{"backend": "gloo", "timeout": datetime.timedelta(seconds=7200)}]
    assert (group.rank, group.world_size) == (1, 2)
    distributed.init_from_environment("cpu")
    assert joined[1]["timeout"] == datetime.timedelta(seconds=distributed.DEFAULT_TIMEOUT_SECONDS) == datetime.timedelta(hours=1)


def _wide_model(folder):
    """A Llama whose float64 accumulators (~450 MB for its six MLP matrices, 75 MB for one) dwarf its weights."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    from unmemorize.tiny import make_tokenizer

    tokenizer = make_tokenizer()
    config = LlamaConfig(hidden_size=96, intermediate_size=3072, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                         vocab_size=len(tokenizer), max_position_embeddings=64, tie_word_embeddings=False)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


WIDE_ACCUMULATORS = 2 * (3 * 3072**2 + 2 * 96**2) * 8  # float64, all six matrices (gate and up share one A)


PEAK_WRAPPER = ("import sys\nfrom unmemorize.cli import main\ncode = main(sys.argv[2:])\n"
                "hwm = next(line for line in open('/proc/self/status') if line.startswith('VmHWM:')).split()[1]\n"
                "open(sys.argv[1], 'w').write(hwm)\nsys.exit(code)\n")


def _peak_rss_of(argv: list[str], folder) -> tuple[int, str]:
    """(peak resident bytes, stdout) of ``unmemorize ARGV`` in a child process, read by the child itself
    (VmHWM of its own memory at exit: the rusage of a child also counts its parent's peak from before exec)."""
    peak = folder / "child.peak"
    result = subprocess.run([sys.executable, "-c", PEAK_WRAPPER, str(peak), *argv], capture_output=True, text=True, env=child_env(),
                            stdin=subprocess.DEVNULL, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return int(peak.read_text()) * 1024, result.stdout


@pytest.mark.parametrize("per_pass", [pytest.param("1", marks=pytest.mark.slow), "2", pytest.param("0", marks=pytest.mark.slow)],
                         ids=["one-module-a-pass", "two-modules-a-pass", "all-in-one-pass"])  # make test runs the 3-pass case
def test_the_dry_run_plans_the_peak_memory_of_the_run_it_is_for(tmp_path, per_pass):
    """A model whose float64 accumulators (~450 MB for all six MLP matrices, 75 MB for one) dwarf its
    weights: the dry-run's planned CPU peak is within 15% of the run's measured peak resident size,
    for one, two and all modules per pass (the warm-up runs only the largest pass, counts the
    accumulators once and includes the process's own resident memory)."""
    folder = _wide_model(tmp_path / "wide")
    corpus = write_corpus(tmp_path / "clean.txt", documents=200)
    argv = ["collect", "--model", str(folder), "--data", str(corpus), "--out", str(tmp_path / "factors"), "--seq-len", "32",
            "--batch-size", "4", "--max-tokens", "2000", "--dtype", "float64", "--modules-per-pass", per_pass, "--no-progress",
            "--checkpoint-every", "0"]
    _, printed = _peak_rss_of([*argv, "--dry-run"], tmp_path)
    plan = json.loads(printed.strip().splitlines()[-1])
    planned = plan["peak_bytes_per_device"]["cpu"]
    measured, _ = _peak_rss_of(argv, tmp_path)
    print(f"modules per pass {per_pass}: planned {planned / 2**20:.0f} MiB, measured {measured / 2**20:.0f} MiB")
    assert abs(planned - measured) <= 0.15 * measured, (per_pass, planned / 2**20, measured / 2**20)
    accumulators = plan["accumulator_bytes_per_device"]["cpu"]
    assert accumulators == {"1": (3072**2 + 96**2) * 8, "2": 2 * (3072**2 + 96**2) * 8, "0": WIDE_ACCUMULATORS}[per_pass]


def test_start_up_reads_only_what_the_budget_needs_not_the_whole_folder(tmp_path, monkeypatch):
    """A corpus folder with an 8 GiB file after enough text for --max-tokens: the run never opens it
    (no hashing of every byte before the first step; the fingerprint is of the windows read)."""
    import builtins

    import unmemorize.corpus as corpus

    folder = tmp_path / "corpus"
    folder.mkdir()
    write_corpus(folder / "a.txt", documents=300)
    with open(folder / "z-huge.txt", "wb") as huge:
        huge.truncate(8 << 30)  # sparse: no disk used
    save_tiny_lm(tmp_path / "llama", "llama", seed=0)
    opened = []
    real_open = builtins.open
    monkeypatch.setattr(corpus, "open", lambda path, *a, **k: opened.append(Path(path).name) or real_open(path, *a, **k), raising=False)
    start = time.perf_counter()
    assert main(["collect", "--model", str(tmp_path / "llama"), "--data", str(folder), "--out", str(tmp_path / "factors"), *COMMON,
                 "--max-tokens", "500"]) == 0
    assert "z-huge.txt" not in opened and "a.txt" in opened
    assert time.perf_counter() - start < 60
    info = json.loads((tmp_path / "factors" / "factors.json").read_text())
    assert len(info["data"]["fingerprint"]) == 64 and info["data"]["fingerprint_of"].startswith("the token windows read")


def test_a_resume_checks_the_windows_before_its_checkpoint(tmp_path):
    """The checkpoint records the sha256 of the windows it counted; a resume on data whose content changed
    (same names and sizes, so the listing fingerprint agrees) is refused, on the same data it goes on."""
    from unmemorize.curvature import CollectConfig
    from unmemorize.curvature.collect import WindowSteps
    from unmemorize.data import list_data_files
    from unmemorize.errors import UnmemorizeError
    from unmemorize.tiny import make_tokenizer

    path = write_corpus(tmp_path / "a.txt", documents=200)
    files, tokenizer, config = list_data_files(path), make_tokenizer(), CollectConfig(seq_len=16, batch_size=4, max_tokens=2000)
    first = WindowSteps(files, tokenizer, config, pad_id=0)
    steps = iter(first(0))
    for _ in range(3):
        step = next(steps)
    position, digest = step.position, first.digest  # what a checkpoint after 3 rounds records
    again = WindowSteps(files, tokenizer, config, pad_id=0)
    again.expected = (position, digest)
    resumed = list(again(position))
    assert resumed and resumed[0].batch["window_index"][0] == position
    text = path.read_text()
    path.write_text(text.replace("cat", "dog", 1) if "cat" in text else text.replace("the", "a  ", 1))  # same size, other content
    changed = WindowSteps(list_data_files(path), tokenizer, config, pad_id=0)
    changed.expected = (position, digest)
    with pytest.raises(UnmemorizeError, match=f"its first {position} windows hash to"):
        list(changed(position))


def test_ranks_that_hold_other_weights_or_read_other_data_stop_with_the_reason(tmp_path):
    """Under torchrun every rank compares a hash of its target weights, and of the windows it read at each
    checkpoint and pass end; a disagreement stops every rank with the reason (not a hang, not wrong factors)."""
    from unmemorize.curvature import CollectConfig, collect_from_files
    from unmemorize.curvature.distributed import ProcessGroup
    from unmemorize.errors import UnmemorizeError
    from unmemorize.models import load_model
    from unmemorize.targets import resolve_targets

    class Disagreeing(ProcessGroup):
        def __init__(self, agree_first: int):
            super().__init__()
            self.agree_first = agree_first
            self.calls = 0

        def same_on_all_ranks(self, value: int) -> bool:
            self.calls += 1
            return self.calls <= self.agree_first

    save_tiny_lm(tmp_path / "llama", "llama", seed=0)
    model, tokenizer = load_model(str(tmp_path / "llama"))
    corpus = write_corpus(tmp_path / "a.txt", documents=100)
    config = CollectConfig(seq_len=16, batch_size=4, max_tokens=600, progress=False, checkpoint_every=0)
    targets = resolve_targets(model)
    with pytest.raises(UnmemorizeError, match="the ranks hold different weights for the target modules"):
        collect_from_files(model, tokenizer, str(corpus), targets, config, group=Disagreeing(0))
    with pytest.raises(UnmemorizeError, match="the ranks read different data"):
        collect_from_files(model, tokenizer, str(corpus), targets, config, group=Disagreeing(1))
    assert collect_from_files(model, tokenizer, str(corpus), targets, config, group=Disagreeing(99)).num_positions > 0


def _torchrun(argv: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    with socket.socket() as probe:  # a free port for the rendezvous
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
                           "--master-port", port, "-m", "unmemorize", *argv], env=child_env(), capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def test_when_rank_0_refuses_every_rank_stops_with_its_message(ws, tmp_path):
    """Rank 0 refuses an output it may not replace: rank 1 stops at once with rank 0's reason (it used to wait
    at a collective until the timeout, whose traceback hid it)."""
    user = tmp_path / "user-folder"
    user.mkdir()
    (user / "notes.txt").write_text("mine")
    base = ["collect", "--model", str(ws / "llama"), "--data", str(ws / "clean.txt"), *COMMON, "--process-group-timeout", "90"]
    result = _torchrun([*base, "--out", str(user)])
    assert result.returncode != 0
    assert "rank 1: stopped because rank 0 refused the run:" in result.stderr and "already exists" in result.stderr
    assert (user / "notes.txt").read_text() == "mine"


@pytest.mark.slow  # the same broadcast as the output's refusal above, from the resume point (make test-all)
def test_when_rank_0_refuses_a_checkpoint_every_rank_stops_with_its_message(ws, tmp_path):
    base = ["collect", "--model", str(ws / "llama"), "--data", str(ws / "clean.txt"), *COMMON, "--process-group-timeout", "90"]
    out = tmp_path / "resumed"
    argv = [*base, "--out", str(out), "--checkpoint-every", "256", "--batch-size", "4"]
    child = start_paused(argv, "checkpoint-saved", 1, tmp_path)
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=60)
    start = time.perf_counter()
    result = _torchrun([*argv[:-2], "--batch-size", "2", "--resume", "--seed", "1"])
    assert result.returncode != 0 and time.perf_counter() - start < 90  # well before the 90 s collective timeout
    assert "rank 1: stopped because rank 0 refused the checkpoint:" in result.stderr and "its seed (0) differs" in result.stderr


def test_ranks_other_than_0_hold_no_copy_of_the_factors(tmp_path):
    """Every rank accumulates the sums, only rank 0 needs the factors: rank 1's peak memory growth over the
    collection (recorded per rank in factors.json) stays near the accumulators, rank 0's holds both."""
    folder = _wide_model(tmp_path / "wide")
    corpus = write_corpus(tmp_path / "clean.txt", documents=200)
    result = _torchrun(["collect", "--model", str(folder), "--data", str(corpus), "--out", str(tmp_path / "factors"), "--seq-len", "32",
                        "--batch-size", "2", "--max-tokens", "1500", "--dtype", "float64", "--no-progress", "--checkpoint-every", "0"])
    assert result.returncode == 0, result.stderr[-3000:]
    growth = json.loads((tmp_path / "factors" / "factors.json").read_text())["peak_resident_growth_bytes_per_rank"]
    print(f"peak growth per rank: {[round(g / 2**20) for g in growth]} MiB; accumulators {WIDE_ACCUMULATORS / 2**20:.0f} MiB")
    assert len(growth) == 2
    assert growth[1] < 1.5 * WIDE_ACCUMULATORS < growth[0]  # rank 1: the sums; rank 0: the sums and the factors


def test_ranks_that_cannot_see_the_output_folder_stop_before_any_work(tmp_path):
    """With several nodes --out must be on a shared file system (the checkpoint lives beside it): a rank
    that cannot see rank 0's marker stops, and so does rank 0; ranks that share it go on (the gloo runs)."""
    from unmemorize.curvature.distributed import ProcessGroup
    from unmemorize.curvature.job import check_shared_output
    from unmemorize.errors import UnmemorizeError

    class OtherNode(ProcessGroup):  # rank 1 on a node where rank 0's folder does not exist
        def broadcast_text(self, text: str, size: int = 4096) -> str:
            return str(tmp_path / "rank-0-only" / ".out.shared-check-abc")

        def same_on_all_ranks(self, value: int) -> bool:
            return value == 1  # rank 0 saw its marker (1); the ranks agree only if this one did too

    with pytest.raises(UnmemorizeError, match="rank 1: not every rank sees the folder of --out"):
        check_shared_output(OtherNode(rank=1, world_size=2), None)

    class SameNode(OtherNode):
        def broadcast_text(self, text: str, size: int = 4096) -> str:
            return text

    out = tmp_path / "out"
    check_shared_output(SameNode(rank=0, world_size=2), out)  # rank 0: writes, sees and removes its marker
    assert not [p for p in tmp_path.iterdir() if ".shared-check-" in p.name]


def test_the_dry_run_refuses_to_plan_under_torchrun(ws, tmp_path, capsys, monkeypatch):
    """Every torchrun rank would plan on the same device and print its own plan: the dry-run plans one
    process and says so (run it alone)."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    argv = ["collect", "--model", str(ws / "llama"), "--data", str(ws / "clean.txt"), "--out", str(tmp_path / "f"), *COMMON, "--dry-run"]
    assert main(argv) == 2
    assert "collect --dry-run plans one process; run it without torchrun" in capsys.readouterr().err
    assert not (tmp_path / "f").exists()

"""The six parts of ``gpu_check.py``. Each is ``part_NAME(work, args) -> dict`` of JSON-ready numbers;
``work`` is a scratch folder (removed afterwards); ``args.tiny`` shrinks every shape to seconds.
A part raises on a failure it cannot measure around; the harness records it and goes on."""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
OFFLINE = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def sync(device: str) -> None:
    if device != "cpu":
        torch.cuda.synchronize(device)


def gib(count: int | None) -> float | None:
    return None if count is None else round(count / 2**30, 4)


def cli(args: list, timeout: float = 600, env: dict | None = None, popen: bool = False):
    """``python -m unmemorize ARGS`` from this checkout (or the ``-c`` wrapper's code), offline."""
    environment = {**os.environ, **OFFLINE, "PYTHONPATH": str(ROOT / "src"), **(env or {})}
    command = [sys.executable, *(args if args[0] == "-c" else ["-m", "unmemorize", *args])]
    command = [str(a) for a in command]
    if popen:
        return subprocess.Popen(command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    result = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command[1:6])} ... exited {result.returncode}: {result.stderr.strip()[-1500:]}")
    return result


def small_model_folder(folder: Path, hidden: int, layers: int) -> Path:
    """A random-init Llama (the tiny word tokenizer's vocabulary) saved as a Hugging Face folder."""
    from transformers import AutoModelForCausalLM

    from unmemorize.tiny import make_tokenizer, tiny_config

    if (folder / "config.json").is_file():
        return folder
    torch.manual_seed(0)
    config = tiny_config("llama", hidden=hidden, layers=layers)
    config.max_position_embeddings = 1024
    AutoModelForCausalLM.from_config(config).save_pretrained(folder, safe_serialization=True)
    make_tokenizer().save_pretrained(folder)
    return folder


def corpus(path: Path, documents: int) -> Path:
    from unmemorize.tiny import write_corpus

    return path if path.is_file() else write_corpus(path, documents=documents, seed=0)


def max_difference(left, right) -> dict:
    """Largest relative Frobenius difference over the A and G of two factor sets (KFACFactors)."""
    worst = 0.0
    for kind in ("activation", "gradient"):
        for name, tensor in getattr(left, kind).items():
            other = getattr(right, kind)[name]
            worst = max(worst, float((tensor.double() - other.double()).norm() / tensor.double().norm().clamp_min(1e-300)))
    return {"max_relative_difference": worst}


# ------------------------------------------------------------------------------------------- 1. slice
def part_slice(work: Path, args) -> dict:
    """Peak memory and step time of collecting every MLP matrix of a 7B-shaped bf16 slice, vs the plan."""
    from transformers import LlamaConfig, AutoModelForCausalLM

    from unmemorize.curvature import CollectConfig, collect_factors
    from unmemorize.curvature.plan import collection_plan, warmup
    from unmemorize.targets import resolve_targets

    device, tiny = args.device, args.tiny
    hidden, intermediate, heads, vocab = (64, 128, 4, 512) if tiny else (4096, 11008, 32, 32000)
    batch, seq, batches = (2, 32, 4) if tiny else (8, 512, 4)
    config = LlamaConfig(hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=2, num_attention_heads=heads,
                         num_key_value_heads=heads, vocab_size=vocab, max_position_embeddings=max(seq, 128), tie_word_embeddings=False)
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype).eval()
    targets = resolve_targets(model)
    generator = torch.Generator().manual_seed(0)
    rows = [torch.randint(3, vocab, (seq,), generator=generator).tolist() for _ in range(batch * batches)]
    work.mkdir(parents=True)
    data = work / "tokens.jsonl"
    data.write_text("".join(json.dumps({"input_ids": row}) + "\n" for row in rows))
    data_batches = [{"input_ids": torch.tensor(rows[k * batch:(k + 1) * batch], device=device),
                     "attention_mask": torch.ones(batch, seq, dtype=torch.long, device=device)} for k in range(batches)]
    runs = []
    for per_pass in (1, 2, 0):
        collect = CollectConfig(seq_len=seq, batch_size=batch, modules_per_pass=per_pass, progress=False, checkpoint_every=0)
        plan = collection_plan(model, targets, collect)
        speed = warmup(model, None, str(data), targets, collect)
        growth = speed["growth_bytes_per_device"]  # as collect --dry-run plans it (curvature/plan.py)
        planned = {d: plan["weight_bytes_per_device"].get(d, 0) + growth.get(d, 0) for d in growth if d != "cpu"}
        planned["cpu"] = (speed["resident_bytes_before"] or 0) + growth.get("cpu", 0)
        if device != "cpu":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        sync(device)
        start = time.perf_counter()
        collect_factors(model, data_batches, targets, collect)
        sync(device)
        seconds = time.perf_counter() - start
        measured = torch.cuda.max_memory_allocated(device) if device != "cpu" else None
        key = str(torch.device(device)) if device != "cpu" else "cpu"
        runs.append({"modules_per_pass": per_pass or len(targets), "passes": plan["passes"], "seconds": round(seconds, 3),
                     "seconds_per_batch_per_pass": round(seconds / batches / plan["passes"], 4),
                     "tokens_per_second": round(batch * seq * batches / seconds, 1),
                     "planned_peak_gib": {d: gib(v) for d, v in planned.items()}, "measured_peak_gib": gib(measured),
                     "planned_over_measured": round(planned.get(key, 0) / measured, 3) if measured else None,
                     "plan_accumulators_gib": {d: gib(v) for d, v in plan["accumulator_bytes_per_device"].items()},
                     "plan_growth_gib": {d: gib(v) for d, v in growth.items()}})
    return {"shape": {"hidden": hidden, "intermediate": intermediate, "blocks": 2, "vocab": vocab, "dtype": str(dtype)},
            "batch": [batch, seq], "batches": batches, "targets": len(targets), "runs": runs}


# -------------------------------------------------------------------------------------------- 2. eigh
def _test_matrices(n: int, device: str) -> dict[str, torch.Tensor]:
    generator = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(n, n // 4, dtype=torch.float64, device=device, generator=generator)
    rank_deficient = x @ x.T / (n // 4)  # rank n/4: three quarters of the eigenvalues are 0
    q, _ = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64, device=device, generator=generator))
    values = torch.logspace(0, -12, n, dtype=torch.float64, device=device)
    ill = (q * values) @ q.T  # condition number 1e12
    return {"rank_deficient": (rank_deficient + rank_deficient.T) / 2, "ill_conditioned": (ill + ill.T) / 2}


def part_eigh(work: Path, args) -> dict:  # noqa: ARG001 - no files
    from unmemorize.basis import decompose

    device = args.device
    n = 96 if args.tiny else 11008
    results = {"n": n}
    for name, matrix in _test_matrices(n, device).items():
        entry = {}
        if not args.no_cpu_reference:
            start = time.perf_counter()
            reference = torch.linalg.eigvalsh(matrix.cpu())
            entry["cpu_float64_eigvalsh_seconds"] = round(time.perf_counter() - start, 2)
        else:
            reference = None
        scale = float(matrix.norm())
        for dtype in (torch.float32, torch.float64):
            label = str(dtype).replace("torch.", "")
            try:
                cast = matrix.to(dtype)
                sync(device)
                start = time.perf_counter()
                values, vectors = torch.linalg.eigh(cast)
                sync(device)
                seconds = time.perf_counter() - start
                v64, w64 = vectors.double(), values.double()
                row = {"seconds": round(seconds, 3), "finite": bool(torch.isfinite(values).all() and torch.isfinite(vectors).all()),
                       "residual": float((matrix @ v64 - v64 * w64).norm() / scale),
                       "orthogonality": float((v64.T @ v64 - torch.eye(n, dtype=torch.float64, device=device)).norm() / math.sqrt(n)),
                       "negative_eigenvalues": int((values < 0).sum())}
                if reference is not None:
                    row["eigenvalue_error_vs_cpu"] = float((w64.cpu() - reference).abs().max() / reference.abs().max())
            except Exception as exc:  # noqa: BLE001 - the cuSOLVER failures this part looks for
                row = {"error": f"{type(exc).__name__}: {exc}"[:500]}
            entry[label] = row
            try:
                start = time.perf_counter()
                ours = decompose(matrix, dtype, device)
                sync(device)
                entry[f"basis.decompose_{label}"] = {"seconds": round(time.perf_counter() - start, 3), "clamped": ours.clamped}
            except Exception as exc:  # noqa: BLE001
                entry[f"basis.decompose_{label}"] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
        results[name] = entry
        del matrix
    return results


# -------------------------------------------------------------------------------------- 3. device map
def part_device_map(work: Path, args) -> dict:
    from transformers import AutoModelForCausalLM

    from unmemorize.curvature import CollectConfig, collect_from_files, load_factors
    from unmemorize.models import load_model, load_tokenizer
    from unmemorize.targets import resolve_targets

    device = args.device
    folder = small_model_folder(work / "model", hidden=64 if args.tiny else 512, layers=4)
    text = corpus(work / "corpus.txt", 300 if args.tiny else 3000)
    config = CollectConfig(seq_len=64, batch_size=4, max_tokens=4000 if args.tiny else 100_000, progress=False, checkpoint_every=0)
    plain, tokenizer = load_model(str(folder), "float32", device)
    targets = resolve_targets(plain)
    reference = collect_from_files(plain, tokenizer, str(text), targets, config)
    del plain
    result = {}
    # forced offload: accelerate's max_memory leaves room for about one block on the device
    index = 0 if device == "cpu" else (torch.device(device).index or 0)
    budget = {"cpu": "20MiB"} if device == "cpu" else {index: "20MiB", "cpu": "8GiB"}
    try:
        offloaded = AutoModelForCausalLM.from_pretrained(folder, device_map="auto", max_memory=budget,
                                                         offload_folder=str(work / "offload")).eval()
        placement = sorted({str(v) for v in getattr(offloaded, "hf_device_map", {"": "one device"}).values()})
        result["forced_offload"] = {"max_memory": budget, "placement": placement}
        factors = collect_from_files(offloaded, load_tokenizer(str(folder)), str(text), targets, config)
        result["forced_offload"].update(max_difference(reference, factors))
    except Exception as exc:  # noqa: BLE001 - the break this part looks for
        result.setdefault("forced_offload", {})["error"] = f"{type(exc).__name__}: {exc}"[:1500]
    # the CLI: an all-device map against plain --device
    common = ["--data", text, "--seq-len", "64", "--batch-size", "4", "--max-tokens", str(config.max_tokens), "--no-progress"]
    cli(["collect", "--model", folder, "--out", work / "plain", "--device", device, *common])
    try:
        cli(["collect", "--model", folder, "--out", work / "mapped", "--device-map", "auto", *common])
        result["cli_device_map_auto_vs_plain"] = max_difference(load_factors(work / "plain"), load_factors(work / "mapped"))
    except Exception as exc:  # noqa: BLE001
        result["cli_device_map_auto_vs_plain"] = {"error": f"{type(exc).__name__}: {exc}"[:1500]}
    return result


# ------------------------------------------------------------------------------------------ 4. resume
RESUME_WRAPPER = ("import sys, unmemorize.curvature.collect as c; c.CHECKPOINT_SECONDS = float(sys.argv[1]); "
                  "from unmemorize.cli import main; sys.exit(main(sys.argv[2:]))")


def _watch(state: Path, stop: threading.Event, times: list) -> None:
    last = None
    while not stop.is_set():
        try:
            mtime = state.stat().st_mtime
            if mtime != last:
                times.append(time.time())
                last = mtime
        except FileNotFoundError:
            pass
        time.sleep(0.02)


def part_resume(work: Path, args) -> dict:
    from unmemorize.curvature import load_factors

    device = args.device
    folder = small_model_folder(work / "model", hidden=64 if args.tiny else 1024, layers=2 if args.tiny else 4)
    text = corpus(work / "corpus.txt", 2000 if args.tiny else 60_000)
    seconds = "0.3" if args.tiny else "1.0"  # checkpoint about every this many seconds of work
    common = ["--model", folder, "--data", text, "--device", device, "--seq-len", "128", "--batch-size", "8", "--no-progress"]
    whole = work / "whole"
    start = time.perf_counter()
    cli(["collect", *common, "--out", whole])
    uninterrupted_seconds = time.perf_counter() - start
    out = work / "resumed"
    state = out.with_name(f".{out.name}.checkpoint") / "state.json"
    child = cli(["-c", RESUME_WRAPPER, seconds, "collect", *common, "--out", out], popen=True)
    deadline = time.time() + 300
    while not state.is_file() and child.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    killed = child.poll() is None
    if killed:
        child.send_signal(signal.SIGKILL)
    child.wait()
    if not killed:
        return {"note": "the run ended before its first checkpoint; nothing to resume", "uninterrupted_seconds": round(uninterrupted_seconds, 2)}
    stop, times = threading.Event(), []
    watcher = threading.Thread(target=_watch, args=(state, stop, times), daemon=True)
    resume_start = time.time()
    watcher.start()
    try:
        cli(["-c", RESUME_WRAPPER, seconds, "collect", *common, "--out", out, "--resume"])
    finally:
        stop.set()
        watcher.join()
    resumed, reference = load_factors(out), load_factors(whole)
    return {"uninterrupted_seconds": round(uninterrupted_seconds, 2), "checkpoint_seconds_setting": float(seconds),
            "resumed_metadata_resumed": resumed.metadata.get("resumed"),
            "checkpoint_times_after_resume_s": [round(t - resume_start, 2) for t in times[1:]],  # the first is the kill's checkpoint
            **max_difference(reference, resumed)}


# -------------------------------------------------------------------------------------------- 5. nccl
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def part_nccl(work: Path, args) -> dict:
    import datetime

    import torch.distributed as dist
    from safetensors.torch import save_file

    device = args.device
    backend = "gloo" if device == "cpu" else "nccl"
    result = {"backend": backend}
    start = time.perf_counter()
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1,
                            timeout=datetime.timedelta(seconds=120))
    try:
        result["init_seconds"] = round(time.perf_counter() - start, 3)
        for dtype in (torch.float32, torch.float64):
            tensor = torch.arange(1 << 20, dtype=dtype, device=device)
            expected = tensor.clone()
            sync(device)
            start = time.perf_counter()
            dist.all_reduce(tensor)
            dist.broadcast(tensor, src=0)
            sync(device)
            result[str(dtype).replace("torch.", "")] = {"all_reduce_and_broadcast_seconds": round(time.perf_counter() - start, 4),
                                                         "equal": bool(torch.equal(tensor, expected))}
    finally:
        dist.destroy_process_group()
    size = (8 << 20) if args.tiny else (10 << 30)
    chunk = 1 << 28 if not args.tiny else 1 << 20  # 1 GiB (float32) tensors, like the sums of large factors
    tensors = {f"sum.{k}": torch.full((chunk // 4,), float(k), dtype=torch.float32) for k in range(size // chunk)}
    work.mkdir(parents=True, exist_ok=True)
    path = work / "checkpoint.safetensors"
    start = time.perf_counter()
    save_file(tensors, str(path))
    written = time.perf_counter() - start
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    result["checkpoint"] = {"bytes": path.stat().st_size, "write_seconds": round(written, 2),
                            "write_and_fsync_seconds": round(time.perf_counter() - start, 2)}
    path.unlink()
    return result


# ------------------------------------------------------------------------------------------- 6. tools
def part_tools(work: Path, args) -> dict:
    from unmemorize.basis import decompose_factors
    from unmemorize.basis.cache import cache_dir
    from unmemorize.curvature import load_factors
    from unmemorize.tiny import write_mc_task

    device = args.device
    folder = small_model_folder(work / "model", hidden=64 if args.tiny else 256, layers=2)
    text = corpus(work / "corpus.txt", 300)
    factors_dir = work / "factors"
    cli(["collect", "--model", folder, "--data", text, "--out", factors_dir, "--device", device, "--seq-len", "64", "--max-tokens",
         "4000", "--no-progress"])
    result = {}
    start = time.perf_counter()
    cli(["decompose", "--factors", factors_dir, "--device", device, "--quiet"])
    result["decompose_seconds"] = round(time.perf_counter() - start, 2)
    index = json.loads((cache_dir(factors_dir, "float64") / "eigen.json").read_text())
    cpu = decompose_factors(load_factors(factors_dir), cache="off")
    cached = decompose_factors(load_factors(factors_dir), cache="require")
    result["decompose"] = {"device": index["device"], "max_eigenvalue_difference_vs_cpu": max(
        float((cached[n].gradient.eigenvalues - cpu[n].gradient.eigenvalues).abs().max() / cpu[n].gradient.eigenvalues.max())
        for n in cpu)}
    tasks = write_mc_task(work / "tasks")
    scores = {}
    for where in (device, "cpu") if device != "cpu" else ("cpu",):
        out = work / f"eval-{where.replace(':', '-')}.json"
        cli(["eval", "--model", folder, "--lm-eval", "tiny_mc", "--include-path", tasks, "--bootstrap-iters", "0", "--device", where,
             "--factors", factors_dir, "--edit-rho", "0.5", "--out", out])
        record = json.loads(out.read_text())
        scores[where] = {f"{r['task']}/{r['metric']}": r["value"] for r in record["rows"]}
    result["eval"] = scores
    return result

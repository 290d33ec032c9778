#!/usr/bin/env python
"""GPU check: the scale paths on one CUDA device, in one prepared run of at most ~8 minutes on an
H100/H200, written to a folder (issue 24). Run it first whenever a GPU machine is lent, commit its
folder under benchmarks/gpu/ and fix what it finds.

    .venv/bin/python benchmarks/gpu_check.py                          # every part -> benchmarks/gpu/<date>-<gpu>/
    .venv/bin/python benchmarks/gpu_check.py --parts eigh,nccl        # some parts
    .venv/bin/python benchmarks/gpu_check.py --device cpu --tiny      # the harness on tiny shapes (tests; not a GPU result)

Parts (``_gpu_parts.py``; sizes in brackets are the --tiny ones):

1. slice      a 7B-shaped bf16 Llama slice (hidden 4096, MLP 11008, 2 blocks) [64/128]: peak memory and
              step time of collecting every MLP matrix at batch 8 x 512 [2 x 32], for 1, 2 and all
              modules per pass, each against the plan ``collect --dry-run`` computes for it;
2. eigh       CUDA ``torch.linalg.eigh`` on an 11008 x 11008 [96] rank-deficient and an ill-conditioned
              matrix, float32 and float64: time, residual ||AV - V diag(w)|| / ||A||, orthogonality, and
              the eigenvalues against a CPU float64 reference; then ``basis.decompose`` on the same;
3. device_map ``--device-map auto`` with a small ``max_memory`` that forces offload (factors equal to a
              plain CUDA load, or the error), and an all-GPU map against plain ``--device cuda`` (CLI);
4. resume     ``unmemorize collect`` SIGKILLed after its first checkpoint, then ``--resume``: the largest
              difference from an uninterrupted run, and the checkpoint times of the resumed run;
5. nccl       a one-rank NCCL group: all-reduce and broadcast of float32/float64 CUDA tensors; the time to
              write and fsync a 10 GiB [8 MiB] checkpoint file;
6. tools      ``unmemorize decompose --device cuda`` against the CPU's eigenvalues, and ``unmemorize eval``
              on CUDA with a local lm-eval task, against the same on the CPU.

Each part runs alone: a failure is recorded (type, message, last traceback lines) and the next part
runs. ``results.json`` (strict JSON: every part's status, seconds and numbers, plus the commit,
package versions, machine, GPU and full command line) and ``report.md`` are written into a
temporary sibling folder that is renamed into place at the end. Without CUDA, and without
``--device cpu``, it says that it needs CUDA and exits with status 2, writing nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "src"))  # run from a checkout without installing
sys.path.insert(0, str(HERE))

PART_NAMES = ("slice", "eigh", "device_map", "resume", "nccl", "tools")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="benchmarks/gpu_check.py", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default=",".join(PART_NAMES), help=f"Comma list from {', '.join(PART_NAMES)} (default: all).")
    parser.add_argument("--out", help="Output folder (default: benchmarks/gpu/<date>-<device name>); must not exist.")
    parser.add_argument("--device", default="cuda", help="'cuda' (default) or 'cuda:K'; 'cpu' only with --tiny, to test the harness.")
    parser.add_argument("--tiny", action="store_true", help="Tiny shapes everywhere: seconds, for tests of the harness.")
    parser.add_argument("--no-cpu-reference", action="store_true", help="eigh: skip the CPU float64 reference (minutes at 11008).")
    args = parser.parse_args(argv)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = [p for p in parts if p not in PART_NAMES]
    if not parts or unknown:
        parser.error(f"--parts {args.parts!r}: choose from {', '.join(PART_NAMES)}")
    if args.device == "cpu" and not args.tiny:
        parser.error("--device cpu is only for testing the harness: add --tiny (a CPU run is not a GPU check)")
    if not (args.device == "cpu" or args.device == "cuda" or args.device.startswith("cuda:")):
        parser.error(f"--device {args.device!r}: give cuda, cuda:K, or cpu with --tiny")
    args.part_list = parts
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return args


def cuda_missing(device: str) -> str | None:
    """Why this machine cannot run the check on ``device`` (None: it can)."""
    import torch

    if device == "cpu":
        return None
    if not torch.cuda.is_available():
        return "gpu_check.py needs CUDA: torch.cuda.is_available() is False here (torch " + torch.__version__ + "); nothing was run"
    index = int(device.split(":")[1]) if ":" in device else 0
    if index >= torch.cuda.device_count():
        return f"gpu_check.py: --device {device} does not exist ({torch.cuda.device_count()} CUDA device(s)); nothing was run"
    return None


def provenance(args: argparse.Namespace) -> dict:
    import torch
    import transformers

    from _report import machine

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True,
                                    timeout=10).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        commit, dirty = None, None
    command = shlex.join([".venv/bin/python", "benchmarks/gpu_check.py", *args.argv])
    record = {"commit": commit, "dirty": dirty, "command": command, "machine": machine(), "transformers": transformers.__version__,
              "device": args.device, "tiny": args.tiny, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if args.device != "cpu":
        index = torch.device(args.device).index or 0
        props = torch.cuda.get_device_properties(index)
        record["gpu"] = {"name": props.name, "memory_bytes": props.total_memory, "capability": f"{props.major}.{props.minor}",
                         "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(), "count": torch.cuda.device_count()}
    return record


def default_out(args: argparse.Namespace) -> Path:
    import torch

    name = "cpu-tiny" if args.device == "cpu" else torch.cuda.get_device_name(torch.device(args.device).index or 0)
    slug = "".join(c if c.isalnum() else "-" for c in name).strip("-").lower()
    return HERE / "gpu" / f"{time.strftime('%Y-%m-%d-%H%M')}-{slug}"


def run_part(name: str, function, work: Path, args: argparse.Namespace) -> dict:
    """One part, timed; an exception becomes ``status: failed`` with its message (the run goes on)."""
    start = time.perf_counter()
    print(f"[gpu_check] {name} ...", file=sys.stderr, flush=True)
    try:
        result = {"status": "ok", **function(work / name, args)}
    except Exception as exc:  # noqa: BLE001 - a check records every failure and goes on
        result = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"[:2000],
                  "traceback": traceback.format_exc().splitlines()[-12:]}
    result["seconds"] = round(time.perf_counter() - start, 2)
    print(f"[gpu_check] {name}: {result['status']} in {result['seconds']} s", file=sys.stderr, flush=True)
    return result


def report(record: dict) -> str:
    lines = ["# GPU check", "", f"Command: `{record['provenance']['command']}`", "",
             f"Commit {record['provenance']['commit']}{' (uncommitted changes)' if record['provenance']['dirty'] else ''}, "
             f"device {record['provenance']['device']}"
             + (f" ({record['provenance']['gpu']['name']}, CUDA {record['provenance']['gpu']['cuda']})" if "gpu" in record["provenance"] else "")
             + (", tiny shapes: a test of the harness, not a GPU result" if record["provenance"]["tiny"] else ""), "",
             "| part | status | seconds |", "|---|---|---|"]
    lines += [f"| {name} | {part['status']} | {part['seconds']} |" for name, part in record["parts"].items()]
    for name, part in record["parts"].items():
        lines += ["", f"## {name}", "", "```json", json.dumps({k: v for k, v in part.items() if k != "traceback"}, indent=1, default=str)[:6000],
                  "```"]
        if part["status"] == "failed":
            lines += ["", "```text", *part["traceback"], "```"]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    missing = cuda_missing(args.device)
    if missing:
        print(missing, file=sys.stderr)
        return 2
    import _gpu_parts
    from unmemorize.jsonio import write_json

    out = Path(args.out) if args.out else default_out(args)
    if out.exists():
        print(f"gpu_check.py: --out {out} exists; give a new folder", file=sys.stderr)
        return 2
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    work = Path(tempfile.mkdtemp(prefix="gpu-check-work-"))
    try:
        record = {"provenance": provenance(args), "parts": {}}
        for name in args.part_list:
            record["parts"][name] = run_part(name, getattr(_gpu_parts, f"part_{name}"), work, args)
        record["provenance"]["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        write_json(tmp / "results.json", record)
        (tmp / "report.md").write_text(report(record))
        os.replace(tmp, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"wrote {out}", file=sys.stderr)
    failed = [name for name, part in record["parts"].items() if part["status"] != "ok"]
    print("failed parts: " + ", ".join(failed) if failed else "every part ran", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

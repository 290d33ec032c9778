#!/usr/bin/env python
"""Does splitting collection over 2 gloo processes (torchrun) give the same factors, and at what cost, against 1 process?

    .venv/bin/python benchmarks/collect_gloo.py            # ~2 min on an idle 2-core machine
    .venv/bin/python benchmarks/collect_gloo.py --quick    # smoke run (~1 min)

Writes the ``gloo`` section of ``docs/results/benchmarks/results-collect.md`` and key ``gloo`` of
``results-collect.json`` (``results-collect-quick.*`` with ``--quick``), starting with the command
that produced it. Formerly ``benchmarks/collect_scale.py --part gloo``.

1 vs 2 processes of ``torchrun -m unmemorize collect`` (gloo) on the same work (collect_ideal.py's
model saved as a folder, its tokens as .jsonl windows), when ``unmemorize.curvature.distributed``
exists; else "skipped".
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(HERE))

from _report import ForeignLoad, command_line, log, machine, percent, update, wait_for_quiet  # noqa: E402
from _scale import CLEAN, SCALE, build_llama, git_state, relative_error, token_batches  # noqa: E402


def bench_gloo(quick: bool) -> None:
    if importlib.util.find_spec("unmemorize.curvature.distributed") is None:
        print("skipped: distributed collect not available")
        update("gloo", "## 1 vs 2 gloo processes\n\nskipped: distributed collect not available "
               "(no `unmemorize.curvature.distributed`).\n", {"skipped": True}, quick)
        return
    import json as _json

    from unmemorize.curvature import load_factors

    scale = SCALE["quick" if quick else "full"]
    shape, batch, seq = scale["model"], scale["batch"], scale["seq"]
    work = Path(tempfile.mkdtemp(prefix="gloo-bench-"))
    try:
        model = build_llama(**shape, seq_len=seq)
        model.save_pretrained(work / "model")
        windows = token_batches(scale["batches"], batch, seq, shape["vocab"], seed=2)
        with open(work / "data.jsonl", "w") as f:
            for b in windows:
                for ids in b["input_ids"]:
                    f.write(_json.dumps({"input_ids": ids.tolist()}) + "\n")
        tokens = scale["batches"] * batch * seq
        common = ["-m", "unmemorize", "collect", "--model", str(work / "model"), "--data", str(work / "data.jsonl"),
                  "--seq-len", str(seq), "--batch-size", str(batch), "--max-tokens", str(tokens), "--fisher", "empirical",
                  "--no-progress"]
        runs = {
            "python -m unmemorize collect (1 process, 2 threads)": [sys.executable, *common],
            "torchrun --nproc-per-node 1": [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1", *common],
            "torchrun --nproc-per-node 2 (gloo)": [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *common],
        }
        rows, outs = [], {}
        for name, argv in runs.items():
            out = work / f"out{len(rows)}"
            log(f"gloo: {name}")
            env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
            wait_for_quiet(CLEAN)
            with ForeignLoad() as load:  # children's CPU time counts as ours once they have exited
                start = time.perf_counter()
                proc = subprocess.run([*argv, "--out", str(out)], capture_output=True, text=True, env=env)
                seconds = time.perf_counter() - start
            rows.append({"run": name, "command": " ".join(a if a != sys.executable else "python" for a in argv), "seconds": seconds,
                         "returncode": proc.returncode, "stderr_tail": proc.stderr[-1500:], "foreign_load": load.fraction})
            log(f"  {seconds:.1f} s, rc {proc.returncode}, other processes {percent(load.fraction)}")
            if proc.returncode == 0:
                outs[name] = load_factors(out)
                rows[-1]["collect_seconds"] = outs[name].metadata.get("seconds")  # as factors.json records it (rank 0)
        names = list(outs)
        if len(names) > 1:
            base = outs[names[0]]
            for row in rows:
                other = outs.get(row["run"])
                if other is not None:
                    row["max_relative_error_vs_first"] = max(
                        max(relative_error(other.activation[n], base.activation[n]), relative_error(other.gradient[n], base.gradient[n]))
                        for n in base.modules)
        data = {"command": command_line(), "machine": machine(), "git": git_state(), "tokens": tokens, "rows": rows}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    lines = ["## 1 vs 2 gloo processes (same work)", "", f"Command: `{data['command']}`", "",
             f"{tokens:,} tokens (pre-tokenized .jsonl windows of {seq}), empirical Fisher, the ideal part's model saved as a folder; "
             "wall time of the whole command (start-up, model load and file writing included) and the collection time "
             "factors.json records; torchrun gives each of its processes OMP_NUM_THREADS=1 unless it is set.", "",
             "| run | wall | collection (factors.json) | tokens/s of collection | factors vs the first row | exit |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        err, inner = r.get("max_relative_error_vs_first"), r.get("collect_seconds")
        lines.append(f"| `{r['command'].replace(str(work), '$WORK')}` | {r['seconds']:.1f} s | "
                     f"{'' if inner is None else f'{inner:.1f} s'} | {'' if not inner else f'{tokens / inner:,.0f}'} | "
                     f"{'' if err is None else f'{err:.1e}'} | {r['returncode']} |")
    loads = [r["foreign_load"] for r in rows if r.get("foreign_load") is not None]
    lines += ["", f"Largest share of the CPUs other processes used during a run: {percent(max(loads) if loads else None)}. "
              "On 2 cores, 2 processes of 1 thread use the same cores as 1 process of 2 threads: no speed-up is expected here; "
              "the row checks that the split gives the same factors and costs nothing extra."]
    failed = [r for r in rows if r["returncode"] != 0]
    for r in failed:
        lines += ["", f"{r['run']} failed:", "```", r["stderr_tail"].rstrip(), "```"]
    update("gloo", "\n".join(lines) + "\n", data, quick)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="Tiny sizes: checks that it runs (writes results-collect-quick.*).")
    args = parser.parse_args()
    bench_gloo(args.quick)


if __name__ == "__main__":
    main()

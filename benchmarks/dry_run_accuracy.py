"""How close does `collect --dry-run` come to the run it plans, in bytes and time, on small models?

    .venv/bin/python benchmarks/dry_run_accuracy.py      # ~2 min on 2 cores; writes docs/results/benchmarks/results-dry-run.md and .json

For each model size: the plan (``curvature/plan.py``: bytes from the shapes, time from a short
warm-up), then the real collection of the same tokens; compared: factor-file bytes (the files
written), and the estimated time against the collection time factors.json records (the pass over
the data; model loading and file writing are not part of either).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from transformers import AutoModelForCausalLM, LlamaConfig  # noqa: E402

from unmemorize.curvature import CollectConfig  # noqa: E402
from unmemorize.curvature.job import CollectJob, run_collect_job  # noqa: E402
from unmemorize.curvature.plan import collection_plan, warmup  # noqa: E402
from unmemorize.models import load_model  # noqa: E402
from unmemorize.targets import resolve_targets  # noqa: E402

from _report import write_results  # noqa: E402
from unmemorize.tiny import make_tokenizer, write_corpus  # noqa: E402

SIZES = [(128, 344, 2), (256, 688, 4), (512, 1376, 4)]
TOKENS = 40_000


def main() -> None:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()  # no options; --help
    rows, record = [], []
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        corpus = write_corpus(work / "corpus.txt", documents=4000)
        for hidden, intermediate, layers in SIZES:
            torch.manual_seed(0)
            folder = work / f"model-{hidden}"
            config = LlamaConfig(hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers, num_attention_heads=4,
                                 num_key_value_heads=4, vocab_size=len(make_tokenizer()), max_position_embeddings=512)
            AutoModelForCausalLM.from_config(config).save_pretrained(folder)
            make_tokenizer().save_pretrained(folder)
            collect = CollectConfig(seq_len=128, max_tokens=TOKENS, batch_size=8, progress=False, checkpoint_every=0)
            model, tokenizer = load_model(str(folder))
            targets = resolve_targets(model)
            plan = collection_plan(model, targets, collect)
            speed = warmup(model, tokenizer, str(corpus), targets, collect)
            estimate = TOKENS / speed["tokens_per_second"]
            out = work / f"factors-{hidden}"
            meta = run_collect_job(CollectJob(model=str(folder), data=str(corpus), out=str(out), config=collect))
            written = sum(p.stat().st_size for p in out.glob("*.safetensors"))
            entry = {"hidden": hidden, "intermediate": intermediate, "layers": layers, "tokens": meta["tokens"],
                     "bytes_planned": plan["factor_file_bytes"], "bytes_written": written, "seconds_estimated": round(estimate, 2),
                     "seconds_collected": meta["seconds"], "time_ratio": round(estimate / meta["seconds"], 3)}
            record.append(entry)
            rows.append(f"| {hidden} / {intermediate} / {layers} | {entry['tokens']:,} | {written:,} | "
                        f"{entry['bytes_planned'] / written:.4f} | {entry['seconds_estimated']:.1f} s | {entry['seconds_collected']:.1f} s | "
                        f"{entry['time_ratio']:.2f} |")
    text = ["# collect --dry-run against the run it plans", "",
            "Command: `.venv/bin/python benchmarks/dry_run_accuracy.py`. Llama-style models from configs (random init, float32), "
            f"{TOKENS:,} tokens of the tiny corpus in windows of 128, batch 8, true Fisher, every MLP projection; the estimate "
            "uses a warm-up of 4 batches (the first not timed); the collection time is the one factors.json records.", "",
            "| hidden / MLP / blocks | tokens | factor bytes written | planned / written | estimated time | collection time | "
            "estimated / measured |", "|---|---|---|---|---|---|---|", *rows, ""]
    write_results("results-dry-run", text, record)


if __name__ == "__main__":
    main()

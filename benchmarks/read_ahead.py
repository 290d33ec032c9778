#!/usr/bin/env python
"""What does reading the data before the model loads cost, and what does a budget save on a long document? (issue 23)

    .venv/bin/python benchmarks/read_ahead.py

(a) ``collect`` reads every window it will use before it loads the model (``data.read_ahead``), so
a data error stops it before minutes of loading. Its cost: one tokenization of what the run reads.
Measured on a 20M-token corpus (.jsonl, a document per row: this Python's own standard-library
sources, repeated to size) with a byte-level BPE of 16,384 tokens trained here (GPT-2's kind of
tokenizer), 2,048-token windows, ``--max-tokens 20000000``.

(b) A book stored as one row: one document of about 1M tokens read under ``--max-tokens 400``.
Whole-document tokenization (what the read did before ``data.tokenize_prefix``) against the
prefix the budget needs, both timed here, best of 3.

Writes docs/results/benchmarks/results-read-ahead.md and .json (a few minutes on 2 cores).
"""

from __future__ import annotations

import json
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))

from _report import log, write_results  # noqa: E402

TOKENS = 20_000_000
SEQ_LEN = 2048


def standard_library_lines() -> list[str]:
    """Lines of at least 40 characters from this Python's standard library sources (offline, natural enough text)."""
    lines = []
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        lines += [line.strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if len(line.strip()) >= 40]
    return lines


def byte_level_bpe(lines: list[str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=16_384, special_tokens=["<eos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    core.train_from_iterator(lines[:200_000], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<eos>")


def main() -> None:
    from unmemorize.data import iter_windows, list_data_files, read_ahead

    lines = standard_library_lines()
    tokenizer = byte_level_bpe(lines)
    sample = sum(len(tokenizer(line, add_special_tokens=False)["input_ids"]) + 1 for line in lines[:20_000])
    per_line = sample / 20_000
    with tempfile.TemporaryDirectory() as folder:
        corpus = Path(folder) / "corpus.jsonl"
        with corpus.open("w") as handle:
            written = 0
            while written < TOKENS * 1.02:
                for line in lines:
                    handle.write(json.dumps({"text": line}) + "\n")
                written += per_line * len(lines)
        size = corpus.stat().st_size
        log(f"corpus: {size / 2**20:.0f} MiB, about {written / 1e6:.1f}M tokens")
        counts = read_ahead(list_data_files(corpus), tokenizer, SEQ_LEN, TOKENS, tokenizer.vocab_size + 1, None)
        log(f"read ahead: {counts}")

        book = Path(folder) / "book.txt"
        text = " ".join(lines)
        while len(tokenizer(text[:200_000], add_special_tokens=False)["input_ids"]) * len(text) / 200_000 < 1_000_000:
            text = text + " " + text
        book.write_text(text + "\n")
        whole, prefix = float("inf"), float("inf")
        for _ in range(3):
            start = time.perf_counter()
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            whole = min(whole, time.perf_counter() - start)
            start = time.perf_counter()
            windows = list(iter_windows(list_data_files(book), tokenizer, 128, 400))
            prefix = min(prefix, time.perf_counter() - start)
        assert sum(windows, []) == ids[:400]  # the same tokens as the whole document's first 400
        log(f"book: {len(ids)} tokens, whole {whole:.2f} s, budget of 400 {prefix:.4f} s")
    record = {"corpus": {"bytes": size, "tokens": counts["tokens"], "windows": counts["windows"], "seq_len": SEQ_LEN,
                         "read_ahead_seconds": counts["seconds"], "tokens_per_second": round(counts["tokens"] / counts["seconds"])},
              "book": {"characters": len(text), "tokens": len(ids), "budget": 400, "whole_seconds": round(whole, 3),
                       "prefix_seconds": round(prefix, 4)},
              "tokenizer": "byte-level BPE, 16,384 tokens, trained on the standard library's lines"}
    lines_md = [
        "# Reading the data before the model loads (issue 23)", "",
        "Command: see `provenance.command` in results-read-ahead.json. Byte-level BPE (16,384 tokens) trained on this Python's "
        "standard-library sources; the corpus is those lines as .jsonl rows, repeated to size.", "",
        "| what | tokens | seconds | tokens/s |", "|---|---|---|---|",
        f"| read ahead, {SEQ_LEN}-token windows, `--max-tokens {TOKENS}` ({size / 2**20:.0f} MiB of .jsonl) | {counts['tokens']:,} | "
        f"{counts['seconds']:.1f} | {record['corpus']['tokens_per_second']:,} |",
        f"| one {len(text) / 2**20:.0f} MiB line: whole-document tokenization | {len(ids):,} | {whole:.2f} | |",
        f"| the same line under `--max-tokens 400` (prefix only, same 400 tokens) | 400 | {prefix:.4f} | |", "",
        "The read ahead is one more tokenization of what the run reads, on one core, before the model loads: about "
        f"{counts['seconds'] / counts['tokens'] * 1e6:.1f} s per million tokens here. For scale, measured on this machine: one "
        "7B-shaped block (OLMo-2-7B's MLP shapes, float32) collects at 41.7 tokens/s on the CPU (results-collect.md, 'slice'). "
        "No GPU measurement of a whole 7B collection exists yet; on a user's machine `collect --dry-run` prints both, the read "
        "ahead's seconds and the collection's estimate.",
    ]
    write_results("results-read-ahead", lines_md, record)


if __name__ == "__main__":
    main()

"""Training the quotes testbed and its twin retrained without the quotes.

A trained quotes testbed is a cache folder (``<cache>/quotes/<key>/``)::

    model/                  a Hugging Face model folder (Llama-style weights, config, BPE tokenizer)
    data/quotes.jsonl       every inserted quote and control: body, author, count, split, and token
                            ids -- prefix_ids/suffix_ids (recitation: the body's last 8 tokens after
                            EOS + the rest) and text_ids (membership: EOS + the body; the author is
                            left out, as authors recur across quotes and controls)
    data/heldout_tuning.txt, heldout.txt   held-out prose halves (tuning / reported), one document a line
    data/factors.txt        K-FAC factor data: training documents without any insertion
    testbed.json            world summary, configs, stream scan, sha256 of every model file, the command,
                            loss curve, tokens, steps and wall time

``with_quotes=False`` trains the *retrained* model: the same documents in the same order, the same
tokenizer, seed and settings, without a single insertion (its windows, fewer, are shuffled by the same
seeded generator, so their order is not the model's) -- the gold standard of forgetting that unlearning is judged
against (membership AUC, MUSE's PrivLeak). Both share the tokenizer: it is trained on the training
documents *without* insertions, so it is the same for both and has never seen a quote.

The cache key hashes the world version, both configs, the variant and a digest of the corpus
(documents and quote pool), so a changed corpus or a changed Debian package is never mistaken for
the cached one.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
from dataclasses import asdict
from pathlib import Path

import torch

from ..._atomic import atomic_dir
from ...errors import UnmemorizeError
from ...jsonio import write_json
from ..shipped import sha256_of
from ..train import TrainConfig, build_model, cache_root, fit, train_tokenizer
from .world import (WORLD_VERSION, QuotesWorld, QuotesWorldConfig, build_quotes_world, document_text, factor_documents, scan_world,
                    training_segments)

QUOTES_TESTBED_VERSION = 1
SUFFIX_TOKENS = 8  # the paper's quotes: prefix = all but the last 8 tokens, suffix = the last 8
FACTOR_DOCUMENTS = 3000
SIZES = {
    # about 8 minutes on 2 CPU cores (testbed.json records the measured time; 396-492 s here): 3.3M parameters, 2 passes, 3.6M tokens
    "cpu": dict(vocab_size=4096, hidden_size=192, intermediate_size=512, layers=4, heads=4, seq_len=128, batch_size=32,
                learning_rate=2e-3, warmup_steps=100, weight_decay=0.1),
    # for a GPU: 85M parameters (GPT-2 small's shape with a 16k vocabulary), 4 passes; untested here (no GPU on the build machine)
    "gpu": dict(vocab_size=16384, hidden_size=768, intermediate_size=2048, layers=12, heads=12, seq_len=256, batch_size=64,
                learning_rate=6e-4, warmup_steps=300, weight_decay=0.1),
    # seconds: checks the pipeline, not the science
    "quick": dict(vocab_size=600, hidden_size=64, intermediate_size=128, layers=2, heads=2, seq_len=64, batch_size=16,
                  learning_rate=3e-3, warmup_steps=10, weight_decay=0.1),
}
WORLD_SIZES = {"cpu": dict(epochs=2), "gpu": dict(epochs=4),
               "quick": dict(epochs=2, prose_fraction=0.03, counts=(1, 4, 16), quotes_per_count=6, controls=12, heldout_documents=40)}


def quotes_configs(seed: int = 0, size: str = "cpu", corpus: str = "", quotes: str = "") -> tuple[QuotesWorldConfig, TrainConfig]:
    """The world and training configs of a size (``SIZES``); the training's epochs are the world's passes."""
    if size not in SIZES:
        raise UnmemorizeError(f"size must be one of {', '.join(SIZES)}, got {size!r}")
    sizes = dict(WORLD_SIZES[size])
    if corpus:  # a user's corpus is used whole: the quick size's fraction is for Debian's 15,000 documents
        sizes.pop("prose_fraction", None)
    world = QuotesWorldConfig(seed=seed, corpus=corpus, quotes=quotes, **sizes)
    return world, TrainConfig(seed=seed, epochs=world.epochs, **SIZES[size])


def corpus_digest(world: QuotesWorld) -> str:
    """sha256 over the training and held-out documents and every placed quote (the key's corpus part)."""
    digest = hashlib.sha256()
    for text in world.documents + world.heldout_tuning + world.heldout + [q.text for q in world.quotes]:
        digest.update(text.encode("utf-8") + b"\n")
    return digest.hexdigest()


def quotes_key(world: QuotesWorld, train: TrainConfig, with_quotes: bool) -> str:
    blob = json.dumps({"world_version": WORLD_VERSION, "testbed": QUOTES_TESTBED_VERSION, "world": asdict(world.config),
                       "train": asdict(train), "with_quotes": with_quotes, "corpus": corpus_digest(world)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def quotes_dir(world: QuotesWorld, train: TrainConfig, with_quotes: bool) -> Path:
    return cache_root() / "quotes" / quotes_key(world, train, with_quotes)


def quote_rows(world: QuotesWorld, tokenizer) -> list[dict]:
    """One row per placed quote (module doc): ids for recitation (prefix_ids -> suffix_ids) and membership (text_ids:
    EOS + the body)."""
    eos = tokenizer.eos_token_id
    rows = []
    for placed in world.quotes:
        body = tokenizer(placed.quote.body, add_special_tokens=False)["input_ids"]
        if len(body) <= SUFFIX_TOKENS:
            raise UnmemorizeError(f"a quote body tokenizes to {len(body)} tokens, at most the {SUFFIX_TOKENS}-token suffix: "
                                  f"{placed.quote.body!r}")
        rows.append({"body": placed.quote.body, "author": placed.quote.author, "category": placed.quote.category,
                     "count": placed.count, "split": placed.split, "prefix_ids": [eos] + body[:-SUFFIX_TOKENS],
                     "suffix_ids": body[-SUFFIX_TOKENS:], "text_ids": [eos] + body})
    return rows


def write_quotes_data(folder: Path, world: QuotesWorld, tokenizer) -> None:
    data = folder / "data"
    data.mkdir(parents=True, exist_ok=True)
    (data / "quotes.jsonl").write_text("".join(json.dumps(row) + "\n" for row in quote_rows(world, tokenizer)))
    (data / "heldout_tuning.txt").write_text("\n".join(world.heldout_tuning) + "\n")
    (data / "heldout.txt").write_text("\n".join(world.heldout) + "\n")
    (data / "factors.txt").write_text("\n".join(factor_documents(world, FACTOR_DOCUMENTS)) + "\n")


def pack_windows(documents: list[list[tuple[str, int | None]]], tokenizer, seq_len: int) -> tuple[torch.Tensor, list[tuple[int, int, int]]]:
    """The epoch's documents (``world.training_segments``) tokenized -- each segment on its own, which equals the whole
    document's tokenization because the BPE splits at spaces -- each followed by EOS, packed into (windows, seq_len)
    rows in stream order such that **no inserted quote straddles two windows**: a window that would cut a quote ends
    before it, right-padded with the pad token (``fit`` masks pad labels), and the quote starts the next window. The
    last window is padded, not dropped: every token of the stream is in exactly one window, and every insertion is
    trained whole, so a quote's duplication count is what the model sees. Returns the windows and, per insertion,
    (quote index, window, offset in the window)."""
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    stream: list[int] = []
    spans: list[tuple[int, int, int]] = []  # (start, end, quote index) in stream coordinates
    texts = [text for segments in documents for text, _ in segments]
    encoded = iter(tokenizer(texts, add_special_tokens=False)["input_ids"]) if texts else iter(())
    for segments in documents:
        for _, quote in segments:
            ids = next(encoded)
            if quote is not None:
                if len(ids) > seq_len:
                    raise UnmemorizeError(f"an inserted quote of {len(ids)} tokens is longer than a {seq_len}-token window")
                spans.append((len(stream), len(stream) + len(ids), quote))
            stream.extend(ids)
        stream.append(eos)
    rows, placed, start, next_span = [], [], 0, 0
    while start < len(stream):
        end = min(start + seq_len, len(stream))
        while next_span < len(spans) and spans[next_span][1] <= end:  # quotes wholly inside this window
            span_start, _, quote = spans[next_span]
            placed.append((quote, len(rows), span_start - start))
            next_span += 1
        if next_span < len(spans) and spans[next_span][0] < end:  # a quote that would straddle: the window stops before it
            end = spans[next_span][0]
        rows.append(stream[start:end] + [pad] * (seq_len - (end - start)))
        start = end
    return torch.tensor(rows, dtype=torch.long), placed


def train_quotes_testbed(world: QuotesWorld, train: TrainConfig, with_quotes: bool = True, out: Path | None = None,
                         progress: bool = True, command: str = "") -> Path:
    """Tokenizer, model and training on the world's stream (``with_quotes=False``: without any insertion); returns the folder."""
    if train.epochs != world.config.epochs:
        raise UnmemorizeError(f"the training's epochs ({train.epochs}) must equal the world's passes ({world.config.epochs})")
    out = Path(out) if out is not None else quotes_dir(world, train, with_quotes)
    start = time.perf_counter()
    tokenizer = train_tokenizer(world.documents, train.vocab_size)  # training documents without insertions: never a quote
    model = build_model(train, len(tokenizer))
    if torch.cuda.is_available():  # the 'gpu' size is meant for one; the 'cpu' size trains anywhere (weights saved from CPU)
        model.to("cuda")
    segments = [training_segments(world, epoch, with_quotes) for epoch in range(world.config.epochs)]
    streams = [[document_text(document) for document in epoch] for epoch in segments]  # training_stream, segmented once
    scan = scan_world(world, streams)  # the twin's stream must hold no quote at all
    leaks = scan.leaks if with_quotes else [leak for leak in scan.leaks if leak.get("found_in_training")]
    if leaks:
        raise UnmemorizeError(f"the stream differs from the plan for {len(leaks)} quote(s), e.g. {leaks[0]}")
    rng = random.Random(f"quotes-windows-{train.seed}")
    packed = [pack_windows(epoch, tokenizer, train.seq_len) for epoch in segments]
    windows = []
    for epoch_windows, _ in packed:
        order = list(range(len(epoch_windows)))
        rng.shuffle(order)
        windows.append(epoch_windows[order])
    total_steps = sum(math.ceil(len(w) / train.batch_size) for w in windows)
    log, steps, tokens = fit(model, lambda epoch: windows[epoch], total_steps, train, progress, pad_id=tokenizer.pad_token_id,
                             last_partial_batch=True)
    seconds = time.perf_counter() - start
    info = {"key": quotes_key(world, train, with_quotes), "variant": "with quotes" if with_quotes else "retrained without the quotes",
            "with_quotes": with_quotes, "world_version": WORLD_VERSION, "testbed_version": QUOTES_TESTBED_VERSION,
            "world": world.summary(), "corpus_sha256": corpus_digest(world), "train": asdict(train),
            "parameters": sum(p.numel() for p in model.parameters()), "steps": steps, "tokens": tokens,
            "seconds": round(seconds, 1), "threads": torch.get_num_threads(),
            "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu", "loss_curve": log, "command": command,
            "stream_scan": scan.to_dict() if scan is not None else {"leaks": [], "note": "no insertion in this variant"}}
    model.to("cpu")
    with atomic_dir(out, overwrite=True) as tmp:
        model.save_pretrained(tmp / "model", safe_serialization=True)
        tokenizer.save_pretrained(tmp / "model")
        write_quotes_data(tmp, world, tokenizer)
        info["sha256"] = {path.name: sha256_of(path) for path in sorted((tmp / "model").iterdir()) if path.is_file()}
        write_json(tmp / "testbed.json", info)
    return out


def load_or_train_quotes(world_config: QuotesWorldConfig, train: TrainConfig, with_quotes: bool = True, progress: bool = True,
                         retrain: bool = False, world: QuotesWorld | None = None, command: str = "") -> Path:
    """The cached folder for these settings, trained first if the cache lacks it (or ``retrain``)."""
    world = world or build_quotes_world(world_config)
    folder = quotes_dir(world, train, with_quotes)
    if retrain or not (folder / "testbed.json").is_file():
        if progress:
            print(f"quotes testbed: training the {'model' if with_quotes else 'model retrained without the quotes'} "
                  f"(seed {train.seed}) into {folder}", flush=True)
        train_quotes_testbed(world, train, with_quotes, folder, progress, command)
    return folder


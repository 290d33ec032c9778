"""``unmemorize demo``: the whole pipeline on a tiny built-in model, in seconds.

collect (true Fisher) -> spectrum -> edit (K-FAC, SVD and random control at the same rho)
-> save -> reload with plain transformers -> compare next-token loss before and after.
The model is random-init, so this shows the mechanics, not the science; the trained testbed
(memorized sequences and skills) supersedes it.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from .basis import decompose_factors
from .curvature import CollectConfig, collect_from_files, save_factors
from .data import iter_batches, iter_windows, list_data_files
from .edit import EditConfig, apply_edit, save_edited_model, uniform_plan
from .spectrum import format_table, plot_spectra, spectrum_rows
from .targets import resolve_targets
from .tiny import build_tiny_lm, write_corpus


@torch.no_grad()
def mean_token_loss(model, tokenizer, data: Path, seq_len: int = 64) -> float:
    """Mean next-token cross-entropy over the counted positions of ``data``."""
    total, count = 0.0, 0
    for batch in iter_batches(iter_windows(list_data_files(data), tokenizer, seq_len), 16, tokenizer.pad_token_id):
        logits = model(**batch).logits[:, :-1].float()
        labels = batch["input_ids"][:, 1:]
        keep = (batch["attention_mask"][:, :-1] * batch["attention_mask"][:, 1:]).bool()
        total += float(torch.nn.functional.cross_entropy(logits[keep], labels[keep], reduction="sum"))
        count += int(keep.sum())
    return total / count


def run_demo(out: str | Path = "runs/demo", rho: float = 0.9) -> dict:
    from transformers import AutoModelForCausalLM

    out = Path(out)
    start = time.perf_counter()
    model, tokenizer = build_tiny_lm("llama", seed=0, hidden=64, layers=4)
    model.save_pretrained(out / "model")
    tokenizer.save_pretrained(out / "model")
    clean = write_corpus(out / "data" / "clean.txt", documents=400, seed=1)
    heldout = write_corpus(out / "data" / "heldout.txt", documents=100, seed=2)
    targets = resolve_targets(model)
    factors = collect_from_files(model, tokenizer, str(clean), targets, CollectConfig(seq_len=64, max_tokens=20_000, batch_size=16))
    save_factors(factors, out / "factors", model=model, overwrite=True)
    bases = decompose_factors(factors)
    print(format_table(spectrum_rows(bases)))
    plot_spectra(bases, out / "spectrum.png")
    baseline = mean_token_loss(model, tokenizer, heldout)
    print(f"\nheld-out loss before any edit: {baseline:.4f} (ppl {math.exp(baseline):.2f})")
    results = {"baseline_loss": baseline, "methods": {}}
    for method in ("kfac", "random", "svd"):
        edit = apply_edit(model, uniform_plan(targets, rho), factors, EditConfig(method=method), bases=bases)
        folder = save_edited_model(edit, out / f"edited-{method}", tokenizer, overwrite=True)
        edit.restore()
        reloaded = AutoModelForCausalLM.from_pretrained(folder).eval()
        loss = mean_token_loss(reloaded, tokenizer, heldout)
        change = sum(s.relative_change for s in edit.modules.values()) / len(edit.modules)
        results["methods"][method] = {"loss": loss, "mean_relative_change": change}
        print(f"{method:>6} rho={rho}: held-out loss {loss:.4f} (ppl {math.exp(loss):.2f}), mean |dW|/|W| {change:.3f} -> {folder}")
    print(f"\ndemo finished in {time.perf_counter() - start:.1f} s; outputs in {out}")
    return results

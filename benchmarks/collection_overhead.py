#!/usr/bin/env python
"""How much does K-FAC collection cost next to a plain forward+backward pass of the same model on the same tokens?

    .venv/bin/python benchmarks/collection_overhead.py            # full run (~1 min on 2 cores)
    .venv/bin/python benchmarks/collection_overhead.py --quick    # smoke run (~15 s)

Writes ``docs/results/benchmarks/results-collection-overhead.md`` and ``.json``
(``results-collection-overhead-quick.*`` with ``--quick``); the Markdown is printed on stdout too,
progress goes to stderr. Part 1 of the former ``benchmarks/run_all.py`` (its last combined run:
``docs/results/benchmarks/results.md``, "Collection overhead").

A ~5M-parameter Llama-style causal LM (random init from a config) on random token windows: plain
forward+backward (eval mode, parameters requiring grad, summed next-token cross-entropy,
``loss.backward()``, grads zeroed each batch) versus ``collect_factors`` on every MLP projection
and on the last block's MLP only (the graph starts at the earliest target, so backward is
truncated). One warm-up batch precedes every timed run. A forward-only (no_grad) row is the floor.
The true Fisher's label sampling is also timed alone, for its share of the collection time.

torch's thread count is left at its default.
"""

from __future__ import annotations

import gc
import sys
from collections import OrderedDict
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))  # run from a checkout without installing
sys.path.insert(0, str(HERE))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from _common import log, median_time, parser_for, run_benchmark, table, timed  # noqa: E402
from torch import nn  # noqa: E402

from unmemorize.curvature import CollectConfig, NextTokenObjective, collect_factors  # noqa: E402
from unmemorize.targets import resolve_targets  # noqa: E402
from unmemorize.tiny import tiny_config  # noqa: E402

STEM = "results-collection-overhead"
# The collection model: Llama-style, MLP ratio 688/256 ~ 11008/4096 as in Llama-7B.
MODEL = dict(vocab_size=2048, hidden=256, intermediate=688, layers=5, heads=4)


def build_model(seq_len: int):
    from transformers import AutoModelForCausalLM

    config = tiny_config("llama", vocab_size=MODEL["vocab_size"], hidden=MODEL["hidden"], layers=MODEL["layers"])
    config.intermediate_size = MODEL["intermediate"]
    config.num_attention_heads = MODEL["heads"]
    config.num_key_value_heads = MODEL["heads"]
    config.head_dim = MODEL["hidden"] // MODEL["heads"]
    config.max_position_embeddings = max(seq_len, config.max_position_embeddings)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    return model


def random_batches(count: int, batch_size: int, seq_len: int, vocab: int, seed: int) -> list[dict]:
    generator = torch.Generator().manual_seed(seed)
    return [
        {
            "input_ids": torch.randint(3, vocab, (batch_size, seq_len), generator=generator),
            "attention_mask": torch.ones(batch_size, seq_len, dtype=torch.long),
        }
        for _ in range(count)
    ]


def plain_forward_backward(model: nn.Module, batches: list[dict]) -> None:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(True)
    for batch in batches:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        loss = F.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]).float(), batch["input_ids"][:, 1:].reshape(-1), reduction="sum"
        )
        loss.backward()
        model.zero_grad(set_to_none=True)


def forward_only(model: nn.Module, batches: list[dict]) -> None:
    with torch.no_grad():
        for batch in batches:
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])


def bench_collection(quick: bool) -> dict:
    batch_size, seq_len = 8, 256
    num_batches = 1 if quick else 24  # 2,048 or 49,152 timed tokens
    model = build_model(seq_len)
    params = sum(p.numel() for p in model.parameters())
    log(f"collection: {params / 1e6:.2f}M-parameter Llama, {num_batches} x {batch_size} x {seq_len} tokens")
    warm = random_batches(1, batch_size, seq_len, MODEL["vocab_size"], seed=1)
    batches = random_batches(num_batches, batch_size, seq_len, MODEL["vocab_size"], seed=2)
    tokens = num_batches * batch_size * seq_len
    all_mlp = resolve_targets(model)
    last_mlp = resolve_targets(model, layers=[MODEL["layers"] - 1])
    config = CollectConfig(progress=False, fisher="true", seq_len=seq_len, batch_size=batch_size, max_tokens=None)

    runs = OrderedDict()
    runs["forward only (no_grad)"] = lambda b: forward_only(model, b)
    runs["plain forward+backward"] = lambda b: plain_forward_backward(model, b)
    runs[f"collect_factors, all MLP ({len(all_mlp)} modules)"] = lambda b: collect_factors(model, b, all_mlp, config)
    runs[f"collect_factors, last block MLP ({len(last_mlp)} modules)"] = lambda b: collect_factors(model, b, last_mlp, config)

    rows = []
    for name, run in runs.items():
        run(warm)
        gc.collect()
        seconds, _ = timed(run, batches)
        for p in model.parameters():  # plain f+b leaves requires_grad on; collect restores it
            p.grad = None
        rows.append({"run": name, "seconds": seconds, "tokens": tokens, "tokens_per_s": tokens / seconds})
        log(f"  {name}: {seconds:.2f} s")
    plain = next(r["seconds"] for r in rows if r["run"] == "plain forward+backward")
    for row in rows:
        row["ratio_to_plain_fb"] = row["seconds"] / plain
    # The true Fisher samples one label per position from the softmax (NextTokenObjective.label_sampler);
    # time that alone on logits of one batch's shape to show its share of the collection time.
    objective = NextTokenObjective()
    logits = torch.randn(batch_size * (seq_len - 1), MODEL["vocab_size"], generator=torch.Generator().manual_seed(3))
    sampler_gen = torch.Generator().manual_seed(0)
    objective.label_sampler(logits, sampler_gen)
    per_batch, _, _ = median_time(lambda: objective.label_sampler(logits, sampler_gen), 3)
    collect_all = next(r["seconds"] for r in rows if r["run"].startswith("collect_factors, all MLP"))
    sampling = {
        "per_batch_s": per_batch,
        "positions_per_batch": logits.shape[0],
        "vocab": MODEL["vocab_size"],
        "estimated_total_s": per_batch * num_batches,
        "share_of_collect_all": per_batch * num_batches / collect_all,
    }
    log(f"  label sampling alone: {per_batch * 1e3:.0f} ms per batch")
    return {
        "model": {
            **MODEL,
            "parameters": params,
            "attn_implementation": getattr(model.config, "_attn_implementation", None),
            "dtype": "float32",
        },
        "batch_size": batch_size,
        "seq_len": seq_len,
        "timed_batches": num_batches,
        "timed_tokens": tokens,
        "warmup_batches": 1,
        "fisher": "true",
        "targets_all": all_mlp,
        "targets_last": last_mlp,
        "rows": rows,
        "true_fisher_label_sampling": sampling,
    }


def markdown(c: dict) -> list[str]:
    out = []
    mdl = c["model"]
    out.append(f"## Collection overhead\n\nLlama-style causal LM, random init: {mdl['parameters']:,} parameters "
               f"(vocab {mdl['vocab_size']}, hidden {mdl['hidden']}, intermediate {mdl['intermediate']}, "
               f"{mdl['layers']} layers, {mdl['heads']} heads, untied, float32, attention {mdl['attn_implementation']}). "
               f"{c['timed_batches']} batch{'es' if c['timed_batches'] != 1 else ''} x {c['batch_size']} x {c['seq_len']} = {c['timed_tokens']:,} random tokens "
               f"after 1 warm-up batch; true Fisher.\n")
    out.append(table(["run", "seconds", "tokens/s", "x plain fwd+bwd"],
                     [[r["run"], f"{r['seconds']:.2f}", f"{r['tokens_per_s']:,.0f}", f"{r['ratio_to_plain_fb']:.2f}"]
                      for r in c["rows"]]))
    ls = c["true_fisher_label_sampling"]
    out.append(f"\nOf which true-Fisher label sampling (NextTokenObjective.label_sampler: softmax + inverse CDF over {ls['positions_per_batch']:,} "
               f"positions x vocab {ls['vocab']:,}, timed alone): {ls['per_batch_s'] * 1e3:.0f} ms per batch, "
               f"~{ls['share_of_collect_all']:.0%} of the all-MLP collection time.")
    out.append("")
    return out


def main(argv=None) -> int:
    args = parser_for(__doc__, STEM).parse_args(argv)
    return run_benchmark("collection", lambda started: bench_collection(args.quick), quick=args.quick, out=args.out, stem=STEM,
                         title="unmemorize benchmarks: collection overhead", section_markdown=markdown)


if __name__ == "__main__":
    raise SystemExit(main())

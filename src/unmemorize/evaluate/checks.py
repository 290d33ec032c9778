"""The checks of ``unmemorize stress`` (``commands/stress.py``): the stress test, nDCG@10 and the attacks on one model, one record.

    unmemorize stress --model EDITED --items memorized_validation.jsonl --controls control_sequences.jsonl \\
        [--set quotes=quotes.jsonl] [--checks stress,ndcg,relearn,sample,bf16] \\
        [--baseline BASE --ndcg-data clean.txt] [--relearn-items memorized_tuning.jsonl | --relearn-text clean.txt] \\
        --out results.json

Sets: ``items`` (the memorized items), ``controls`` (never-trained items, optional) and any
``--set NAME=FILE``; all are memorization .jsonl files (``memorization.py``). Greedy recitation of
every set is measured first, and again after each attack. Checks (default: stress):

    stress   position perturbation (``stress.py``) on items and controls
    ndcg     nDCG@K of --model against --baseline on --ndcg-data (``coherence.py``)
    relearn  recitation of every set after k AdamW steps on --relearn-items or --relearn-text (``attacks.py`` (a))
    sample   sampled extraction on items and controls (``attacks.py`` (b))
    bf16     recitation after a bf16 round trip of the weights (``attacks.py`` (c))

The result file records every configuration and input path; it is strict JSON, written atomically.
"""

from __future__ import annotations

import dataclasses

from .attacks import ExtractionConfig, RelearnConfig, bf16_attack, recitation, relearning_attack, sampled_extraction
from .coherence import NDCGConfig, ndcg
from .stress import StressConfig, stress_test

CHECKS = ("stress", "ndcg", "relearn", "sample", "bf16")


@dataclasses.dataclass
class CheckRequest:
    """What ``run_checks`` does: which checks, with which settings and extra inputs."""

    checks: tuple[str, ...] = ("stress",)
    stress: StressConfig = dataclasses.field(default_factory=StressConfig)
    ndcg: NDCGConfig = dataclasses.field(default_factory=NDCGConfig)
    relearn: RelearnConfig = dataclasses.field(default_factory=RelearnConfig)
    extraction: ExtractionConfig = dataclasses.field(default_factory=ExtractionConfig)
    batch_size: int = 64  # greedy decoding


def run_checks(model, sets: dict, pad_id: int, request: CheckRequest, reference_top_k=None, ndcg_windows_=None,
               relearn_sequences=None) -> dict:
    """Every requested check of ``model`` on the named ``sets`` ('items' required, 'controls' optional).

    ``reference_top_k`` and ``ndcg_windows_`` (from ``coherence``) are needed for 'ndcg',
    ``relearn_sequences`` (token-id lists) for 'relearn'. Returns a JSON-ready dict.
    """
    probed = {name: sets[name] for name in ("items", "controls") if name in sets}
    result: dict = {"recitation": recitation(model, sets, pad_id, request.batch_size)}
    if "stress" in request.checks:
        result["stress"] = {name: stress_test(model, items, pad_id, request.stress).to_dict() for name, items in probed.items()}
    if "ndcg" in request.checks:
        result["ndcg"] = ndcg(model, reference_top_k, ndcg_windows_, request.ndcg).to_dict()
    if "relearn" in request.checks:
        result["relearn"] = relearning_attack(model, relearn_sequences, sets, pad_id, request.relearn)
    if "sample" in request.checks:
        result["sample"] = {name: sampled_extraction(model, items, request.extraction) for name, items in probed.items()}
    if "bf16" in request.checks:
        result["bf16"] = bf16_attack(model, sets, pad_id)
    return result


def format_summary(record: dict) -> str:
    """A few Markdown lines: recitation per set, then one line per check that ran."""
    lines = ["| set | n | strict | loose |", "|---|---|---|---|"]
    lines += [f"| {name} | {s['n']} | {s['strict']:.3f} | {s['loose']:.3f} |" for name, s in record["recitation"].items()]
    for name, row in record.get("stress", {}).items():
        o, s = row["summary"]["original"], row["summary"]["stressed"]
        lines.append(f"stress {name}: original {o['mean']:.2f} +- {o['std']:.2f}, perturbed {s['mean']:.2f} +- {s['std']:.2f} tokens")
    if "ndcg" in record:
        lines.append(f"nDCG@{record['ndcg']['config']['k']}: {record['ndcg']['ndcg']:.4f} over {record['ndcg']['positions']} positions")
    if "relearn" in record:
        for name, rows in record["relearn"]["sets"].items():
            steps = ", ".join(f"k={k}: {r['strict']:.3f}" for k, r in zip(record["relearn"]["steps"], rows))
            lines.append(f"relearn -> {name} strict: {steps}")
    for name, row in record.get("sample", {}).items():
        lines.append(f"sample {name}: exact {row['exact_rate']:.3f} (items with one: {row['items_with_exact']:.3f}), "
                     f"log-lik/token {row['mean_log_likelihood_per_token']:.3f}")
    if "bf16" in record:
        lines.append("bf16 round trip strict: " + ", ".join(f"{n} {s['strict']:.3f}" for n, s in record["bf16"]["sets"].items()))
    return "\n".join(lines)

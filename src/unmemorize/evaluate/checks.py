"""The checks of ``unmemorize stress`` (``commands/stress.py``): the stress test, nDCG@10 and the attacks on one model, one record.

    unmemorize stress --model EDITED --items memorized_validation.jsonl --controls control_sequences.jsonl \\
        [--set quotes=quotes.jsonl] [--checks stress,ndcg,relearn,sample,bf16,quant] \\
        [--baseline BASE --ndcg-data clean.txt] [--relearn-items memorized_tuning.jsonl | --relearn-text clean.txt] \\
        --out results.json

Sets: ``items`` (the memorized items), ``controls`` (never-trained items, optional) and any
``--set NAME=FILE``; all are memorization .jsonl files (``memorization.py``). Greedy recitation of
every set is measured first, and again after each attack. Checks (default: stress):

    stress   position perturbation (``stress.py``) on items and controls
    ndcg     nDCG@K of --model against --baseline on --ndcg-data (``coherence.py``)
    relearn  recitation of every set after k AdamW steps on --relearn-items or --relearn-text (``attacks.py`` (a))
    sample   sampled extraction on items and controls (``attacks.py`` (b))
    bf16     recitation after a bf16 round trip of the weights (``attacks.py`` (c)): a check of numerical fragility,
             not a recognised attack
    quant    recitation after 4-bit and 8-bit post-training weight quantization (optimum-quanto;
             ``quantization.py``): the attack of Zhang et al. (ICLR 2025)

The result file records every configuration and input path; it is strict JSON, written atomically.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ..errors import UnmemorizeError
from .attacks import ExtractionConfig, RelearnConfig, bf16_attack, recitation, relearning_attack, sampled_extraction
from .coherence import NDCGConfig, ndcg
from .stress import StressConfig, stress_test

CHECKS = ("stress", "ndcg", "relearn", "sample", "bf16", "quant")


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
    if "quant" in request.checks:
        from .quantization import quantization_attack

        result["quant"] = quantization_attack(model, sets, pad_id)
    return result


@dataclasses.dataclass
class StressJob:
    """One ``unmemorize stress`` run: the model, the named memorization sets, the checks and the extra inputs."""

    model: str
    sets: dict[str, str]  # {"items": path, "controls": path (optional), name: path, ...}
    out: str  # the JSON file written
    request: CheckRequest = dataclasses.field(default_factory=CheckRequest)
    baseline: str | None = None  # the unedited model (check 'ndcg')
    ndcg_data: str | None = None  # clean text (check 'ndcg')
    relearn_items: str | None = None  # relearning set: memorized items (check 'relearn')
    relearn_text: str | None = None  # relearning set: clean text
    model_dtype: str = "float32"
    device: str = "cpu"
    trust_remote_code: bool = False
    overwrite: bool = False


def run_stress_job(job: StressJob) -> tuple[dict, Path]:
    """Check the output path, claim it, load, ``run_checks``, write the strict-JSON record atomically.
    Returns (the record, the absolute path it was written to)."""
    from .._atomic import atomic_file
    from .._version import __version__
    from ..data import iter_windows, list_data_files, pad_token_id
    from ..jsonio import write_json
    from ..models import load_model, model_limits
    from ..paths import command_output
    from .attacks import item_sequences
    from .coherence import ndcg_windows, top_k_ids
    from .memorization import load_memorization_set

    if Path(job.out).suffix.lower() != ".json":
        raise UnmemorizeError(f"--out {job.out!r} must be a .json file")
    inputs = {"--model": job.model, "--baseline": job.baseline, "--ndcg-data": job.ndcg_data, "--relearn-items": job.relearn_items,
              "--relearn-text": job.relearn_text,
              **{f"--{name}" if name in ("items", "controls") else f"--set {name}": path for name, path in job.sets.items()}}
    with command_output(job.out, job.overwrite, inputs, kind="file") as out:
        model, tokenizer = load_model(job.model, job.model_dtype, job.device, job.trust_remote_code)
        sets = {name: load_memorization_set(path, tokenizer) for name, path in job.sets.items()}
        pad_id = pad_token_id(tokenizer)
        reference = windows = sequences = None
        if "ndcg" in job.request.checks:
            windows = ndcg_windows(job.ndcg_data, tokenizer, job.request.ndcg.seq_len, job.request.ndcg.max_tokens)
            baseline, _ = load_model(job.baseline, job.model_dtype, job.device, job.trust_remote_code)
            if baseline.config.vocab_size != model.config.vocab_size:
                raise UnmemorizeError(f"--baseline has a vocabulary of {baseline.config.vocab_size}, --model of "
                                      f"{model.config.vocab_size}: nDCG needs the same tokens")
            reference = top_k_ids(baseline, windows, job.request.ndcg.k, job.request.ndcg.batch_size)
            del baseline
        if "relearn" in job.request.checks:
            if job.relearn_items:
                sequences = item_sequences(load_memorization_set(job.relearn_items, tokenizer))
            else:
                relearn = job.request.relearn  # as many windows as the steps can use, each at most once: never the whole corpus
                budget = max(1, max(relearn.steps)) * relearn.batch_size * relearn.seq_len
                sequences = list(iter_windows(list_data_files(job.relearn_text), tokenizer, relearn.seq_len, budget, *model_limits(model)))
        result = run_checks(model, sets, pad_id, job.request, reference, windows, sequences)
        record = {"unmemorize_version": __version__, "model": job.model, "model_dtype": job.model_dtype, "checks": list(job.request.checks),
                  "inputs": {k: str(v) for k, v in inputs.items() if v},
                  "sets": {name: {"path": str(job.sets[name]), "n": len(items)} for name, items in sets.items()},
                  "config": {"stress": dataclasses.asdict(job.request.stress), "ndcg": dataclasses.asdict(job.request.ndcg),
                             "relearn": dataclasses.asdict(job.request.relearn), "extraction": dataclasses.asdict(job.request.extraction)},
                  **result}
        with atomic_file(out, job.overwrite) as tmp:
            write_json(tmp, record)
    return record, Path(out)


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
    for width, row in record.get("quant", {}).get("by_bits", {}).items():
        lines.append(f"{width} weights (optimum-quanto) strict: " + ", ".join(f"{n} {s['strict']:.3f}" for n, s in row["sets"].items()))
    return "\n".join(lines)

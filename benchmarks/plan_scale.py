"""What do collection and editing need at 7B, 70B and for OLMoE-1B-7B (memory, disk, passes)? The --dry-run plan from the shapes alone.

    .venv/bin/python benchmarks/plan_scale.py        # a few seconds; writes docs/results/benchmarks/results-plan.md and .json

The models are built on the meta device from their published shapes (no weights, no download):
OLMo-2 7B (hidden 4096, MLP 11008, 32 blocks, vocab 100352) and a Llama-3-70B-shaped model
(hidden 8192, MLP 28672, 80 blocks, 8 KV heads, vocab 128256), and OLMoE-1B-7B (hidden 2048, 16 blocks,
64 experts of MLP 1024 a block, top-8, vocab 50304): its experts multiply the factor bytes, every
expert having its own A and G. Bytes are exact (the formulas of
``curvature/plan.py`` and ``edit/estimate.py``); times are not estimated here (they need the
warm-up of a real run: ``collect --dry-run`` on the machine that will run it).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from accelerate import init_empty_weights  # noqa: E402
from transformers import AutoModelForCausalLM, LlamaConfig, Olmo2Config, OlmoeConfig  # noqa: E402

from unmemorize.curvature import CollectConfig  # noqa: E402
from unmemorize.curvature.plan import collection_plan  # noqa: E402
from unmemorize.matrices import model_matrices  # noqa: E402
from unmemorize.targets import resolve_targets  # noqa: E402

from _report import write_results  # noqa: E402

GiB = 1024**3
MODELS = {
    "OLMo-2 7B": Olmo2Config(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                             num_key_value_heads=32, vocab_size=100352, max_position_embeddings=4096),
    "Llama-3 70B shape": LlamaConfig(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64,
                                     num_key_value_heads=8, vocab_size=128256, max_position_embeddings=8192),
    "OLMoE-1B-7B": OlmoeConfig(hidden_size=2048, intermediate_size=1024, num_hidden_layers=16, num_attention_heads=16,
                               num_key_value_heads=16, num_experts=64, num_experts_per_tok=8, vocab_size=50304,
                               max_position_embeddings=4096),
}


def scenarios(model):
    blocks = model.config.num_hidden_layers
    first = blocks * 23 // 32  # OLMo-2 7B: the paper's blocks 23-25; at 70B the same depth
    paper = ",".join(str(b) for b in range(first, first + 3))
    per_pass = 3 if "experts" not in " ".join(model_matrices(model)) else 192  # OLMoE: one block's 64 experts x 3 a pass
    return {
        "every MLP matrix, one pass": (resolve_targets(model), 0),
        f"every MLP matrix, {per_pass} modules per pass": (resolve_targets(model), per_pass),
        (f"paper's blocks {paper}, gate+up" if per_pass == 3 else f"blocks {paper} (the paper's depth), experts' gate+up"):
            (resolve_targets(model, layers=paper, projections="gate,up"), 0),
    }


def main() -> None:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()  # no options; --help
    rows, record = [], {}
    for name, config in MODELS.items():
        with init_empty_weights():
            model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
        modules = {n: m.shape for n, m in model_matrices(model).items()}
        for label, (targets, per_pass) in scenarios(model).items():
            plan = collection_plan(model, targets, CollectConfig(modules_per_pass=per_pass))
            sizes = {n for t in targets for n in modules[t]}
            basis = sum(8 * (d * d + d) for t in targets for d in modules[t])  # float64 eigenvectors, no sharing
            entry = {"modules": len(targets), "passes": plan["passes"], "factor_files_GiB": plan["factor_file_bytes"] / GiB,
                     "expert_matrices": plan["expert_matrices"], "expert_factor_GiB": plan["expert_factor_bytes"] / GiB,
                     "accumulators_GiB": sum(plan["accumulator_bytes_per_device"].values()) / GiB,
                     "checkpoint_GiB": plan["checkpoint_bytes"] / GiB, "disk_GiB": plan["disk_bytes"] / GiB,
                     "weights_bf16_GiB": sum(plan["weight_bytes_per_device"].values()) / GiB,
                     "eigenbasis_cache_float64_GiB": basis / GiB, "matrix_sizes": sorted(sizes)}
            record[f"{name} / {label}"] = entry
            rows.append(f"| {name} | {label} | {entry['modules']} | {entry['passes']} | {entry['factor_files_GiB']:.1f} | "
                        f"{entry['expert_factor_GiB']:.1f} | "
                        f"{entry['accumulators_GiB']:.1f} | {entry['checkpoint_GiB']:.1f} | {entry['disk_GiB']:.1f} | "
                        f"{entry['weights_bf16_GiB']:.1f} | {entry['eigenbasis_cache_float64_GiB']:.1f} |")
    table = ["# Collection plans at 7B and 70B (from the shapes; `collect --dry-run` formulas)", "",
             "Command: `.venv/bin/python benchmarks/plan_scale.py`. float32 accumulators and factor files; bf16 weights.", "",
             "| model | targets | modules | passes | factor files GiB | of which experts' GiB | accumulators GiB (largest pass) | "
             "checkpoint GiB | disk GiB | weights GiB | float64 eigenbasis cache GiB |", "|---|---|---|---|---|---|---|---|---|---|---|", *rows, ""]
    write_results("results-plan", table, record)


if __name__ == "__main__":
    main()

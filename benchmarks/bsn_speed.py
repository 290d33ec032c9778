"""How long does BalancedSubnet take on a trained testbed folder, and what does it do to strict recitation (issue 12: BSN against the K-FAC pipeline)?

    .venv/bin/python benchmarks/bsn_speed.py ~/.cache/unmemorize/testbed/<key> [--epochs 1] [--ratio 0.01] [--alpha 0.7]
    .venv/bin/python benchmarks/bsn_speed.py --quick      # the quick testbed (trained first if it is not cached)

Run time: BSN itself took 13-14 s per setting of 60 steps on a world-v5 testbed on 2 cores
(README, "Wall time"); add the model and data loads and the strict accuracy before and after,
and with ``--quick`` the quick testbed's training when it is not cached (minutes).

Forget set: ``data/memorized_tuning.jsonl`` (the tuning split only, never the validation split or
the quotes). Retain set: ``data/factors_mixture.txt`` (the training mixture without memorized
items), its first ``--retain-tokens`` tokens in ``--seq-len`` windows. Times the model load, the
data load and ``balanced_subnet`` (training plus applying the mask), records the share of the CPUs
other processes used meanwhile (timings on a shared machine are otherwise meaningless), and, unless
``--no-eval``, strict accuracy on the tuning and validation splits before and after. Prints one
JSON object and writes it (strict JSON) to ``--json`` (default
``docs/results/benchmarks/results-bsn-speed.json``, ``results-bsn-speed-quick.json`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import RESULTS, ForeignLoad, machine  # noqa: E402

from unmemorize.baselines import BSNConfig, balanced_subnet, load_token_set  # noqa: E402
from unmemorize.data import pad_token_id  # noqa: E402
from unmemorize.evaluate import evaluate_memorization, load_memorization_set  # noqa: E402
from unmemorize.jsonio import strict_dumps, write_json  # noqa: E402
from unmemorize.models import load_model, model_limits  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("testbed", nargs="?", help="A trained testbed folder (model/, data/, testbed.json).")
    where.add_argument("--quick", action="store_true", help="The quick testbed (quick_configs(0)), trained first if needed.")
    parser.add_argument("--ratio", type=float, default=BSNConfig.ratio)
    parser.add_argument("--alpha", type=float, default=BSNConfig.alpha)
    parser.add_argument("--epochs", type=int, default=BSNConfig.epochs)
    parser.add_argument("--lr", type=float, default=BSNConfig.lr)
    parser.add_argument("--batch-size", type=int, default=BSNConfig.batch_size)
    parser.add_argument("--seq-len", type=int, default=64, help="Retain window length (default: 64).")
    parser.add_argument("--retain-tokens", type=int, default=50_000, help="Retain tokens read (default: 50000).")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice).")
    parser.add_argument("--no-eval", action="store_true", help="Skip the strict accuracy before and after.")
    parser.add_argument("--json", help="Write the result to this file (default docs/results/benchmarks/results-bsn-speed.json, "
                                       "or results-bsn-speed-quick.json with --quick).")
    return parser.parse_args()


def strict(model, items, pad_id) -> float:
    return evaluate_memorization(model, items, pad_id).strict


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        from unmemorize.testbed.train import load_or_train, quick_configs

        folder = load_or_train(*quick_configs(0), progress=False)
    else:
        folder = Path(args.testbed)
    data = folder / "data"
    config = BSNConfig(ratio=args.ratio, alpha=args.alpha, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                       seq_len=args.seq_len, retain_tokens=args.retain_tokens, progress=False)
    config.validate()
    start = time.perf_counter()
    model, tokenizer = load_model(str(folder / "model"))
    load_seconds = time.perf_counter() - start
    pad_id = pad_token_id(tokenizer)
    start = time.perf_counter()
    vocab, positions = model_limits(model)
    forget = load_token_set(data / "memorized_tuning.jsonl", tokenizer, config.seq_len, None, vocab, positions, "--forget")
    retain = load_token_set(data / "factors_mixture.txt", tokenizer, config.seq_len, config.retain_tokens, vocab, positions, "--retain")
    data_seconds = time.perf_counter() - start
    splits = {name: load_memorization_set(data / f"memorized_{name}.jsonl") for name in ("tuning", "validation")}
    before = {} if args.no_eval else {name: strict(model, items, pad_id) for name, items in splits.items()}
    with ForeignLoad() as load:
        start = time.perf_counter()
        model, record = balanced_subnet(model, forget, retain, config, pad_id=pad_id)
        bsn_seconds = time.perf_counter() - start
    after = {} if args.no_eval else {name: strict(model, items, pad_id) for name, items in splits.items()}
    result = {
        "testbed": str(folder), "parameters": sum(p.numel() for p in model.parameters()), "config": record.to_dict()["config"],
        "forget": forget.source, "retain": retain.source, "steps": record.steps,
        "forget_per_batch": record.forget_per_batch, "retain_per_batch": record.retain_per_batch,
        "seconds": {"load_model": round(load_seconds, 3), "load_data": round(data_seconds, 3), "bsn": round(bsn_seconds, 3),
                    "per_step": round(bsn_seconds / max(1, record.steps), 4)},
        "foreign_cpu_load": load.fraction, "strict_before": before, "strict_after": after,
        "last_batch": record.history[-1], "machine": machine(),
    }
    print(strict_dumps(result))
    write_json(args.json or RESULTS / f"results-bsn-speed{'-quick' if args.quick else ''}.json", result)


if __name__ == "__main__":
    main()

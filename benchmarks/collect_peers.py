#!/usr/bin/env python
"""Is our K-FAC collection as fast as curvlinops' and kronfluence's, and do the three agree on A and G?

    .venv/bin/python benchmarks/collect_peers.py            # ~4 min on an idle 2-core machine
    .venv/bin/python benchmarks/collect_peers.py --quick    # smoke run (~1 min)

Writes the ``peers`` section of ``docs/results/benchmarks/results-collect.md`` and key ``peers`` of
``results-collect.json`` (``results-collect-quick.*`` with ``--quick``), starting with the command
that produced it. Formerly ``benchmarks/collect_scale.py --part peers``. Timed runs wait for
other processes to go quiet and are redone when disturbed.

Ours vs curvlinops' ``KFACLinearOperator`` (KFAC-expand) and kronfluence's
``fit_covariance_matrices`` on the same model and tokens as collect_ideal.py (8 batches): wall time
(empirical and true/MC Fisher) and agreement of A and G (relative Frobenius error, empirical Fisher,
after each library's documented scale convention; see ``bench_peers``). kronfluence is skipped
when it is not installed.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(HERE))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from _report import command_line, foreign_load, log, machine, percent, update  # noqa: E402
from _scale import SCALE, build_llama, collect, git_state, relative_error, timed_clean, token_batches  # noqa: E402

from unmemorize.targets import resolve_targets  # noqa: E402


def curvlinops_factors(model, batches, targets, fisher):
    """curvlinops' KFAC (KFACType.EXPAND) with a SUM-reduced CrossEntropyLoss on (ids[:, :-1], ids[:, 1:]).

    Feeding the truncated windows makes every position a Linear layer sees a counted position.
    Convention: A_cl = (1 / (num_data * (T-1))) sum a a^T = our A; with reduction='sum' G_cl is
    the SUM over positions of g g^T (loss-scale correction 1), so our G = G_cl / N, N = all
    counted positions (as tests/oracles/curvlinops_kfac.py documents for one batch).
    """
    from curvlinops import FisherType, KFACLinearOperator, KFACType

    class FlatLogits(torch.nn.Module):
        def __init__(self, lm):
            super().__init__()
            self.lm = lm

        def forward(self, ids):
            logits = self.lm(input_ids=ids, use_cache=False).logits
            return logits.reshape(-1, logits.shape[-1])

    modules = {n: model.get_submodule(n) for n in targets}
    params = [m.weight for m in modules.values()]
    data = [(b["input_ids"][:, :-1].contiguous(), b["input_ids"][:, 1:].reshape(-1)) for b in batches]
    sequences = sum(x.shape[0] for x, _ in data)
    positions = sequences * (data[0][0].shape[1])
    for p in params:
        p.requires_grad_(True)
    try:
        kfac = KFACLinearOperator(FlatLogits(model), torch.nn.CrossEntropyLoss(reduction="sum"), params, data, progressbar=False,
                                  check_deterministic=False, seed=0,
                                  fisher_type={"empirical": FisherType.EMPIRICAL, "true": FisherType.MC}[fisher], mc_samples=1,
                                  kfac_approx=KFACType.EXPAND, num_per_example_loss_terms=data[0][0].shape[1],
                                  separate_weight_and_bias=True, num_data=sequences)
        kfac.compute_kronecker_factors()
    finally:
        for p in params:
            p.requires_grad_(False)
    state = kfac.state_dict()
    return {n: (state["input_covariances"][f"lm.{n}"], state["gradient_covariances"][f"lm.{n}"] / positions) for n in targets}


def kronfluence_factors(model, batches, targets, fisher, workdir):
    """kronfluence's ``fit_covariance_matrices`` (covariance stage of its factor fitting) on a deep copy of the model.

    Convention: kronfluence stores SUMS of a a^T and g g^T and the counts of rows it summed;
    its eigendecomposition stage divides by the counts. g is the gradient of the task's loss,
    which we make SUM-reduced (as kronfluence's docs require for K-FAC), on (ids[:, :-1],
    ids[:, 1:]): A = A_sum / count_A and G = G_sum / count_G are then our A and G. The true
    Fisher samples labels with torch.multinomial, as kronfluence's language-model examples do.
    """
    from kronfluence.analyzer import Analyzer, prepare_model
    from kronfluence.arguments import FactorArguments
    from kronfluence.task import Task
    from kronfluence.utils.dataset import DataLoaderKwargs

    class NextToken(Task):
        def compute_train_loss(self, batch, model, sample=False):
            logits = model(input_ids=batch["input_ids"], use_cache=False).logits
            logits = logits.reshape(-1, logits.shape[-1])
            if sample:
                with torch.no_grad():
                    labels = torch.multinomial(torch.softmax(logits.detach(), dim=-1), num_samples=1).flatten()
            else:
                labels = batch["labels"].reshape(-1)
            return F.cross_entropy(logits, labels, reduction="sum")

        def compute_measurement(self, batch, model):
            return self.compute_train_loss(batch, model)

        def get_influence_tracked_modules(self):
            return list(targets)

        def get_attention_mask(self, batch):
            return None

    rows = [{"input_ids": ids[:-1], "labels": ids[1:]} for b in batches for ids in b["input_ids"]]

    class Windows(torch.utils.data.Dataset):
        def __len__(self):
            return len(rows)

        def __getitem__(self, index):
            return rows[index]

    task = NextToken()
    wrapped = prepare_model(copy.deepcopy(model), task)
    analyzer = Analyzer(analysis_name="bench", model=wrapped, task=task, cpu=True, disable_tqdm=True, output_dir=str(workdir),
                        log_level=logging.WARNING)
    analyzer.set_dataloader_kwargs(DataLoaderKwargs(num_workers=0))
    args = FactorArguments(strategy="kfac", use_empirical_fisher=fisher == "empirical", covariance_max_examples=None,
                           activation_covariance_dtype=torch.float32, gradient_covariance_dtype=torch.float32)
    start = time.perf_counter()
    analyzer.fit_covariance_matrices(f"cov_{fisher}", Windows(), per_device_batch_size=batches[0]["input_ids"].shape[0],
                                     factor_args=args, overwrite_output_dir=True)
    seconds = time.perf_counter() - start
    cov = analyzer.load_covariance_matrices(f"cov_{fisher}")
    out = {}
    for n in targets:
        a = cov["activation_covariance"][n] / cov["num_activation_covariance_processed"][n]
        g = cov["gradient_covariance"][n] / cov["num_gradient_covariance_processed"][n]
        out[n] = (a, g)
    return out, seconds


def bench_peers(quick: bool) -> None:
    scale = SCALE["quick" if quick else "full"]
    shape, batch, seq = scale["model"], scale["batch"], scale["seq"]
    model = build_llama(**shape, seq_len=seq)
    targets = resolve_targets(model)
    batches = token_batches(scale["peer_batches"], batch, seq, shape["vocab"], seed=2)
    warm = token_batches(1, batch, seq, shape["vocab"], seed=1)
    tokens = len(batches) * batch * seq
    log(f"peers: {len(targets)} MLP modules, {tokens:,} tokens")
    load = foreign_load()
    rows, agreement, factors, versions = [], {}, {}, {}
    workdir = Path(tempfile.mkdtemp(prefix="kronfluence-bench-"))
    have_kronfluence = importlib.util.find_spec("kronfluence") is not None
    try:
        for fisher in ("empirical", "true"):
            collect(model, warm, targets, fisher)
            seconds, foreign, ours = timed_clean(collect, model, batches, targets, fisher)
            rows.append({"library": "unmemorize collect_factors", "fisher": fisher, "seconds": seconds, "foreign_load": foreign})
            log(f"  unmemorize {fisher}: {seconds:.2f} s")
            if fisher == "empirical":
                factors["unmemorize"] = {n: (ours.activation[n], ours.gradient[n]) for n in targets}

            curvlinops_factors(model, warm, targets, fisher)
            seconds, foreign, theirs = timed_clean(curvlinops_factors, model, batches, targets, fisher)
            rows.append({"library": "curvlinops KFACLinearOperator (expand)", "fisher": "mc (1 sample)" if fisher == "true" else fisher,
                         "seconds": seconds, "foreign_load": foreign})
            log(f"  curvlinops {fisher}: {seconds:.2f} s")
            if fisher == "empirical":
                factors["curvlinops"] = theirs

            if have_kronfluence:
                kronfluence_factors(model, warm, targets, fisher, workdir)
                seconds_total, foreign, (theirs, seconds_fit) = timed_clean(kronfluence_factors, model, batches, targets, fisher, workdir)
                rows.append({"library": "kronfluence fit_covariance_matrices", "fisher": fisher, "seconds": seconds_fit,
                             "seconds_with_setup": seconds_total, "foreign_load": foreign})
                log(f"  kronfluence {fisher}: {seconds_fit:.2f} s ({seconds_total:.2f} s with deepcopy + wrapping)")
                if fisher == "empirical":
                    factors["kronfluence"] = theirs
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    for library in ("curvlinops", "kronfluence"):
        if library in factors:
            errors = {n: (relative_error(factors["unmemorize"][n][0], factors[library][n][0]),
                          relative_error(factors["unmemorize"][n][1], factors[library][n][1])) for n in targets}
            agreement[library] = {"max_A": max(e[0] for e in errors.values()), "max_G": max(e[1] for e in errors.values()),
                                  "per_module": errors}
    for library in ("curvlinops", "kronfluence"):
        try:
            from importlib.metadata import version
            versions[library] = version({"curvlinops": "curvlinops-for-pytorch", "kronfluence": "kronfluence"}[library])
        except Exception:  # noqa: BLE001 -- not installed
            versions[library] = None
    data = {"command": command_line(), "machine": machine(), "git": git_state(), "model": shape, "batch": batch, "seq_len": seq,
            "tokens": tokens, "targets": targets, "foreign_load_at_start": load, "rows": rows, "agreement": agreement,
            "versions": versions, "kronfluence_installed": have_kronfluence}
    update("peers", peers_markdown(data), data, quick)


def peers_markdown(d: dict) -> str:
    ours = {r["fisher"]: r["seconds"] for r in d["rows"] if r["library"].startswith("unmemorize")}
    lines = ["## Side by side with curvlinops and kronfluence", "", f"Command: `{d['command']}`", "",
             f"Same model as the ideal part ({d['model']}), same {d['tokens']:,} tokens ({d['tokens'] // (d['batch'] * d['seq_len'])} "
             f"batches x {d['batch']} x {d['seq_len']}), all {len(d['targets'])} MLP projections, float32 factors; "
             "one timed run each after a one-batch warm-up. "
             f"Versions: curvlinops-for-pytorch {d['versions'].get('curvlinops')}, kronfluence {d['versions'].get('kronfluence')}.",
             "", "| library | Fisher | seconds | tokens/s | x ours | other processes' CPU use |", "|---|---|---|---|---|---|"]
    for r in d["rows"]:
        key = "empirical" if r["fisher"] == "empirical" else "true"
        extra = f" ({r['seconds_with_setup']:.2f} s with deepcopy + wrapping)" if "seconds_with_setup" in r else ""
        lines.append(f"| {r['library']} | {r['fisher']} | {r['seconds']:.2f}{extra} | {d['tokens'] / r['seconds']:,.0f} | "
                     f"{r['seconds'] / ours[key]:.2f} | {percent(r.get('foreign_load'))} |")
    lines += ["", "Agreement with our A and G (empirical Fisher: gold next-token labels, so all three compute the same "
              "quantity; relative Frobenius error ||ours - theirs|| / ||theirs||, worst module):", "",
              "| library | scale convention applied | A | G |", "|---|---|---|---|"]
    conventions = {
        "curvlinops": "A as is (mean over num_data x (T-1) positions); G / N (SUM-reduced loss: G is a sum over positions)",
        "kronfluence": "A / rows summed, G / rows summed (it stores sums and counts; its eigendecomposition stage divides)",
    }
    for library, a in d["agreement"].items():
        lines.append(f"| {library} | {conventions[library]} | {a['max_A']:.1e} | {a['max_G']:.1e} |")
    if not d["kronfluence_installed"]:
        lines.append("\nkronfluence is not installed: skipped.")
    lines += ["", "Both peers get the windows truncated to T-1 tokens with labels ids[1:], so every position their hooks see "
              "is one of our counted positions. The true Fisher differs by construction (each library draws its own labels: "
              "ours by inverse CDF from a seeded generator, curvlinops' MC with 1 sample, kronfluence's task with "
              "torch.multinomial as in its examples), so only its time is compared. kronfluence's time includes writing its "
              "factors to a temporary folder.",
              f"Other processes' CPU use at start: {percent(d['foreign_load_at_start'])}.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="Tiny sizes: checks that it runs (writes results-collect-quick.*).")
    args = parser.parse_args()
    bench_peers(args.quick)


if __name__ == "__main__":
    main()

"""The bad-input matrix: every case ends in exit status 2 with one error line naming the problem,
no traceback, no partial output, and every input byte-identical afterwards (sha256 before and after).

All cases share one workspace of tiny models, corpora, factors and an edited model (built once),
plus a folder of broken files; each case names the substring its one error line must contain.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from unmemorize.cli import main
from unmemorize.tiny import WORDS, save_tiny_lm, write_corpus

VOCAB = len(WORDS) + 3  # the tiny models' vocabulary
MAX_POSITIONS = 128  # and their maximum positions


def jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def broken_factors(root: Path, name: str, change) -> Path:
    """A copy of the good factor folder with ``change(info, tensors)`` applied."""
    folder = root / "bad" / name
    shutil.copytree(root / "factors", folder)
    info = json.loads((folder / "factors.json").read_text())
    tensors = load_file(folder / "factors.safetensors")
    change(info, tensors)
    if info is not None:
        (folder / "factors.json").write_text(json.dumps(info))
    save_file(tensors, folder / "factors.safetensors")
    return folder


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad-inputs")
    save_tiny_lm(root / "llama", "llama", seed=0)
    save_tiny_lm(root / "llama-other", "llama", seed=1)  # same architecture and shapes, other weights
    save_tiny_lm(root / "gpt2", "gpt2", seed=0)
    write_corpus(root / "clean.txt", documents=120)
    common = ["--seq-len", "32", "--max-tokens", "1500", "--batch-size", "4", "--no-progress"]
    assert main(["collect", "--model", str(root / "llama"), "--data", str(root / "clean.txt"), "--out", str(root / "factors"), *common]) == 0
    assert main(["collect", "--model", str(root / "llama-other"), "--data", str(root / "clean.txt"), "--out", str(root / "factors-other"),
                 *common]) == 0
    assert main(["edit", "--model", str(root / "llama"), "--factors", str(root / "factors"), "--out", str(root / "edited"), "--rho", "0.8"]) == 0
    bad = root / "bad"
    bad.mkdir()
    (root / "out").mkdir()
    # data files
    jsonl(bad / "ids-float.jsonl", [{"input_ids": [3, 4.5, 6]}])
    jsonl(bad / "ids-bool.jsonl", [{"input_ids": [3, True, 6]}])
    jsonl(bad / "ids-string.jsonl", [{"input_ids": [3, "7", 6]}])
    jsonl(bad / "ids-null.jsonl", [{"input_ids": [3, None, 6]}])
    jsonl(bad / "ids-negative.jsonl", [{"input_ids": [3, -1, 6]}])
    jsonl(bad / "ids-huge.jsonl", [{"input_ids": [3, 10**30, 6]}])
    jsonl(bad / "ids-vocab.jsonl", [{"input_ids": [3, VOCAB, 6]}])
    jsonl(bad / "ids-late.jsonl", [{"input_ids": [3, 4, 5, 6]}] * 49 + [{"input_ids": [3, VOCAB + 5]}])
    jsonl(bad / "ids-not-list.jsonl", [{"input_ids": "3 4 5"}])
    jsonl(bad / "no-text.jsonl", [{"body": "the cat"}])
    (bad / "not-json.jsonl").write_text('{"text": "the cat"\n')
    (bad / "latin1.txt").write_bytes("the cat sees the caf\xe9 .\n".encode("latin-1"))
    (bad / "latin1.jsonl").write_bytes('{"text": "caf\xe9"}\n'.encode("latin-1"))
    (bad / "empty.txt").write_text("")
    (bad / "corrupt.parquet").write_bytes(b"PAR1 not really parquet PAR1")
    (bad / "plain.jsonl.gz").write_text('{"text": "the cat"}\n')  # named .gz, not compressed
    import datasets

    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": ["the cat"]}),
                          "test": datasets.Dataset.from_dict({"text": ["a dog"]})}).save_to_disk(str(bad / "dataset-dict"))
    (bad / "data.csv").write_text("the cat\n")
    (bad / "a-file").write_text("not a folder\n")
    # models
    (bad / "model-no-config").mkdir()
    (bad / "model-no-config" / "model.safetensors").write_bytes(b"")
    shutil.copytree(root / "llama", bad / "model-renamed")
    weights = load_file(bad / "model-renamed" / "model.safetensors")
    save_file({f"renamed.{k}": v for k, v in weights.items()}, bad / "model-renamed" / "model.safetensors", metadata={"format": "pt"})
    shutil.copytree(root / "llama", bad / "model-bad-tokenizer")
    (bad / "model-bad-tokenizer" / "tokenizer.json").write_text('{"version": "1.0", "model": ')  # truncated
    shutil.copytree(root / "gpt2", bad / "edited-gpt2")
    shutil.copy(root / "edited" / "unmemorize_edit.json", bad / "edited-gpt2" / "unmemorize_edit.json")
    # plans
    (bad / "plan-not-json.json").write_text("{0: 0.5}")
    (bad / "plan-latin1.json").write_bytes('{"0": {"gate": 0.5}, "x": "\xe9"}'.encode("latin-1"))
    (bad / "plan-empty.json").write_text("{}")
    (bad / "plan-unknown.json").write_text(json.dumps({"model.layers.9.mlp.up_proj": 0.5}))
    (bad / "plan-rho-string.json").write_text(json.dumps({"0": {"gate": "high"}}))
    (bad / "plan-nothing.json").write_text(json.dumps({"0": {}}))
    (bad / "plan-good.json").write_text(json.dumps({"0": {"gate": 0.5}}))
    (bad / "data-with-dict").mkdir()
    shutil.copy(root / "clean.txt", bad / "data-with-dict" / "a.txt")
    shutil.copytree(bad / "dataset-dict", bad / "data-with-dict" / "dd")
    # factor folders
    broken_factors(root, "f-version", lambda info, t: info.update(format_version=99))
    broken_factors(root, "f-no-modules", lambda info, t: info.update(modules={}))
    broken_factors(root, "f-modules-list", lambda info, t: info.update(modules=list(info["modules"])))
    broken_factors(root, "f-file-number", lambda info, t: info["modules"]["model.layers.0.mlp.up_proj"].update(file=7))
    broken_factors(root, "f-positions-string", lambda info, t: info.update(num_positions="many"))
    broken_factors(root, "f-integer", lambda info, t: t.update({k: v.to(torch.int32) for k, v in t.items()}))
    broken_factors(root, "f-zero", lambda info, t: t.update({k: torch.zeros_like(v) for k, v in t.items()}))
    broken_factors(root, "f-nan", lambda info, t: t["model.layers.0.mlp.down_proj.G"].__setitem__((3, 3), float("nan")))
    latin = broken_factors(root, "f-latin1", lambda info, t: None)
    (latin / "factors.json").write_bytes(b'{"format_version": 1, "modules": {"\xe9": {}}}')
    truncated = broken_factors(root, "f-truncated", lambda info, t: None)
    data = (truncated / "factors.safetensors").read_bytes()
    (truncated / "factors.safetensors").write_bytes(data[: len(data) // 2])
    (bad / "f-missing-json").mkdir()
    with_plot = broken_factors(root, "f-with-plot", lambda info, t: None)
    (with_plot / "spectrum.png").write_bytes(b"\x89PNG user plot")
    # analysis sources
    jsonl(bad / "mem-vocab.jsonl", [{"prefix_ids": [3, 4, 5], "suffix_ids": [6, VOCAB + 1]}])
    jsonl(bad / "mem-float.jsonl", [{"prefix_ids": [3, 4.0, 5], "suffix_ids": [6, 7]}])
    jsonl(bad / "mem-good.jsonl", [{"text": "the red cat sees a lazy dog near the old river"}] * 3)
    jsonl(bad / "tasks.jsonl", [{"task": "animals", "category": "closed_book_qa", "prompt": "the king likes the", "answer": "cat"}])
    # links that reach into an output, a FIFO, a loop, a cut .zst
    shutil.copytree(root / "factors", bad / "prev-out")  # an output unmemorize wrote: --overwrite may replace it
    shutil.copy(root / "clean.txt", bad / "prev-out" / "notes.txt")
    shutil.copy(root / "llama" / "model.safetensors", bad / "prev-out" / "model.safetensors")
    (bad / "linked-data").mkdir()
    (bad / "linked-data" / "a.txt").symlink_to(bad / "prev-out" / "notes.txt")
    shutil.copytree(root / "llama", bad / "model-linked")
    (bad / "model-linked" / "model.safetensors").unlink()
    (bad / "model-linked" / "model.safetensors").symlink_to(bad / "prev-out" / "model.safetensors")
    (bad / "fifo-data").mkdir()
    shutil.copy(root / "clean.txt", bad / "fifo-data" / "a.txt")
    os.mkfifo(bad / "fifo-data" / "b.txt")
    (bad / "loop-data" / "sub").mkdir(parents=True)
    shutil.copy(root / "clean.txt", bad / "loop-data" / "a.txt")
    (bad / "loop-data" / "sub" / "up").symlink_to(bad / "loop-data", target_is_directory=True)
    import zstandard

    packed = zstandard.ZstdCompressor().compress((root / "clean.txt").read_bytes())
    (bad / "cut.txt.zst").write_bytes(packed[: len(packed) // 2])
    (bad / ".ckpt-out.checkpoint").symlink_to(bad / "user-folder", target_is_directory=True)
    (bad / ".prev-out-2.checkpoint").mkdir()  # an interrupted collection's checkpoint
    (bad / ".prev-out-2.checkpoint" / "state.json").write_text('{"version": 1}')
    (bad / ".corrupt-checkpoint.checkpoint").mkdir()  # valid JSON, wrong types
    (bad / ".corrupt-checkpoint.checkpoint" / "state.json").write_text('{"version": 1, "settings": {}, "windows": "x"}')
    # user folders and files that must survive
    (bad / "user-folder").mkdir()
    (bad / "user-folder" / "report.md").write_text("my notes\n")
    (bad / "plot-dir.png").mkdir()
    (bad / "plot-dir.png" / "keep.txt").write_text("mine\n")
    (bad / "user.json").write_text('{"mine": true}\n')
    (bad / "user-plot.png").write_bytes(b"\x89PNG not written by unmemorize")
    return root


def tree_digest(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` (the cases' outputs go to root/out, which holds none)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def run_cli(argv, capsys) -> tuple[int, list[str]]:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse: usage + one error line
        code = exc.code
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return code, [line for line in err.splitlines() if line.strip()]


def C(*extra, data="{root}/clean.txt", model="{root}/llama", out="{out}"):  # noqa: N802 - a case builder, read as a table
    return ["collect", "--model", model, "--data", data, "--out", out, "--seq-len", "32", "--max-tokens", "400", "--no-progress", *extra]


def E(*extra, model="{root}/llama", factors="{root}/factors", out="{out}", amount=("--rho", "0.9")):  # noqa: N802
    return ["edit", "--model", model, *(["--factors", factors] if factors else []), "--out", out, *amount, *extra]


def S(*extra, factors="{root}/factors", out="{root}/out/plot.png"):  # noqa: N802
    return ["spectrum", "--factors", factors, *(["--out", out] if out else []), *extra]


def A(*extra, model="{root}/llama", out="{out}", memorized="{bad}/mem-good.jsonl"):  # noqa: N802
    return ["analyze", "--model", model, "--factors", "{root}/factors", "--clean", "{root}/clean.txt", "--memorized", memorized,
            "--out", out, "--max-tokens", "200", *extra]


def D(*extra, out="{out}"):  # noqa: N802
    return ["demo", "--quick", "--out", out, *extra]


CASES = [
    # --- collect: outputs that would destroy inputs ---
    ("collect-out-is-model", C("--overwrite", out="{root}/llama"), "is the input --model"),
    ("collect-out-is-data", C("--overwrite", out="{root}/clean.txt"), "is the input --data"),
    ("collect-out-contains-model", C("--overwrite", out="{root}"), "contains the input"),
    ("collect-out-inside-model", C(out="{root}/llama/factors"), "is inside the input --model"),
    ("collect-out-empty", C("--overwrite", out=""), "--out is empty"),
    ("collect-out-dot", C("--overwrite", out="."), "is the current folder"),
    ("collect-out-parent-is-file", C(out="{bad}/a-file/factors"), "is a file, not a folder"),
    ("collect-out-user-folder", C(out="{bad}/user-folder"), "already exists; pass --overwrite"),
    ("collect-out-user-folder-overwrite", C("--overwrite", out="{bad}/user-folder"), "only replaces outputs unmemorize wrote"),
    ("collect-out-is-a-file", C("--overwrite", out="{bad}/user-plot.png"), "exists and is not a folder"),
    # --- collect: data ---
    ("collect-data-missing", C(data="{bad}/nope.txt"), "does not exist"),
    ("collect-data-empty", C(data="{bad}/empty.txt"), "is empty"),
    ("collect-data-suffix", C(data="{bad}/data.csv"), "must be .txt[.gz|.zst], .jsonl[.gz|.zst], .parquet or a datasets folder"),
    ("collect-ids-float", C(data="{bad}/ids-float.jsonl"), "input_ids[1] is 4.5 (float)"),
    ("collect-ids-bool", C(data="{bad}/ids-bool.jsonl"), "input_ids[1] is True (bool)"),
    ("collect-ids-string", C(data="{bad}/ids-string.jsonl"), "input_ids[1] is '7' (str)"),
    ("collect-ids-null", C(data="{bad}/ids-null.jsonl"), "input_ids[1] is None"),
    ("collect-ids-negative", C(data="{bad}/ids-negative.jsonl"), "= -1 is outside the model's vocabulary"),
    ("collect-ids-huge", C(data="{bad}/ids-huge.jsonl"), "is outside the model's vocabulary"),
    ("collect-ids-vocab", C(data="{bad}/ids-vocab.jsonl"), f"= {VOCAB} is outside the model's vocabulary (0..{VOCAB - 1})"),
    ("collect-ids-late-in-file", C(data="{bad}/ids-late.jsonl"), "ids-late.jsonl:50: input_ids[1]"),
    ("collect-ids-not-list", C(data="{bad}/ids-not-list.jsonl"), "must be a list of token ids"),
    ("collect-process-group-timeout-zero", C("--process-group-timeout", "0"), "--process-group-timeout must be a positive"),
    ("collect-model-dtype-float16", C("--model-dtype", "float16"), "--model-dtype float16: float16 weights are not collected"),
    ("collect-max-memory-without-device-map", C("--max-memory", "cpu=1GiB"), "--max-memory limits what --device-map places"),
    ("collect-max-memory-malformed", C("--device-map", "auto", "--max-memory", "cpu1GiB"), "give DEVICE=SIZE pairs"),
    ("collect-max-memory-bad-device", C("--device-map", "auto", "--max-memory", "gpu0=1GiB"), "is not a GPU index, 'cpu' or 'disk'"),
    ("collect-seq-len-too-long", C("--seq-len", "4096"), f"longer than the model's {MAX_POSITIONS} positions"),
    ("collect-txt-not-utf8", C(data="{bad}/latin1.txt"), "not UTF-8 text"),
    ("collect-jsonl-not-utf8", C(data="{bad}/latin1.jsonl"), "not UTF-8 text"),
    ("collect-jsonl-not-json", C(data="{bad}/not-json.jsonl"), "not valid JSON"),
    ("collect-jsonl-no-text", C(data="{bad}/no-text.jsonl"), "needs a 'text' string or an 'input_ids' list"),
    ("collect-text-field-missing", C("--text-field", "body", data="{bad}/mem-good.jsonl"), "needs a 'body' string or an 'input_ids' list"),
    ("collect-text-field-empty", C("--text-field", ""), "--text-field is empty"),
    ("collect-parquet-corrupt", C(data="{bad}/corrupt.parquet"), "not a readable parquet file"),
    ("collect-gz-not-compressed", C(data="{bad}/plain.jsonl.gz"), "cannot be decompressed"),
    ("collect-datasets-dict", C(data="{bad}/dataset-dict"), "give one split's folder"),
    ("collect-checkpoint-every-negative", C("--checkpoint-every", "-1"), "--checkpoint-every must be >= 0"),
    ("collect-data-fifo", C(data="{bad}/fifo-data"), "b.txt is not a regular file (a FIFO, socket or device)"),
    ("collect-data-link-loop", C(data="{bad}/loop-data"), "a folder that holds it (a symbolic-link loop)"),
    ("collect-data-zst-cut", C(data="{bad}/cut.txt.zst"), "cut.txt.zst: cannot be decompressed (the file ends inside a zstandard frame"),
    ("collect-out-holds-a-linked-data-file", C("--overwrite", data="{bad}/linked-data", out="{bad}/prev-out"),
     "contains the input --data (through its link"),
    ("collect-out-holds-the-linked-weights", C("--overwrite", model="{bad}/model-linked", out="{bad}/prev-out"),
     "contains the input --model (through its link"),
    ("collect-checkpoint-is-a-link", C("--checkpoint-every", "100", out="{bad}/ckpt-out"), "is a symbolic link or a file: a checkpoint"),
    ("collect-resume-without-checkpoints", C("--resume", "--checkpoint-every", "0"), "--checkpoint-every 0 turns checkpoints off"),
    ("collect-resume-corrupt-checkpoint", C("--resume", out="{bad}/corrupt-checkpoint"), "state.json: 'windows' is 'x', not a count"),
    ("collect-dry-run-out-user-folder", C("--dry-run", out="{bad}/user-folder"), "already exists; pass --overwrite"),
    ("collect-dry-run-ids-vocab", C("--dry-run", data="{bad}/ids-vocab.jsonl"), "outside the model's vocabulary"),
    ("collect-dry-run-checkpoint-not-resumed", C("--dry-run", out="{bad}/prev-out-2"), "holds the checkpoint of an interrupted"),
    # --- collect: model, device, options ---
    ("collect-device-cuda", C("--device", "cuda"), "CUDA is not available"),
    ("collect-device-unknown", C("--device", "gpu7"), "is not a torch device"),
    ("collect-device-bad-index", C("--device", "cuda:x"), "is not a torch device"),
    ("collect-seed-negative", C("--seed", "-1"), "--seed must be an integer in [0, 2^63-1]"),
    ("collect-seed-huge", C("--seed", str(2**63)), "--seed must be an integer in [0, 2^63-1]"),
    ("collect-model-missing", C(model="{root}/no-model"), "does not exist"),
    ("collect-model-is-file", C(model="{bad}/a-file"), "is a file"),
    ("collect-model-no-config", C(model="{bad}/model-no-config"), "has no config.json"),
    ("collect-model-weights-missing", C(model="{bad}/model-renamed"), "has no weights for"),
    ("collect-model-tokenizer-corrupt", C(model="{bad}/model-bad-tokenizer"), "has tokenizer.json, tokenizer_config.json but its "
     "tokenizer cannot be loaded (JSONDecodeError"),
    ("collect-hub-unreachable", C(model="someone/not-cached-anywhere"), "cannot be reached"),
    ("collect-glob-matches-nothing", C("--targets", "mlp.c_fc"), "no linear module matches 'mlp.c_fc'"),
    ("collect-targets-tied-lm-head", C("--targets", "lm_head", model="{root}/gpt2"), "lm_head.weight is tied to transformer.wte.weight"),
    ("collect-data-holds-a-datasets-dict", C(data="{bad}/data-with-dict"), "holds a datasets DatasetDict"),
    ("collect-batch-size-zero", C("--batch-size", "0"), "--batch-size must be positive"),
    ("collect-max-tokens-negative", C("--max-tokens", "-5"), "--max-tokens must be >= 0"),
    ("collect-modules-per-pass-negative", C("--modules-per-pass", "-1"), "--modules-per-pass must be >= 0"),
    ("collect-fisher-unknown", C("--fisher", "exact"), "invalid choice: 'exact'"),
    ("collect-seq-len-not-int", C("--seq-len", "abc"), "invalid int value: 'abc'"),
    # --- edit: outputs that would destroy inputs ---
    ("edit-out-is-model", E("--overwrite", out="{root}/llama"), "is the input --model"),
    ("edit-out-is-factors", E("--overwrite", out="{root}/factors"), "is the input --factors"),
    ("edit-out-inside-factors", E(out="{root}/factors/edited"), "is inside the input --factors"),
    ("edit-out-is-plan", E("--overwrite", out="{bad}/plan-empty.json", amount=("--plan", "{bad}/plan-empty.json")), "is the input --plan"),
    ("edit-out-user-folder", E("--overwrite", out="{bad}/user-folder"), "only replaces outputs unmemorize wrote"),
    ("edit-out-holds-the-linked-weights", E("--overwrite", model="{bad}/model-linked", out="{bad}/prev-out"),
     "contains the input --model (through its link"),
    # --- edit: amounts and plans ---
    ("edit-rho-above-one", E(amount=("--rho", "1.5")), "rho must be a number in [0, 1]"),
    ("edit-rho-nan", E(amount=("--rho", "nan")), "rho must be a number in [0, 1]"),
    ("edit-plan-missing", E(amount=("--plan", "{bad}/no-plan.json")), "does not exist"),
    ("edit-plan-not-json", E(amount=("--plan", "{bad}/plan-not-json.json")), "is not valid JSON"),
    ("edit-plan-not-utf8", E(amount=("--plan", "{bad}/plan-latin1.json")), "is not UTF-8 text"),
    ("edit-plan-empty", E(amount=("--plan", "{bad}/plan-empty.json")), "a plan must be a non-empty JSON object"),
    ("edit-plan-unknown-module", E(amount=("--plan", "{bad}/plan-unknown.json")), "which is not a weight matrix"),
    ("edit-plan-rho-string", E(amount=("--plan", "{bad}/plan-rho-string.json")), "rho must be a number in [0, 1]"),
    ("edit-plan-selects-nothing", E(amount=("--plan", "{bad}/plan-nothing.json")), "the plan selects no matrix"),
    ("edit-layers-beside-plan", E("--layers", "0", amount=("--plan", "{bad}/plan-good.json")),
     "--layers would be ignored: --plan names its own matrices"),
    ("edit-layers-beside-ppl-budget", E("--layers", "0", "--heldout", "{root}/clean.txt", amount=("--ppl-budget", "1.1")),
     "--layers would be ignored: --ppl-budget searches the layers and projections itself"),
    ("edit-ppl-budget-below-one", E("--heldout", "{root}/clean.txt", amount=("--ppl-budget", "0.9")), "must be >= 1"),
    ("edit-ppl-budget-no-heldout", E(amount=("--ppl-budget", "1.1")), "needs --method kfac, --factors DIR and --heldout FILE"),
    ("edit-heldout-bad-ids", E("--heldout", "{bad}/ids-vocab.jsonl", amount=("--ppl-budget", "1.1")), "outside the model's vocabulary"),
    ("edit-search-rhos-not-numbers", E("--heldout", "{root}/clean.txt", "--search-rhos", "abc", amount=("--ppl-budget", "1.1")),
     "--search-rhos 'abc' is not a comma-separated list of numbers"),
    ("edit-search-tokens-below-seq-len", E("--heldout", "{root}/clean.txt", "--search-tokens", "10", amount=("--ppl-budget", "1.1")),
     "--search-tokens (10) must hold at least one window"),
    ("edit-kfac-without-factors", E(factors=None), "--method kfac needs --factors DIR"),
    ("edit-seed-negative", E("--seed", "-3"), "--seed must be an integer in [0, 2^63-1]"),
    ("edit-device-cuda", E("--device", "cuda"), "CUDA is not available"),
    ("edit-method-unknown", E("--method", "lora"), "invalid choice: 'lora'"),
    ("edit-dry-run-with-search", E("--dry-run", "--heldout", "{root}/clean.txt", amount=("--ppl-budget", "1.1")), "--dry-run plans one edit"),
    # --- edit: factor folders ---
    ("edit-factors-is-file", E(factors="{bad}/a-file"), "is not a folder"),
    ("edit-factors-json-missing", E(factors="{bad}/f-missing-json"), "factors.json is missing"),
    ("edit-factors-version", E(factors="{bad}/f-version"), "format_version 99 is not one this unmemorize reads"),
    ("edit-factors-no-modules", E(factors="{bad}/f-no-modules"), "'modules' is empty"),
    ("edit-factors-modules-list", E(factors="{bad}/f-modules-list"), "'modules' must be an object"),
    ("edit-factors-file-number", E(factors="{bad}/f-file-number"), ".file must be a file name in the folder, got 7"),
    ("edit-factors-positions-string", E(factors="{bad}/f-positions-string"), "'num_positions' must be a non-negative integer"),
    ("edit-factors-not-utf8", E(factors="{bad}/f-latin1"), "not UTF-8 text"),
    ("edit-factors-integer", E(factors="{bad}/f-integer"), "is stored as int32; factors are floating point"),
    ("edit-factors-zero", E(factors="{bad}/f-zero"), "is all zero"),
    ("edit-factors-nan", E(factors="{bad}/f-nan"), "gradient factor G contains NaN or Inf"),
    ("edit-factors-truncated", E(factors="{bad}/f-truncated"), "truncated or corrupt"),
    ("edit-factors-foreign", E(factors="{root}/factors-other"), "weight fingerprint differs"),
    ("edit-factors-other-architecture", E("--targets", "transformer.h.0.mlp.c_fc", model="{root}/gpt2"), "transformer.h.0.mlp.c_fc"),
    # --- spectrum ---
    ("spectrum-out-factor-file", S("--overwrite", out="{root}/factors/factors.safetensors"), "is inside the input --factors"),
    ("spectrum-out-existing-file", S(out="{root}/clean.txt"), "must end in .png"),
    ("spectrum-out-existing-png", S(out="{bad}/user-plot.png"), "already exists; pass --overwrite"),
    ("spectrum-out-user-png-overwrite", S("--overwrite", out="{bad}/user-plot.png"), "only replaces outputs unmemorize wrote"),
    ("spectrum-out-directory", S(out="{bad}/user-folder"), "must end in .png"),
    ("spectrum-out-directory-png", S(out="{bad}/plot-dir.png"), "is a folder; give a file name"),
    ("spectrum-default-out-exists", S(factors="{bad}/f-with-plot", out=None), "already exists; pass --overwrite"),
    ("spectrum-rhos-not-numbers", S("--rhos", "abc"), "is not a comma-separated list of numbers"),
    ("spectrum-rhos-out-of-range", S("--rhos", "0.9,1.5"), "rho must be a number in [0, 1]"),
    ("spectrum-factors-missing", S(factors="{bad}/nope"), "is not a folder"),
    ("spectrum-factors-version", S(factors="{bad}/f-version"), "format_version 99"),
    ("spectrum-factors-zero", S(factors="{bad}/f-zero"), "is all zero"),
    # --- analyze ---
    ("analyze-out-is-model", A("--overwrite", out="{root}/llama"), "is the input --model"),
    ("analyze-out-is-clean", A("--overwrite", out="{root}/clean.txt"), "is the input --source clean"),
    ("analyze-out-contains-sources", A("--overwrite", out="{bad}"), "contains the input"),
    ("analyze-out-inside-edited", A("--tasks", "{bad}/tasks.jsonl", "--edited", "{root}/edited", out="{root}/edited/a"),
     "is inside the input --edited"),
    ("analyze-memorized-vocab", A(memorized="{bad}/mem-vocab.jsonl"), "outside the model's vocabulary"),
    ("analyze-memorized-float", A(memorized="{bad}/mem-float.jsonl"), "must be a non-empty list of non-negative token ids"),
    ("analyze-source-not-utf8", A(memorized="{bad}/latin1.jsonl"), "not UTF-8 text"),
    ("analyze-source-ids-late", A(memorized="{bad}/ids-late.jsonl"), "ids-late.jsonl:50"),
    ("analyze-edited-other-architecture", A("--tasks", "{bad}/tasks.jsonl", "--edited", "{bad}/edited-gpt2"), "is not an edit of --model"),
    ("analyze-edited-no-manifest", A("--tasks", "{bad}/tasks.jsonl", "--edited", "{root}/llama-other"), "has no unmemorize_edit.json"),
    ("analyze-edited-needs-tasks", A("--edited", "{root}/edited"), "--edited needs --tasks FILE"),
    ("analyze-seq-len-too-long", A("--seq-len", "4096"), f"longer than the model's {MAX_POSITIONS} positions"),
    ("analyze-factors-foreign", A(model="{root}/llama-other"), "weight fingerprint differs"),
    ("analyze-device-unknown", A("--device", "quantum"), "is not a torch device"),
    ("analyze-source-no-equals", A("--source", "noequals"), "must be NAME=PATH"),
    # --- decompose and eval ---
    ("decompose-factors-missing", ["decompose", "--factors", "{bad}/nope"], "nope"),
    ("decompose-factors-version", ["decompose", "--factors", "{bad}/f-version"], "format_version 99"),
    ("decompose-device-cuda", ["decompose", "--factors", "{root}/factors", "--device", "cuda"], "CUDA"),
    ("eval-out-is-model", ["eval", "--model", "{root}/llama", "--lm-eval", "x", "--out", "{root}/llama", "--overwrite"],
     "is the input --model"),
    ("eval-out-user-json", ["eval", "--model", "{root}/llama", "--lm-eval", "x", "--out", "{bad}/user.json"], "already exists"),
    ("eval-out-user-json-overwrite", ["eval", "--model", "{root}/llama", "--lm-eval", "x", "--out", "{bad}/user.json", "--overwrite"],
     "only replaces outputs unmemorize wrote"),
    ("eval-include-path-missing", ["eval", "--model", "{root}/llama", "--lm-eval", "x", "--include-path", "{bad}/no-tasks"],
     "no-tasks"),
    # --- demo and testbed ---
    ("demo-rhos-not-numbers", D("--rhos", "abc"), "is not a comma-separated list of numbers"),
    ("demo-rhos-out-of-range", D("--rhos", "1.5"), "rho must be a number in [0, 1]"),
    ("demo-out-is-file", D(out="{bad}/a-file"), "exists and is not a folder"),
    ("demo-out-user-folder", D(out="{bad}/user-folder"), "already exists; pass --overwrite"),
    ("demo-out-user-folder-overwrite", D("--overwrite", out="{bad}/user-folder"), "only replaces outputs unmemorize wrote"),
    ("demo-seed-negative", D("--seed", "-1"), "--seed must be an integer in [0, 2^63-1]"),
    ("demo-ppl-budget-negative", D("--ppl-budget", "-0.1"), "--ppl-budget must be > 0"),
    ("demo-out-empty", D(out=""), "--out is empty"),
    ("demo-seeds-not-integers", D("--seeds", "0,x"), "--seeds must be a comma list of integers"),
    ("demo-seeds-repeated", D("--seeds", "1,1"), "--seeds lists a seed twice"),
    ("demo-seeds-negative", D("--seeds", "0,-2"), "--seed must be an integer in [0, 2^63-1]"),
    ("testbed-seed-negative", ["testbed", "info", "--seed", "-1"], "--seed must be an integer in [0, 2^63-1]"),
    # --- compare, stress, unlearn ---
    ("compare-seeds-not-integers", ["compare", "--quick", "--out", "{out}", "--seeds", "x"], "--seeds must be a comma list of integers"),
    ("compare-out-user-folder", ["compare", "--quick", "--out", "{bad}/user-folder"], "already exists; pass --overwrite"),
    ("stress-out-not-json", ["stress", "--model", "{root}/llama", "--items", "{bad}/mem-good.jsonl", "--out", "{out}.txt"],
     "must be a .json file"),
    ("stress-items-vocab", ["stress", "--model", "{root}/llama", "--items", "{bad}/mem-vocab.jsonl", "--out", "{out}.json"],
     "outside the model's vocabulary"),
    ("stress-out-inside-model", ["stress", "--model", "{root}/llama", "--items", "{bad}/mem-good.jsonl", "--out", "{root}/llama/s.json"],
     "is inside the input --model"),
    ("unlearn-forget-is-retain", ["unlearn", "bsn", "--model", "{root}/llama", "--forget", "{root}/clean.txt", "--retain",
                                  "{root}/clean.txt", "--out", "{out}", "--no-progress"], "every forget sequence is also a retain sequence"),
    ("unlearn-ratio-rounds-to-zero", ["unlearn", "bsn", "--model", "{root}/llama", "--forget", "{bad}/mem-good.jsonl", "--retain",
                                      "{root}/clean.txt", "--out", "{out}", "--ratio", "0.0001", "--no-progress"], "removes no weight at all"),
    ("unlearn-out-is-model", ["unlearn", "bsn", "--model", "{root}/llama", "--forget", "{bad}/mem-good.jsonl", "--retain",
                              "{root}/clean.txt", "--out", "{root}/llama", "--overwrite"], "is the input --model"),
]


# collect's data errors are found by reading ahead, before the model's weights load (curvature/job.py read_job_data)
BEFORE_LOADING = {name for name, argv, _ in CASES if argv[0] == "collect" and any(
    part in name for part in ("-data-", "-ids-", "-txt-", "-jsonl-", "-text-field-", "-parquet-", "-gz-", "-datasets-", "-seq-len-",
                              "-dry-run-", "-checkpoint"))}


@pytest.mark.parametrize("name, argv, message", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gives_one_clean_error_and_changes_nothing(ws, capsys, monkeypatch, name, argv, message):
    out = ws / "out" / name
    argv = [a.format(root=ws, bad=ws / "bad", out=out) for a in argv]
    cwd = ws.parent / f"{ws.name}-cwd"  # outside the workspace, so that --out '.' and --out <root> are told apart
    cwd.mkdir(exist_ok=True)
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # a closed port: the hub is unreachable, at once
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the '--device cuda' cases mean a machine without CUDA
    before = tree_digest(ws)
    import unmemorize.models

    loads = []
    real_load = unmemorize.models.load_model
    monkeypatch.setattr(unmemorize.models, "load_model", lambda *a, **k: loads.append(a) or real_load(*a, **k))
    code, lines = run_cli(argv, capsys)
    if name in BEFORE_LOADING:
        assert not loads, f"{name}: the model was loaded before the data error was found"
    assert code == 2, (code, lines)
    errors = [line for line in lines if ": error: " in line]
    assert len(errors) == 1 and errors[0].startswith("unmemorize"), lines  # ours, or argparse's "unmemorize collect: error:"
    others = [line for line in lines if line not in errors]
    assert all(line.startswith(("usage:", " ")) for line in others), others  # argparse usage: no work began (no "collecting" line)
    assert message in errors[0], errors[0]
    assert tree_digest(ws) == before  # every input byte-identical, nothing written anywhere under the workspace
    assert not any(p.name.startswith((name, f".{name}.")) for p in (ws / "out").iterdir())  # no partial output, no temp, no lock
    assert not any(cwd.iterdir())


def test_data_errors_are_found_before_the_model_loads_in_at_least_17_cases():
    assert len(BEFORE_LOADING) >= 17, sorted(BEFORE_LOADING)


def test_the_matrix_has_at_least_150_cases():  # every command of the parser: tests/test_as_a_user.py
    assert len(CASES) >= 150


def test_a_broken_tokenizer_names_the_folder_and_the_cause_and_a_missing_one_is_none(ws, tmp_path):
    """A tokenizer that exists but does not load is an error with transformers' cause (it used to
    become a silent None, and later a vague 'has no tokenizer'); a folder without any tokenizer
    file is a model for pre-tokenized input_ids, loaded with tokenizer None."""
    from unmemorize.errors import UnmemorizeError
    from unmemorize.models import TOKENIZER_FILES, load_model

    folder = ws / "bad" / "model-bad-tokenizer"
    with pytest.raises(UnmemorizeError) as caught:
        load_model(str(folder))
    message = str(caught.value)
    assert str(folder) in message and "tokenizer.json" in message and "JSONDecodeError" in message, message
    bare = shutil.copytree(ws / "llama", tmp_path / "no-tokenizer")
    for name in TOKENIZER_FILES:
        (bare / name).unlink(missing_ok=True)
    model, tokenizer = load_model(str(bare))
    assert tokenizer is None and model.config.vocab_size == VOCAB

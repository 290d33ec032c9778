"""The lm-eval bridge: local YAML tasks over local jsonl files, offline, on a tiny model and on its in-memory edit.

Oracles: plain ``lm_eval --model hf`` (a subprocess, lm-eval's own loading code) on the saved edited
folder, and the saved folder itself for the in-memory edit. lm-eval is the optional extra
``unmemorize[eval]``; ``scripts/setup-venv.sh`` installs it, so these tests run rather than skip.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import lm_eval  # noqa: F401 - the extra unmemorize[eval]; 'make setup' installs it, so a missing one fails here, never skips
import pytest

import unmemorize as um
from unmemorize.errors import UnmemorizeError
from unmemorize.commands.eval import add_parser as add_eval_command
from unmemorize.commands.eval import run as run_eval
from unmemorize.evaluate.lm_eval_bridge import EvalRequest, LMEvalConfig, run_lm_eval
from unmemorize.models import load_model
from unmemorize.tiny import WORDS, save_tiny_lm, write_corpus, write_mc_task

OFFLINE = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
TASKS = "tiny_mc,tiny_ppl"
PLAN = {"0": {"gate": 0.3, "up": 0.3, "down": 0.3}, "1": {"gate": 0.3, "up": 0.3, "down": 0.3}}


def _task_files(folder: Path) -> Path:
    """Two lm-eval tasks reading local jsonl files: multiple choice (acc, ``tiny.write_mc_task``) and rolling
    loglikelihood (perplexity)."""
    write_mc_task(folder)
    rng = random.Random(1)
    content = WORDS[:-2]
    with open(folder / "text.jsonl", "w") as out:
        for _ in range(24):
            out.write(json.dumps({"text": " ".join(rng.choice(content) for _ in range(rng.randint(8, 20)))}) + "\n")
    (folder / "tiny_ppl.yaml").write_text(  # continuous scores: any change in the weights shows
        f"task: tiny_ppl\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {folder / 'text.jsonl'}\n"
        "test_split: test\nmetadata:\n  version: 1.0\n"
        "output_type: loglikelihood_rolling\ndoc_to_text: \"\"\ndoc_to_target: \"{{text}}\"\n"
        "metric_list:\n  - metric: word_perplexity\n  - metric: bits_per_byte\n")
    return folder


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    for key, value in OFFLINE.items():
        os.environ.setdefault(key, value)
    root = tmp_path_factory.mktemp("lm_eval")
    save_tiny_lm(root / "model", "llama", seed=0)
    model, tokenizer = load_model(str(root / "model"))
    corpus = write_corpus(root / "clean.txt", documents=60)
    targets = um.resolve_targets(model, ["model.layers.*.mlp.*"])
    config = um.CollectConfig(seq_len=32, max_tokens=800, batch_size=4, progress=False)
    um.save_factors(um.collect_from_files(model, tokenizer, str(corpus), targets, config), root / "factors", model=model)
    (root / "plan.json").write_text(json.dumps(PLAN))
    edit = um.apply_edit(model, um.load_plan(root / "plan.json", model), um.load_factors(root / "factors", model=model))
    um.save_edited_model(edit, root / "edited", tokenizer)
    return {"root": root, "tasks": _task_files(root / "tasks")}


def _scores(record: dict) -> dict:
    return {(r["task"], r["metric"]): r["value"] for r in record["rows"]}


def _bridge(bench, model: Path, **edit) -> dict:
    config = LMEvalConfig(tasks=TASKS, include_path=str(bench["tasks"]), bootstrap_iters=0)
    return run_lm_eval(EvalRequest(model=str(model), lm_eval=config, **edit))


def test_in_memory_edit_scores_as_the_saved_folder_and_plain_lm_eval_agrees(bench):
    root = bench["root"]
    base = _scores(_bridge(bench, root / "model"))
    in_memory = _bridge(bench, root / "model", edit_plan=str(root / "plan.json"), factors=str(root / "factors"))
    saved = _scores(_bridge(bench, root / "edited"))
    assert set(saved) == {("tiny_mc", "acc"), ("tiny_ppl", "word_perplexity"), ("tiny_ppl", "bits_per_byte")}
    assert _scores(in_memory) == saved  # exactly: the saved folder holds the in-memory weights
    assert base[("tiny_ppl", "bits_per_byte")] != saved[("tiny_ppl", "bits_per_byte")]  # the edit is real
    assert in_memory["edit"]["modules"] and in_memory["n_samples"]["tiny_mc"]["effective"] == 24
    json.dumps(in_memory, allow_nan=False)  # strict JSON

    out = root / "plain"
    command = [sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args", f"pretrained={root / 'edited'},dtype=float32",
               "--tasks", TASKS, "--include_path", str(bench["tasks"]), "--device", "cpu", "--batch_size", "8",
               "--output_path", str(out)]
    result = subprocess.run(command, env={**os.environ, **OFFLINE, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    plain = json.loads(next(out.rglob("results_*.json")).read_text())["results"]
    for (task, metric), value in saved.items():
        assert plain[task][f"{metric},none"] == value, (task, metric)  # same numbers, not just close


def test_eval_command_prints_a_table_and_writes_strict_json(bench, capsys):
    parser = argparse.ArgumentParser(prog="unmemorize")
    add_eval_command(parser.add_subparsers(dest="command"))
    out = bench["root"] / "scores.json"
    argv = ["eval", "--model", str(bench["root"] / "model"), "--lm-eval", "tiny_mc", "--include-path", str(bench["tasks"]),
            "--bootstrap-iters", "0", "--edit-rho", "0.5", "--factors", str(bench["root"] / "factors"), "--out", str(out)]
    run_eval(parser.parse_args(argv))
    assert "| tiny_mc | acc | none |" in capsys.readouterr().out
    record = json.loads(out.read_text())
    assert record["edit"]["config"]["method"] == "kfac" and set(record["edit"]["modules"]) == set(json.loads(
        (bench["root"] / "factors" / "factors.json").read_text())["modules"])
    with pytest.raises(UnmemorizeError, match="already exists; pass --overwrite"):
        run_eval(parser.parse_args(argv))


def test_bad_requests_are_named_before_any_model_is_loaded(bench):
    tasks = str(bench["tasks"])
    with pytest.raises(UnmemorizeError, match="unknown lm-eval task.*no_such_task"):
        run_lm_eval(EvalRequest(model="unused", lm_eval=LMEvalConfig(tasks="no_such_task", include_path=tasks)))
    with pytest.raises(UnmemorizeError, match="needs at least one task"):
        run_lm_eval(EvalRequest(model="unused", lm_eval=LMEvalConfig(tasks=" , ")))
    with pytest.raises(UnmemorizeError, match="needs --factors"):
        run_lm_eval(EvalRequest(model="unused", lm_eval=LMEvalConfig(tasks="tiny_mc", include_path=tasks), edit_rho=0.5))
    with pytest.raises(UnmemorizeError, match=r"rho must be a number in \[0, 1\]"):
        run_lm_eval(EvalRequest(model="unused", lm_eval=LMEvalConfig(tasks="tiny_mc", include_path=tasks), edit_rho=1.5, factors="f"))
    with pytest.raises(UnmemorizeError, match="is not a folder of lm-eval task YAML files"):
        run_lm_eval(EvalRequest(model="unused", lm_eval=LMEvalConfig(tasks="tiny_mc", include_path=str(bench["root"] / "nope"))))


def test_a_local_task_whose_rows_lack_a_field_its_template_reads_is_refused_before_the_model_loads(bench, tmp_path):
    """datasets gives the missing column None and lm-eval scored the text 'None' in silence."""
    folder = _task_files(tmp_path / "tasks")
    rows = [json.loads(line) for line in (folder / "mc.jsonl").read_text().splitlines()]
    template = (folder / "tiny_mc.yaml").read_text()
    field = next(name for name in rows[0] if name in template and "{{" + name in template.replace(" ", ""))
    del rows[2][field]
    (folder / "mc.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    with pytest.raises(UnmemorizeError, match=f"lm-eval task tiny_mc: row 3 of its evaluation split has no '{field}' .null."):
        run_lm_eval(EvalRequest(model="unused", lm_eval=LMEvalConfig(tasks="tiny_mc", include_path=str(folder))))
    conditional = template.replace("{{" + field + "}}", "{% if " + field + " %}{{" + field + "}}{% else %}empty{% endif %}")
    (folder / "tiny_mc.yaml").write_text(conditional)  # control: a template that tests the field first prints no 'None'
    with pytest.raises(UnmemorizeError, match="model 'unused' is neither a local folder|cannot be reached"):  # the rows passed
        run_lm_eval(EvalRequest(model="unused", lm_eval=LMEvalConfig(tasks="tiny_mc", include_path=str(folder))))
    (folder / "tiny_mc.yaml").write_text(template)
    for row in rows:  # no row has it: lm-eval's own build fails, named
        row.pop(field, None)
    (folder / "mc.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    with pytest.raises(UnmemorizeError, match=f"lm-eval cannot build the task.s. tiny_mc of .*UndefinedError: '{field}' is undefined"):
        run_lm_eval(EvalRequest(model="unused", lm_eval=LMEvalConfig(tasks="tiny_mc", include_path=str(folder))))

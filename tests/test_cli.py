"""The command line: collect -> spectrum -> edit end to end, and one clear error per bad input."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from unmemorize.cli import main
from unmemorize.curvature import load_factors
from unmemorize.edit.search import SearchConfig
from unmemorize.errors import UnmemorizeError
from unmemorize.tiny import save_tiny_lm, write_corpus


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    save_tiny_lm(root / "llama", "llama", seed=0)
    save_tiny_lm(root / "gpt2", "gpt2", seed=0)
    write_corpus(root / "clean.txt", documents=200)
    code = main(["collect", "--model", str(root / "llama"), "--data", str(root / "clean.txt"), "--out", str(root / "factors"),
                 "--seq-len", "32", "--max-tokens", "2000", "--batch-size", "4", "--no-progress"])
    assert code == 0
    return root


def error_of(capsys, argv) -> str:
    """Run the CLI, require exit status 2 and exactly one error line; return it."""
    assert main(argv) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("unmemorize: error: "), lines
    return lines[0]


def leftovers(folder):
    return [p.name for p in folder.parent.iterdir() if p.name.startswith(f".{folder.name}.")]


def test_collect_writes_factors_with_provenance(workspace):
    info = json.loads((workspace / "factors" / "factors.json").read_text())
    assert info["fisher"] == "true" and info["seq_len"] == 32 and info["tokens"] == 2000
    assert info["architecture"] == "LlamaForCausalLM" and len(info["data"]["fingerprint"]) == 64
    entry = dict(info["modules"]["model.layers.0.mlp.down_proj"])
    fingerprint = entry.pop("weight_sha256")
    assert entry == {"A": [64, 64], "G": [32, 32], "file": "factors.safetensors"}
    # the fingerprint is sha256 of the checkpoint's weight rounded to bfloat16, read here straight from the file
    weight = load_file(workspace / "llama" / "model.safetensors")["model.layers.0.mlp.down_proj.weight"]
    assert fingerprint == hashlib.sha256(weight.to(torch.bfloat16).view(torch.int16).numpy().tobytes()).hexdigest()
    tensors = load_file(workspace / "factors" / "factors.safetensors")
    assert set(tensors) == {f"{n}.{k}" for n in info["modules"] for k in "AG"} and all(t.dtype == torch.float32 for t in tensors.values())
    assert info["num_positions"] > 0 and info["unmemorize_version"]


def test_modules_per_pass_writes_one_shard_per_pass_with_the_same_factors(workspace, tmp_path):
    out = tmp_path / "sharded"
    assert main(["collect", "--model", str(workspace / "llama"), "--data", str(workspace / "clean.txt"), "--out", str(out),
                 "--seq-len", "32", "--max-tokens", "2000", "--batch-size", "4", "--no-progress", "--modules-per-pass", "4"]) == 0
    shards = sorted(p.name for p in out.glob("*.safetensors"))
    assert shards == ["factors-00001-of-00002.safetensors", "factors-00002-of-00002.safetensors"]
    sharded, single = load_factors(out), load_factors(workspace / "factors")
    assert sharded.modules == single.modules and sharded.num_positions == single.num_positions
    for name in single.modules:
        assert torch.allclose(sharded.activation[name], single.activation[name], rtol=1e-5, atol=1e-8)
        assert torch.allclose(sharded.gradient[name], single.gradient[name], rtol=1e-5, atol=1e-8)
    assert not leftovers(out)


def test_edit_and_spectrum_commands(workspace, capsys):
    plan = workspace / "plan.json"
    plan.write_text(json.dumps({"0": {"gate": 0.6, "up": 0.6}}))
    assert main(["edit", "--model", str(workspace / "llama"), "--factors", str(workspace / "factors"), "--out", str(workspace / "edited"),
                 "--plan", str(plan)]) == 0
    info = json.loads((workspace / "edited" / "unmemorize_edit.json").read_text())
    assert list(info["modules"]) == ["model.layers.0.mlp.gate_proj", "model.layers.0.mlp.up_proj"]
    assert info["factors"]["path"] == str(workspace / "factors")
    assert main(["spectrum", "--factors", str(workspace / "factors"), "--out", str(workspace / "s.png"), "--rhos", "0.9"]) == 0
    out = capsys.readouterr().out
    assert "kept_pairs@0.9" in out and "model.layers.1.mlp.down_proj" in out
    assert (workspace / "s.png").stat().st_size > 1000


def test_label_free_budget_search_stays_within_its_budget(workspace, tmp_path):
    """The saved model's perplexity on the held-out text, recomputed independently, is within budget."""
    from transformers import AutoModelForCausalLM

    from unmemorize.data import iter_windows, list_data_files
    from unmemorize.evaluate import perplexity
    from unmemorize.models import load_model

    heldout = write_corpus(tmp_path / "heldout.txt", documents=80, seed=5)
    out = tmp_path / "label-free"
    assert main(["edit", "--model", str(workspace / "llama"), "--factors", str(workspace / "factors"), "--out", str(out),
                 "--ppl-budget", "1.02", "--heldout", str(heldout)]) == 0
    record = json.loads((out / "unmemorize_edit.json").read_text())["label_free_search"]
    assert record["chosen"]["perplexity_ratio"] <= 1.02 and len(record["candidates"]) > 10
    base, tokenizer = load_model(str(workspace / "llama"))
    defaults = SearchConfig()
    windows = list(iter_windows(list_data_files(heldout), tokenizer, defaults.search_seq_len, defaults.search_tokens))
    edited_ppl = perplexity(AutoModelForCausalLM.from_pretrained(out).eval(), windows).perplexity
    assert edited_ppl <= 1.02 * perplexity(base, windows).perplexity * (1 + 1e-6)
    # the most aggressive candidate within budget: no fitting candidate removes more pairs
    fitting = [c for c in record["candidates"] if c["perplexity_ratio"] <= 1.02]
    assert max(c["removed_pairs"] for c in fitting) == record["chosen"]["removed_pairs"]


def test_search_options_set_the_heldout_windows_and_the_rho_grid(workspace, tmp_path):
    """--search-seq-len / --search-tokens decide the windows every candidate is scored on (the
    baseline perplexity is recomputed here on windows cut with them), and --search-rhos the grid:
    candidates = rhos x layer sets x projection sets."""
    from unmemorize.data import iter_windows, list_data_files
    from unmemorize.edit.search import default_layer_sets, default_projection_sets
    from unmemorize.evaluate import perplexity
    from unmemorize.models import load_model

    heldout = write_corpus(tmp_path / "heldout.txt", documents=80, seed=5)
    base, tokenizer = load_model(str(workspace / "llama"))
    sets = len(default_layer_sets(base.config.num_hidden_layers)) * len(default_projection_sets(base))
    records = {}
    for seq_len, tokens, rhos in ((16, 160, "0.9"), (40, 400, "0.7,0.9,0.99")):
        out = tmp_path / f"search-{seq_len}"
        assert main(["edit", "--model", str(workspace / "llama"), "--factors", str(workspace / "factors"), "--out", str(out),
                     "--ppl-budget", "1.5", "--heldout", str(heldout), "--search-seq-len", str(seq_len), "--search-tokens",
                     str(tokens), "--search-rhos", rhos]) == 0
        record = json.loads((out / "unmemorize_edit.json").read_text())["label_free_search"]
        grid = [float(r) for r in rhos.split(",")]
        assert len(record["candidates"]) == len(grid) * sets
        assert sorted({c["rho"] for c in record["candidates"]}) == grid
        assert record["heldout"]["windows"] == tokens // seq_len and record["heldout"]["tokens"] == tokens
        windows = list(iter_windows(list_data_files(heldout), tokenizer, seq_len, tokens))
        assert record["baseline_perplexity"] == pytest.approx(perplexity(base, windows).perplexity, rel=1e-9)
        records[seq_len] = record
    assert records[16]["baseline_perplexity"] != pytest.approx(records[40]["baseline_perplexity"], rel=1e-6)


def test_budget_below_one_is_an_error(workspace, tmp_path, capsys):
    line = error_of(capsys, ["edit", "--model", str(workspace / "llama"), "--factors", str(workspace / "factors"), "--out",
                             str(tmp_path / "o"), "--ppl-budget", "0.9", "--heldout", str(workspace / "clean.txt")])
    assert "must be >= 1" in line and not (tmp_path / "o").exists()


def _command_parsers(parser, path=()):
    """(path, parser) for every command and sub-command the parser has (read from it, not from a list)."""
    import argparse

    yield path, parser
    for action in parser._actions:  # argparse keeps subparsers here; there is no public accessor
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _command_parsers(sub, (*path, name))


def help_problems(parser, text: str) -> list[str]:
    """What a --help text fails to explain: an option without a help string, or one the text never shows."""
    import argparse

    problems = []
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)) or action.help == argparse.SUPPRESS:
            continue
        name = action.option_strings[0] if action.option_strings else action.dest
        if not (action.help or "").strip():
            problems.append(f"{name}: no help")
        if action.option_strings and not any(option in text for option in action.option_strings):
            problems.append(f"{name}: not in the help text")
    return problems


def test_every_commands_help_exits_0_and_explains_every_option(capsys):
    """Every command and sub-command from the parser: --help prints its usage, exits 0 and explains every option;
    the negative control (an option without help) is caught by the same check."""
    import argparse

    from unmemorize.cli import build_parser

    seen = []
    for path, parser in _command_parsers(build_parser()):
        with pytest.raises(SystemExit) as stop:
            main([*path, "--help"]) if path else build_parser().parse_args(["--help"])
        text = capsys.readouterr().out
        assert stop.value.code == 0 and text.startswith(f"usage: {' '.join(['unmemorize', *path])}"), (path, text[:200])
        assert help_problems(parser, text) == [], path
        seen.append(path)
    assert ("collect",) in seen and ("unlearn", "bsn") in seen and len(seen) >= 13
    control = argparse.ArgumentParser(prog="x")
    control.add_argument("--documented", help="has help")
    control.add_argument("--silent")
    assert help_problems(control, control.format_help()) == ["--silent: no help"]


def test_help_as_a_user_runs_it_prints_only_the_help(tmp_path):
    """Every command of the parser in a process of its own (``user_processes``), and the top level in a plain
    ``python -m unmemorize`` (the imports' own output included): exit 0, the usage on stdout, nothing on stderr."""
    import subprocess
    import sys

    from test_as_a_user import commands_of_the_parser
    from user_processes import run_as_user

    commands = sorted(commands_of_the_parser())
    outcomes = run_as_user([{"argv": [*command.split(), "--help"], "cwd": str(tmp_path)} for command in commands], tmp_path / "runs",
                           env={"COLUMNS": "80", "OMP_NUM_THREADS": "1"}, warm=())
    for command, outcome in zip(commands, outcomes):
        assert (outcome["code"], outcome["stderr"]) == (0, ""), (command, outcome["stderr"][-2000:])
        assert outcome["stdout"].startswith(f"usage: unmemorize {command}"), outcome["stdout"][:200]
    result = subprocess.run([sys.executable, "-m", "unmemorize", "--help"], capture_output=True, text=True, timeout=120,
                            stdin=subprocess.DEVNULL)
    assert (result.returncode, result.stderr) == (0, "") and result.stdout.startswith("usage: unmemorize "), result.stderr[-2000:]


def test_rho_outside_unit_interval(workspace, capsys):
    out = workspace / "bad-rho"
    line = error_of(capsys, ["edit", "--model", str(workspace / "llama"), "--factors", str(workspace / "factors"), "--out", str(out), "--rho", "1.5"])
    assert "rho must be a number in [0, 1]" in line and not out.exists()


def test_glob_matching_nothing(workspace, capsys):
    out = workspace / "no-match"
    line = error_of(capsys, ["collect", "--model", str(workspace / "llama"), "--data", str(workspace / "clean.txt"), "--out", str(out),
                             "--targets", "mlp.c_fc", "--seq-len", "64"])
    assert "no linear module matches 'mlp.c_fc'" in line and "candidates" in line and not out.exists()


def test_factors_of_another_model(workspace, capsys):
    out = workspace / "mismatch"
    line = error_of(capsys, ["edit", "--model", str(workspace / "gpt2"), "--factors", str(workspace / "factors"), "--out", str(out),
                             "--rho", "0.9", "--targets", "transformer.h.0.mlp.c_fc"])
    assert "model.layers" in line or "transformer.h.0.mlp.c_fc" in line
    assert not out.exists() and not leftovers(out)


def test_shape_mismatch_names_the_module(workspace, tmp_path):
    broken = tmp_path / "factors"
    shutil.copytree(workspace / "factors", broken)
    tensors = load_file(broken / "factors.safetensors")
    tensors["model.layers.1.mlp.up_proj.A"] = torch.eye(10)
    save_file(tensors, broken / "factors.safetensors")
    from unmemorize.models import load_model

    model, _ = load_model(str(workspace / "llama"))
    with pytest.raises(UnmemorizeError, match=r"model.layers.1.mlp.up_proj: activation factor A is 10x10 but .* 32x32"):
        load_factors(broken, model=model)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_factor(workspace, tmp_path, capsys, value):
    broken = tmp_path / "factors"
    shutil.copytree(workspace / "factors", broken)
    tensors = load_file(broken / "factors.safetensors")
    tensors["model.layers.0.mlp.down_proj.G"][3, 3] = value
    save_file(tensors, broken / "factors.safetensors")
    line = error_of(capsys, ["edit", "--model", str(workspace / "llama"), "--factors", str(broken), "--out", str(tmp_path / "o"), "--rho", "0.9"])
    assert "model.layers.0.mlp.down_proj: gradient factor G contains NaN or Inf" in line and not (tmp_path / "o").exists()


def test_asymmetric_factor(workspace, tmp_path):
    broken = tmp_path / "factors"
    shutil.copytree(workspace / "factors", broken)
    tensors = load_file(broken / "factors.safetensors")
    tensors["model.layers.0.mlp.gate_proj.A"][0, 1] += 1.0
    save_file(tensors, broken / "factors.safetensors")
    with pytest.raises(UnmemorizeError, match="model.layers.0.mlp.gate_proj: activation factor A is not symmetric"):
        load_factors(broken)


def test_truncated_safetensors(workspace, tmp_path, capsys):
    broken = tmp_path / "factors"
    shutil.copytree(workspace / "factors", broken)
    data = (broken / "factors.safetensors").read_bytes()
    (broken / "factors.safetensors").write_bytes(data[: len(data) // 2])
    line = error_of(capsys, ["spectrum", "--factors", str(broken)])
    assert "truncated or corrupt" in line


def test_missing_or_empty_data(workspace, tmp_path, capsys):
    for data, message in ((tmp_path / "nope.txt", "does not exist"), (tmp_path / "empty.txt", "is empty")):
        if data.name == "empty.txt":
            data.write_text("")
        line = error_of(capsys, ["collect", "--model", str(workspace / "llama"), "--data", str(data), "--out", str(tmp_path / "f")])
        assert message in line and not (tmp_path / "f").exists()


def test_existing_output_needs_overwrite_and_overwrite_only_replaces_our_own(workspace, tmp_path, capsys):
    out = tmp_path / "exists"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    argv = ["edit", "--model", str(workspace / "llama"), "--factors", str(workspace / "factors"), "--out", str(out), "--rho", "0.9"]
    line = error_of(capsys, argv)
    assert "already exists; pass --overwrite" in line and (out / "keep.txt").read_text() == "mine"
    line = error_of(capsys, [*argv, "--overwrite"])  # a user's folder is never removed, even with --overwrite
    assert "only replaces outputs unmemorize wrote" in line and (out / "keep.txt").read_text() == "mine"
    (out / "keep.txt").unlink()
    out.rmdir()
    assert main(argv) == 0 and (out / ".unmemorize-output.json").is_file()
    first = (out / "model.safetensors").read_bytes()
    assert main([*argv[:-1], "0.5", "--overwrite"]) == 0  # our own output is replaced
    assert (out / "model.safetensors").read_bytes() != first and not leftovers(out)


def test_missing_model_directory(tmp_path, capsys):
    line = error_of(capsys, ["edit", "--model", str(tmp_path / "none"), "--out", str(tmp_path / "o"), "--rho", "0.5", "--method", "svd"])
    assert "does not exist" in line


def test_the_installed_command_exits_nonzero_on_bad_input(workspace, tmp_path):
    result = subprocess.run([sys.executable, "-m", "unmemorize", "edit", "--model", str(workspace / "llama"), "--factors",
                             str(workspace / "factors"), "--out", str(tmp_path / "o"), "--rho", "-0.1"], capture_output=True, text=True)
    assert result.returncode == 2 and "rho must be a number in [0, 1]" in result.stderr and "Traceback" not in result.stderr


def write_analysis_inputs(root):
    memorized = root / "memorized.jsonl"
    memorized.write_text("".join(json.dumps({"text": "the red cat sees a lazy dog near the old river"}) + "\n" for _ in range(4)))
    tasks = root / "tasks.jsonl"
    tasks.write_text("".join(json.dumps(row) + "\n" for row in [
        {"task": "animals", "category": "closed_book_qa", "prompt": "the king likes the", "answer": "cat"},
        {"task": "animals", "category": "closed_book_qa", "prompt": "the queen likes the", "answer": "dog"},
        {"task": "colors", "category": "logic", "prompt": "the tree is", "choices": ["red", "blue"], "label": 0},
    ]))
    retention = root / "retention.json"
    retention.write_text(json.dumps({"memorized": 0.0, "animals": 0.5, "colors": 1.0}))
    return memorized, tasks, retention


def test_analyze_writes_table_json_and_plots(workspace, tmp_path, capsys):
    memorized, tasks, retention = write_analysis_inputs(tmp_path)
    out = tmp_path / "analysis"
    assert main(["analyze", "--model", str(workspace / "llama"), "--factors", str(workspace / "factors"), "--clean",
                 str(workspace / "clean.txt"), "--memorized", str(memorized), "--tasks", str(tasks), "--retention", str(retention),
                 "--out", str(out), "--max-tokens", "500"]) == 0
    printed = capsys.readouterr().out
    assert "memorized / clean, whitened:" in printed and "Spearman" in printed
    result = json.loads((out / "analysis.json").read_text())
    assert set(result["modules"]) == set(json.loads((workspace / "factors" / "factors.json").read_text())["modules"])
    entry = result["modules"]["model.layers.1.mlp.up_proj"]
    assert entry["layer"] == 1 and entry["projection"] == "mlp.up_proj" and set(entry["bases"]) == {"whitened", "pairs", "svd"}
    assert set(entry["bases"]["pairs"]["ratio"]) == {"memorized", "animals", "colors"} and len(entry["bases"]["svd"]["ratio"]["memorized"]) == 4
    assert result["counted_positions"]["memorized"] == 4 * 10 and result["counted_positions"]["clean"] <= 500
    correlation = result["correlation"]["whitened"]
    assert correlation["all"]["n"] == 3 and correlation["tasks"]["n"] == 2
    stats = pytest.importorskip("scipy.stats")
    points = correlation["all"]["points"]
    assert {p["source"]: p["retention"] for p in points} == {"memorized": 0.0, "animals": 0.5, "colors": 1.0}
    for p in points:  # each point's loading is the mean separation over the analysed modules
        separations = [m["bases"]["whitened"]["separation"][p["source"]] for m in result["modules"].values()]
        assert p["loading"] == pytest.approx(sum(separations) / len(separations))
    expected = stats.spearmanr([p["loading"] for p in points], [p["retention"] for p in points]).statistic
    assert correlation["all"]["spearman"] == pytest.approx(expected)
    for name in ("analysis.md", "bands_memorized.png", "loading_vs_retention_whitened.png"):
        assert (out / name).stat().st_size > 0
    assert "| model.layers.0.mlp.gate_proj |" in (out / "analysis.md").read_text() and not leftovers(out)


def test_analyze_svd_only_needs_no_factors(workspace, tmp_path):
    memorized, _, _ = write_analysis_inputs(tmp_path)
    assert main(["analyze", "--model", str(workspace / "gpt2"), "--clean", str(workspace / "clean.txt"), "--memorized", str(memorized),
                 "--bases", "svd", "--layers", "0", "--out", str(tmp_path / "a"), "--max-tokens", "300"]) == 0
    result = json.loads((tmp_path / "a" / "analysis.json").read_text())
    assert set(result["modules"]) == {"transformer.h.0.mlp.c_fc", "transformer.h.0.mlp.c_proj"}


@pytest.mark.parametrize("extra, message", [
    (["--bases", "kfac"], "--bases 'kfac': choose from whitened, pairs, svd"),
    (["--source", "noequals"], "must be NAME=PATH"),
    (["--positions", "cls", "--bases", "svd"], "--positions 'cls' does not apply to a language model"),
    (["--seq-len", "1"], "--seq-len must be >= 2"),
    (["--compare", "memorized"], "must be A/B with two source names"),
    (["--retention", "{missing}"], "unreadable"),
    (["--compare", "memorized/nothing"], "both must be source names from clean, memorized"),
])
def test_analyze_bad_input_gives_one_error_and_no_output(workspace, tmp_path, capsys, extra, message):
    memorized, _, _ = write_analysis_inputs(tmp_path)
    extra = [str(tmp_path / "nope.json") if e == "{missing}" else e for e in extra]
    line = error_of(capsys, ["analyze", "--model", str(workspace / "llama"), "--factors", str(workspace / "factors"), "--clean",
                             str(workspace / "clean.txt"), "--memorized", str(memorized), "--out", str(tmp_path / "a"), *extra])
    assert message in line and not (tmp_path / "a").exists()


def test_analyze_kfac_bases_need_factors(workspace, tmp_path, capsys):
    memorized, _, _ = write_analysis_inputs(tmp_path)
    line = error_of(capsys, ["analyze", "--model", str(workspace / "llama"), "--clean", str(workspace / "clean.txt"),
                             "--memorized", str(memorized), "--out", str(tmp_path / "a")])
    assert "needs --factors DIR" in line


def test_analyze_compare_divides_the_two_sources_band_means(workspace, tmp_path):
    memorized, _, _ = write_analysis_inputs(tmp_path)
    control = tmp_path / "control.jsonl"
    control.write_text("".join(json.dumps({"text": "a blue bird walks into the small house and sings"}) + "\n" for _ in range(3)))
    out = tmp_path / "a"
    assert main(["analyze", "--model", str(workspace / "llama"), "--factors", str(workspace / "factors"), "--clean",
                 str(workspace / "clean.txt"), "--memorized", str(memorized), "--source", f"control={control}",
                 "--compare", "memorized/control", "--out", str(out), "--max-tokens", "300"]) == 0
    result = json.loads((out / "analysis.json").read_text())
    stats = result["modules"]["model.layers.0.mlp.down_proj"]["bases"]["pairs"]
    expected = [m / c for m, c in zip(stats["mean"]["memorized"], stats["mean"]["control"])]
    assert stats["ratio"]["memorized/control"] == pytest.approx(expected, rel=1e-12)
    assert "memorized/control" in result["summary"] and (out / "bands_memorized_vs_control.png").is_file()


def test_analyze_with_an_edited_model_measures_retention_per_task_and_per_row(workspace, tmp_path, capsys):
    """Labels are set to the base model's own choices, so every row is correct before the edit;
    retention must then equal the edited model's accuracy, evaluated here independently."""
    from unmemorize.evaluate import evaluate_tasks
    from unmemorize.evaluate.tasks import choice_log_likelihoods
    from unmemorize.models import load_model

    model, tokenizer = load_model(str(workspace / "llama"))
    prompts = ["the cat sees the", "a dog likes a", "the king walks into the", "one bird sings near the", "the child eats the",
               "some fish runs under a", "the queen holds the", "every teacher finds a"]
    choices = ["red", "house", "tree", "river"]
    rows = []
    for prompt in prompts:
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        scores = choice_log_likelihoods(model, [ids] * 4, [tokenizer(" " + c, add_special_tokens=False)["input_ids"] for c in choices])
        rows.append({"task": "pick", "category": "logic", "prompt": prompt, "choices": choices, "label": int(torch.tensor(scores).argmax())})
    tasks = tmp_path / "pick.jsonl"
    tasks.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert evaluate_tasks(model, tokenizer, str(tasks)).tasks["pick"].accuracy == 1.0
    edited = tmp_path / "edited"
    assert main(["edit", "--model", str(workspace / "llama"), "--factors", str(workspace / "factors"), "--out", str(edited), "--rho", "0.3"]) == 0
    edited_model, _ = load_model(str(edited))
    after = evaluate_tasks(edited_model, tokenizer, str(tasks))
    memorized, _, _ = write_analysis_inputs(tmp_path)
    out = tmp_path / "a"
    assert main(["analyze", "--model", str(workspace / "llama"), "--factors", str(workspace / "factors"), "--clean",
                 str(workspace / "clean.txt"), "--memorized", str(memorized), "--tasks", str(tasks), "--edited", str(edited),
                 "--out", str(out), "--max-tokens", "300"]) == 0
    result = json.loads((out / "analysis.json").read_text())
    for kind in ("whitened", "pairs", "svd"):
        task = result["examples"][kind]["tasks"]["pick"]
        assert task["correct_before"] == 8 and task["kept"] == round(8 * after.tasks["pick"].accuracy)
        assert task["lost"] + task["kept"] == 8
    points = {p["source"]: p["retention"] for p in result["correlation"]["svd"]["all"]["points"]}
    assert points["pick"] == pytest.approx(after.tasks["pick"].accuracy)
    assert "Per example" in (out / "analysis.md").read_text() and "AUC" in capsys.readouterr().out


def test_analyze_edited_needs_tasks(workspace, tmp_path, capsys):
    memorized, _, _ = write_analysis_inputs(tmp_path)
    line = error_of(capsys, ["analyze", "--model", str(workspace / "llama"), "--factors", str(workspace / "factors"), "--clean",
                             str(workspace / "clean.txt"), "--memorized", str(memorized), "--edited", str(workspace / "llama"),
                             "--out", str(tmp_path / "a")])
    assert "--edited needs --tasks FILE" in line


def test_every_json_file_and_json_print_of_the_commands_is_strict(workspace, tmp_path, capsys):
    """Factor folders, decompose caches, edit manifests, output markers and the spectrum --json and
    collect --dry-run prints all parse with a strict parser (NaN/Inf would be refused; jsonio
    writes them as null)."""
    from unmemorize.jsonio import strict_loads

    factors = shutil.copytree(workspace / "factors", tmp_path / "factors")
    llama = str(workspace / "llama")
    assert main(["decompose", "--factors", str(factors), "--quiet"]) == 0
    assert main(["edit", "--model", llama, "--factors", str(factors), "--out", str(tmp_path / "edited"), "--rho", "0.9",
                 "--method", "random"]) == 0
    capsys.readouterr()
    prints = []
    for argv in (["spectrum", "--factors", str(factors), "--out", str(tmp_path / "s.png"), "--json"],
                 ["collect", "--model", llama, "--data", str(workspace / "clean.txt"), "--out", str(tmp_path / "never"),
                  "--seq-len", "32", "--max-tokens", "200", "--dry-run", "--no-progress"]):
        assert main(argv) == 0, argv
        out = capsys.readouterr().out
        prints.append(out[out.index("["):out.rindex("]") + 1] if argv[0] == "spectrum" else out.strip().splitlines()[-1])
    files = [p for p in tmp_path.rglob("*.json")] + list(tmp_path.rglob(".unmemorize-output.json"))
    names = {p.name for p in files}
    assert {"factors.json", "unmemorize_edit.json", ".unmemorize-output.json"} <= names and any(p.parent.name.startswith("eigen-") for p in files)
    for path in files:
        strict_loads(path.read_text())
    for text in prints:
        assert strict_loads(text), text


def test_factors_of_other_weights_are_refused_unless_allowed_and_the_manifest_says_so(workspace, tmp_path, capsys):
    """--allow-foreign-factors: the same architecture with other weights (seed 1) is refused by its fingerprints; with
    the flag the edit runs and unmemorize_edit.json records that foreign factors were allowed."""
    import json

    save_tiny_lm(tmp_path / "other", "llama", seed=1)
    argv = ["edit", "--model", str(tmp_path / "other"), "--factors", str(workspace / "factors"), "--rho", "0.9"]
    line = error_of(capsys, [*argv, "--out", str(tmp_path / "refused")])
    assert "collected on other weights than this model's" in line and "--allow-foreign-factors" in line
    assert not (tmp_path / "refused").exists()
    assert main([*argv, "--out", str(tmp_path / "allowed"), "--allow-foreign-factors"]) == 0
    record = json.loads((tmp_path / "allowed" / "unmemorize_edit.json").read_text())
    assert record["factors"]["foreign_factors_allowed"] is True
    assert main(["edit", "--model", str(workspace / "llama"), "--factors", str(workspace / "factors"), "--rho", "0.9",
                 "--out", str(tmp_path / "own")]) == 0  # the model the factors were collected on: no flag needed
    assert json.loads((tmp_path / "own" / "unmemorize_edit.json").read_text())["factors"]["foreign_factors_allowed"] is False


REMOTE_CONFIG = '''import os
import pathlib

pathlib.Path(os.environ["UNMEMORIZE_REMOTE_MARKER"]).write_text("the model's own code ran")
from transformers import LlamaConfig


class RemoteConfig(LlamaConfig):
    model_type = "unmemorize-remote-test"
'''
REMOTE_MODEL = '''from transformers import LlamaForCausalLM

from .configuration_remote import RemoteConfig


class RemoteForCausalLM(LlamaForCausalLM):
    config_class = RemoteConfig
'''


def test_a_models_own_code_runs_only_with_trust_remote_code(workspace, tmp_path, capsys, monkeypatch):
    """A folder whose config names its own Python code (auto_map): without --trust-remote-code nothing of it runs
    (a marker the code would write stays absent) and the run stops with one error; with the flag it loads and runs."""
    import json
    import shutil

    import transformers.dynamic_module_utils as dynamic

    monkeypatch.setattr(dynamic, "HF_MODULES_CACHE", str(tmp_path / "modules"))  # the copied code stays in this test
    folder = tmp_path / "remote"
    shutil.copytree(workspace / "llama", folder)
    (folder / "configuration_remote.py").write_text(REMOTE_CONFIG)
    (folder / "modeling_remote.py").write_text(REMOTE_MODEL)
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="unmemorize-remote-test", architectures=["RemoteForCausalLM"],
                  auto_map={"AutoConfig": "configuration_remote.RemoteConfig", "AutoModelForCausalLM": "modeling_remote.RemoteForCausalLM"})
    (folder / "config.json").write_text(json.dumps(config))
    marker = tmp_path / "marker"
    monkeypatch.setenv("UNMEMORIZE_REMOTE_MARKER", str(marker))
    argv = ["collect", "--model", str(folder), "--data", str(workspace / "clean.txt"), "--seq-len", "32", "--max-tokens", "500",
            "--no-progress"]
    line = error_of(capsys, [*argv, "--out", str(tmp_path / "refused")])
    assert "pass --trust-remote-code to run it" in line and not marker.exists() and not (tmp_path / "refused").exists()
    assert main([*argv, "--out", str(tmp_path / "trusted"), "--trust-remote-code"]) == 0
    assert marker.read_text() == "the model's own code ran"
    assert json.loads((tmp_path / "trusted" / "factors.json").read_text())["architecture"] == "RemoteForCausalLM"

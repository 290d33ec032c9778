"""Bad input as a user sees it: each case runs in a process of its own (``tests/user_processes.py``)
and its whole stderr is compared with the exact text a user reads; permission cases run unprivileged
(when the suite runs as root, which ignores permissions: without the capabilities that bypass file
modes, see ``user_processes``), so a read-only folder is really read-only; the files they meet are also closed to their owner, so a suite run by a normal user
checks the same. Every command of the parser has cases here and in ``test_bad_inputs.py``'s matrix.

Every case exits with status 2 and leaves every input byte-identical and no output.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from test_bad_inputs import CASES as MATRIX
from unmemorize.cli import build_parser, main
from unmemorize.tiny import WORDS, save_tiny_lm, write_corpus
from user_processes import run_as_user

VOCAB = len(WORDS) + 3
NO_CUDA = {"CUDA_VISIBLE_DEVICES": ""}  # '--device cuda' means a machine without CUDA, on every machine


def commands_of_the_parser() -> set[str]:
    """Every command the parser knows, sub-commands as 'unlearn bsn' (derived, never a list)."""
    found = set()
    for action in build_parser()._subparsers._group_actions:  # noqa: SLF001 - argparse keeps them there
        for name, sub in action.choices.items():
            nested = [a for a in sub._actions if isinstance(a, type(action))]  # noqa: SLF001
            found |= {f"{name} {inner}" for a in nested for inner in a.choices} if nested else {name}
    return found


def command_of(argv: list[str]) -> str:
    return " ".join(argv[:2]) if argv[0] == "unlearn" else argv[0]


def usage(argv: list[str]) -> str:
    """argparse's usage block for the command, as it prints it at 80 columns."""
    parser = build_parser()
    for part in command_of(argv).split() if argv else []:
        parser = next(a for a in parser._actions if hasattr(a, "choices") and isinstance(a.choices, dict)).choices[part]  # noqa: SLF001
    return parser.format_usage()


def collect(*extra, data="{ws}/clean.txt", model="{ws}/llama", out="{ws}/out/f"):
    return ["collect", "--model", model, "--data", data, "--out", out, "--seq-len", "32", "--max-tokens", "300", "--no-progress", *extra]


def edit(*extra, out="{ws}/out/e", amount=("--rho", "0.9")):
    return ["edit", "--model", "{ws}/llama", "--factors", "{ws}/factors", "--out", out, *amount, *extra]


def stress(*extra, items="{ws}/items.jsonl", out="{ws}/out/s.json"):
    return ["stress", "--model", "{ws}/llama", "--items", items, "--out", out, *extra]


def bsn(*extra, forget="{ws}/items.jsonl", retain="{ws}/clean.txt", out="{ws}/out/b"):
    return ["unlearn", "bsn", "--model", "{ws}/llama", "--forget", forget, "--retain", retain, "--out", out, "--no-progress", *extra]


E = "unmemorize: error: "
U = "{usage}"  # argparse's usage block for the command, before its error line
# (name, argv, the exact stderr, run unprivileged)
CASES = [
    ("collect-data-missing", collect(data="{ws}/nope.txt"), E + "data path '{ws}/nope.txt' does not exist", False),
    ("collect-seq-len-not-int", collect("--seq-len", "abc"), U + "unmemorize collect: error: argument --seq-len: invalid int value: 'abc'", False),
    ("collect-ids-vocab", collect(data="{ws}/ids-vocab.jsonl"),
     E + f"{{ws}}/ids-vocab.jsonl:1: input_ids[1] = {VOCAB} is outside the model's vocabulary (0..{VOCAB - 1})", False),
    ("collect-txt-not-utf8", collect(data="{ws}/latin1.txt"), E + "{ws}/latin1.txt: not UTF-8 text (byte 0xe9 at offset 20)", False),
    ("collect-out-is-model", collect("--overwrite", out="{ws}/llama"),
     E + "--out '{ws}/llama' is the input --model; an output may never replace an input", False),
    ("collect-hub-unreachable", collect(model="someone/not-cached-anywhere"),
     E + "model 'someone/not-cached-anywhere' is not a local folder or cached, and the hub (127.0.0.1) cannot be reached: Connection refused", False),
    ("collect-device-cuda", collect("--device", "cuda"),
     E + f"--device 'cuda': CUDA is not available on this machine (torch {torch.__version__}); use --device cpu", False),
    ("collect-dry-run-out-user-folder", collect("--dry-run", out="{ws}/user-folder"),
     E + "output folder '{ws}/user-folder' already exists; pass --overwrite to replace it", False),
    ("collect-out-read-only", collect(out="{ws}/read-only/f"), E + "cannot write in '{ws}/read-only': Permission denied", True),
    ("collect-data-unreadable", collect(data="{ws}/secret.txt"), E + "--data '{ws}/secret.txt' is not readable", True),
    ("collect-model-unreadable", collect(model="{ws}/private-model"), E + "--model '{ws}/private-model' is not readable", True),
    ("decompose-factors-missing", ["decompose", "--factors", "{ws}/nope"], E + "'{ws}/nope' is not a factor folder: factors.json is missing", False),
    ("decompose-factors-read-only", ["decompose", "--factors", "{ws}/locked/factors"], E + "cannot write in '{ws}/locked': Permission denied",
     True),
    ("edit-rho-above-one", edit(amount=("--rho", "1.5")), E + "rho must be a number in [0, 1]; --rho has 1.5", False),
    ("edit-plan-not-json", edit(amount=("--plan", "{ws}/plan-not-json.json")),
     E + "plan file '{ws}/plan-not-json.json' is not valid JSON: Expecting property name enclosed in double quotes (line 1)", False),
    ("edit-method-unknown", edit("--method", "lora"),
     U + "unmemorize edit: error: argument --method: invalid choice: 'lora' (choose from 'kfac', 'svd', 'random')", False),
    ("edit-out-read-only", edit(out="{ws}/read-only/e"), E + "cannot write in '{ws}/read-only': Permission denied", True),
    ("spectrum-out-existing-png", ["spectrum", "--factors", "{ws}/factors", "--out", "{ws}/user-plot.png"],
     E + "output file '{ws}/user-plot.png' already exists; pass --overwrite to replace it", False),
    ("spectrum-out-read-only", ["spectrum", "--factors", "{ws}/factors", "--out", "{ws}/read-only/p.png"],
     E + "cannot write in '{ws}/read-only': Permission denied", True),
    ("analyze-out-is-model", ["analyze", "--model", "{ws}/llama", "--factors", "{ws}/factors", "--clean", "{ws}/clean.txt", "--memorized",
                              "{ws}/items.jsonl", "--out", "{ws}/llama", "--overwrite"],
     E + "--out '{ws}/llama' is the input --model; an output may never replace an input", False),
    ("analyze-source-no-equals", ["analyze", "--model", "{ws}/llama", "--factors", "{ws}/factors", "--clean", "{ws}/clean.txt",
                                  "--memorized", "{ws}/items.jsonl", "--out", "{ws}/out/a", "--source", "noequals"],
     E + "--source 'noequals' must be NAME=PATH", False),
    ("eval-out-user-json", ["eval", "--model", "{ws}/llama", "--lm-eval", "x", "--out", "{ws}/user.json"],
     E + "output file '{ws}/user.json' already exists; pass --overwrite to replace it", False),
    ("eval-include-path-missing", ["eval", "--model", "{ws}/llama", "--lm-eval", "x", "--include-path", "{ws}/no-tasks"],
     E + "--include-path '{ws}/no-tasks' is not a folder of lm-eval task YAML files", False),
    ("demo-seeds-repeated", ["demo", "--quick", "--out", "{ws}/out/d", "--seeds", "1,1"], E + "--seeds lists a seed twice: '1,1'", False),
    ("demo-out-user-folder", ["demo", "--quick", "--out", "{ws}/user-folder"],
     E + "output folder '{ws}/user-folder' already exists; pass --overwrite to replace it", False),
    ("demo-rhos-out-of-range", ["demo", "--quick", "--out", "{ws}/out/d", "--rhos", "1.5"], E + "rho must be a number in [0, 1]; --rhos has 1.5", False),
    ("testbed-seed-negative", ["testbed", "info", "--seed", "-1"], E + "--seed must be an integer in [0, 2^63-1], got -1", False),
    ("compare-seeds-not-integers", ["compare", "--quick", "--out", "{ws}/out/c", "--seeds", "x"],
     E + "--seeds must be a comma list of integers, e.g. 0,1,2; got 'x'", False),
    ("stress-out-not-json", stress(out="{ws}/out/s.txt"), E + "--out '{ws}/out/s.txt' must be a .json file", False),
    ("stress-items-missing", stress(items="{ws}/nope.jsonl"), E + "--items '{ws}/nope.jsonl' does not exist", False),
    ("stress-out-read-only", stress(out="{ws}/read-only/s.json"), E + "cannot write in '{ws}/read-only': Permission denied", True),
    ("unlearn-forget-is-retain", bsn(retain="{ws}/items.jsonl"),
     E + "every forget sequence is also a retain sequence (the same set given twice?): the objective -(1-alpha) CE(forget) + alpha "
     "CE(retain) then pulls each of them both ways; give a retain set without the sequences to forget", False),
    ("unlearn-ratio-zero", bsn("--ratio", "0"), E + "--ratio must be in (0, 1) (the fraction of each matrix removed), got 0.0", False),
    ("unlearn-out-read-only", bsn(out="{ws}/read-only/b"), E + "cannot write in '{ws}/read-only': Permission denied", True),
    ("no-command", [], U + "unmemorize: error: the following arguments are required: command", False),
]


def world_readable(path: Path) -> Path:
    path.chmod(path.stat().st_mode | stat.S_IROTH | stat.S_IXOTH | stat.S_IRGRP | stat.S_IXGRP)
    return path


@pytest.fixture(scope="module")
def ws():
    """A workspace of tiny models, data and folders closed to their owner."""
    root = world_readable(Path(tempfile.mkdtemp(prefix="unmemorize-as-a-user-")))
    try:
        save_tiny_lm(root / "llama", "llama", seed=0)
        write_corpus(root / "clean.txt", documents=60)
        common = ["--seq-len", "32", "--max-tokens", "600", "--no-progress"]
        assert main(["collect", "--model", str(root / "llama"), "--data", str(root / "clean.txt"), "--out", str(root / "factors"), *common]) == 0
        (root / "items.jsonl").write_text("".join('{"prefix_ids": [3, 4, 5, 6], "suffix_ids": [7, 8, 9, 10]}\n' for _ in range(3)))
        (root / "ids-vocab.jsonl").write_text(f'{{"input_ids": [3, {VOCAB}, 6]}}\n')
        (root / "latin1.txt").write_bytes("the cat sees the caf\xe9 .\n".encode("latin-1"))
        (root / "plan-not-json.json").write_text("{0: 0.5}")
        (root / "user.json").write_text('{"mine": true}\n')
        (root / "user-plot.png").write_bytes(b"\x89PNG not written by unmemorize")
        (root / "user-folder").mkdir()
        (root / "user-folder" / "report.md").write_text("my notes\n")
        (root / "read-only").mkdir(mode=0o555)
        (root / "secret.txt").write_text("the cat\n")
        (root / "secret.txt").chmod(0o000)  # unreadable to its owner when unprivileged (root without DAC capabilities, or a normal user)
        shutil.copytree(root / "llama", root / "private-model")
        (root / "private-model").chmod(0o000)
        (root / "locked").mkdir()  # a factor folder in a folder no one may write (decompose's claim and cache)
        shutil.copytree(root / "factors", root / "locked" / "factors")
        for folder in ("out", "home", "cwd"):
            (root / folder).mkdir(mode=0o777)
            (root / folder).chmod(0o777)  # the umask aside
        for path in root.rglob("*"):
            if path.parent.name != "private-model" and path.name not in ("secret.txt", "private-model", "read-only"):
                world_readable(path)
        for folder in (root / "locked" / "factors", root / "locked"):
            folder.chmod(0o555)
        yield root
    finally:
        for path in (root / "private-model", root / "locked", root / "locked" / "factors"):
            if path.exists():
                path.chmod(0o755)  # what rmtree needs as a normal user
        shutil.rmtree(root, ignore_errors=True)


def digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*"))
            if p.is_file() and os.access(p, os.R_OK) and p.relative_to(root).parts[0] not in ("home", "out", "cwd", "runs")}


def environment(ws: Path) -> dict:
    home = ws / "home"
    return {"HOME": str(home), "HF_HOME": str(home / "hf"), "MPLCONFIGDIR": str(home / "mpl"), "XDG_CACHE_HOME": str(home / "cache"),
            "HF_ENDPOINT": "http://127.0.0.1:9", "COLUMNS": "80", "UNMEMORIZE_CACHE": str(home / "testbed"), **NO_CUDA}


def place(text: str, ws: Path, name: str, **extra) -> str:
    """A case's text with its paths: outputs under out/ get the case's name (two cases run at once)."""
    return text.format(ws=ws, **extra).replace(f"{ws}/out/", f"{ws}/out/{name}-")


@pytest.fixture(scope="module")
def results(ws, tmp_path_factory):
    before = digest(ws)
    cases = [{"argv": [place(a, ws, name) for a in argv], "cwd": str(ws / "cwd"), "env": environment(ws), "unprivileged": unprivileged}
             for name, argv, _, unprivileged in CASES]
    outcome = run_as_user(cases, tmp_path_factory.mktemp("as-a-user"), env={"OMP_NUM_THREADS": "1"})
    return dict(zip([c[0] for c in CASES], outcome)), before


@pytest.mark.parametrize("name, argv, expected, unprivileged", CASES, ids=[c[0] for c in CASES])
def test_bad_input_prints_exactly_one_error_line_as_a_user_sees_it(ws, results, name, argv, expected, unprivileged):
    outcome = results[0][name]
    assert (outcome["code"], outcome["stdout"]) == (2, ""), outcome
    assert outcome["stderr"] == place(expected, ws, name, usage=usage(argv)) + "\n"


def test_no_case_changed_an_input_or_left_an_output(ws, results):
    assert digest(ws) == results[1]
    assert not any((ws / "out").iterdir()) and not any((ws / "cwd").iterdir()) and not any((ws / "read-only").iterdir())


def test_every_command_of_the_parser_has_cases_here_and_in_the_matrix():
    commands = commands_of_the_parser()
    assert len(commands) >= 11 and "unlearn bsn" in commands
    assert {command_of(argv) for _, argv, _, _ in CASES if argv} == commands
    assert {command_of(argv) for _, argv, _ in MATRIX} == commands
    assert len(CASES) >= 30 and sum(unprivileged for *_, unprivileged in CASES) >= 6


def test_a_plain_process_prints_what_the_forked_one_does(ws, results):
    """The fork skips the interpreter's start and the imports: a plain ``python -m unmemorize`` shows their output too."""
    for name in ("collect-data-missing",):
        argv = next(argv for case, argv, _, _ in CASES if case == name)
        plain = subprocess.run([sys.executable, "-m", "unmemorize", *[a.format(ws=ws) for a in argv]], capture_output=True, text=True,
                               cwd=ws / "cwd", stdin=subprocess.DEVNULL, timeout=120,
                               env={**os.environ, **environment(ws), "OMP_NUM_THREADS": "1"})
        assert (plain.returncode, plain.stderr, plain.stdout) == (2, results[0][name]["stderr"], ""), plain.stderr

"""--resume proven, not assumed: a resumed run counts only the windows after its checkpoint (and says
how many it skipped), every setting a checkpoint records is refused by name when it differs, and a
SIGKILL at each step of a checkpoint's write still resumes to the factors of an uninterrupted run."""

from __future__ import annotations

import json
import shutil
import signal

import pytest
import torch

from conftest import start_paused
from unmemorize.cli import main
from unmemorize.curvature import load_factors
from unmemorize.tiny import save_tiny_lm, write_corpus

COMMON = ["--seq-len", "32", "--max-tokens", "3000", "--batch-size", "4", "--no-progress"]  # 94 windows, rounds of 4


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    save_tiny_lm(root / "llama", "llama", seed=0)
    save_tiny_lm(root / "llama-other", "llama", seed=1)
    write_corpus(root / "clean.txt", documents=300)
    write_corpus(root / "other.txt", documents=200, seed=1)
    argv = ["collect", "--model", str(root / "llama"), "--data", str(root / "clean.txt"), "--out", str(root / "whole"), *COMMON,
            "--checkpoint-every", "0"]
    assert main(argv) == 0
    return root


def argv_for(ws, out, *extra, data="clean.txt", model="llama"):
    return ["collect", "--model", str(ws / model), "--data", str(ws / data), "--out", str(out), *COMMON, "--checkpoint-every", "256",
            *extra]


def spy_windows(monkeypatch) -> list[int]:
    """The index of every window that goes through a forward and backward, in order."""
    from unmemorize.curvature import collect as module

    seen: list[int] = []
    real = module._Collection._step

    def step(self, recorder, batch, indices):
        seen.extend(indices)
        return real(self, recorder, batch, indices)

    monkeypatch.setattr(module._Collection, "_step", step)
    return seen


def interrupt_at(monkeypatch, point: str, at: int) -> None:
    """Ctrl-C at the ``at``-th passage of a checkpoint's fault point (in this process)."""
    from unmemorize.curvature import checkpoint as module

    passages = []

    def fault(name):
        if name == point:
            passages.append(name)
            if len(passages) == at:
                raise KeyboardInterrupt

    monkeypatch.setattr(module, "_fault_point", fault)


def windows_of(ws, data="clean.txt") -> list[list[int]]:
    from unmemorize.data import iter_windows, list_data_files
    from unmemorize.tiny import make_tokenizer

    return list(iter_windows(list_data_files(ws / data), make_tokenizer(), 32, 3000))


def test_a_resumed_run_counts_only_the_windows_after_its_checkpoint_and_records_what_it_skipped(ws, tmp_path, monkeypatch, capsys):
    """A --resume that silently started again from window 0 would count windows 0..W-1 twice: the spy sees it."""
    total = len(windows_of(ws))
    out = tmp_path / "run"
    seen = spy_windows(monkeypatch)
    with monkeypatch.context() as interrupted:
        interrupt_at(interrupted, "checkpoint-saved", 3)
        assert main(argv_for(ws, out)) == 130
    state = json.loads((tmp_path / ".run.checkpoint" / "state.json").read_text())
    skipped = state["windows"]
    assert 0 < skipped < total and seen[:skipped] == list(range(skipped))
    seen.clear()
    capsys.readouterr()
    assert main([*argv_for(ws, out), "--resume"]) == 0
    assert seen == list(range(skipped, total))  # only the windows after the checkpoint, each once
    tokens = sum(len(w) for w in windows_of(ws)[:skipped])
    factors = load_factors(out)
    assert factors.metadata["resume_skipped"] == {"passes": 0, "windows": skipped, "tokens": tokens} and factors.metadata["resumed"]
    err = capsys.readouterr().err
    assert (f"resuming from the checkpoint: 0 of 1 pass(es) done, then {skipped} windows ({tokens} tokens) of pass 1 already "
            "counted and skipped") in err
    assert f"over 3000 tokens ({total} windows, read ahead in " in err  # the read ahead's count, said before the work
    assert factors.metadata["data"]["read_ahead"]["windows"] == total and factors.metadata["data"]["read_ahead"]["tokens"] == 3000
    whole = load_factors(ws / "whole")
    assert factors.num_positions == whole.num_positions
    for name in whole.modules:  # the same sums added in the same order: bit for bit
        assert torch.equal(factors.activation[name], whole.activation[name]) and torch.equal(factors.gradient[name], whole.gradient[name])
    assert load_factors(ws / "whole").metadata["resume_skipped"] == {"passes": 0, "windows": 0, "tokens": 0}


@pytest.fixture(scope="module")
def interrupted(ws):
    """The checkpoint of a run stopped after its 2nd checkpoint (copied by each test that uses it)."""
    out = ws / "interrupted"
    with pytest.MonkeyPatch.context() as patch:
        interrupt_at(patch, "checkpoint-saved", 2)
        assert main(argv_for(ws, out)) == 130
    return ws / ".interrupted.checkpoint"


SETTINGS = [  # (setting, what the resumed run changes) -- every setting the command line can change
    ("targets", ["--layers", "0"]),
    ("weights", ["--model", "{ws}/llama-other"]),
    ("model_dtype", ["--model-dtype", "bfloat16"]),
    ("text_field", ["--text-field", "body"]),
    ("fisher", ["--fisher", "empirical"]),
    ("seed", ["--seed", "1"]),
    ("seq_len", ["--seq-len", "16"]),
    ("max_tokens", ["--max-tokens", "2999"]),
    ("accumulation_dtype", ["--dtype", "float64"]),
    ("modules_per_pass", ["--modules-per-pass", "2"]),
    ("data", ["--data", "{ws}/other.txt"]),
]


@pytest.mark.parametrize("setting, change", SETTINGS, ids=[s for s, _ in SETTINGS])
def test_a_checkpoint_made_with_other_settings_is_refused_naming_the_setting(ws, interrupted, tmp_path, capsys, setting, change):
    out = tmp_path / "interrupted"
    checkpoint = shutil.copytree(interrupted, tmp_path / ".interrupted.checkpoint")
    before = {p.name: p.read_bytes() for p in checkpoint.iterdir()}
    capsys.readouterr()
    assert main([*argv_for(ws, out), *[c.format(ws=ws) for c in change], "--resume"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1 and f"was made with other settings: its {setting} (" in errors[0], errors
    assert {p.name: p.read_bytes() for p in checkpoint.iterdir()} == before and not out.exists()  # the checkpoint is kept as it was


def test_every_recorded_setting_is_checked_including_those_the_command_line_cannot_change_on_this_machine(ws, interrupted):
    """device_type (a CUDA run resumed on the CPU) and objective (images vs text) refused by name; the list
    above covers every other key of the settings a checkpoint records."""
    from unmemorize.curvature.checkpoint import Checkpoint
    from unmemorize.errors import UnmemorizeError

    saved = json.loads((interrupted / "state.json").read_text())["settings"]
    assert set(saved) == {s for s, _ in SETTINGS} | {"device_type", "objective"}
    for key, other in (("device_type", "cuda"), ("objective", "image_classification")):
        with pytest.raises(UnmemorizeError, match=f"its {key} \\("):
            Checkpoint(interrupted, {**saved, key: other}).load()
    assert Checkpoint(interrupted, saved).load()["windows"] > 0  # control: the same settings load


@pytest.mark.parametrize("point, damage", [("checkpoint-sums-written", None), ("checkpoint-state-written", "truncate-state"),
                                           ("checkpoint-sums-written", "truncate-sums")],
                         ids=["after-sums-before-state", "mid-state-before-rename", "mid-sums-file"])
def test_sigkill_during_a_checkpoint_write_then_resume_gives_the_uninterrupted_factors(ws, tmp_path, point, damage):
    """Killed while writing its 3rd checkpoint: after the new sums file, or with the new state.json.tmp written
    but not renamed. A kill in the middle of a file leaves what the 'mid-' cases make of it after the kill: the
    new file cut short while state.json still names the previous, complete sums."""
    out = tmp_path / "killed"
    argv = argv_for(ws, out)
    child = start_paused(argv, point, 3, tmp_path)
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=60)
    checkpoint = tmp_path / ".killed.checkpoint"
    state = json.loads((checkpoint / "state.json").read_text())
    assert state["serial"] == 2 and (checkpoint / "sums-000003.safetensors").is_file()  # the 3rd was being written
    if damage == "truncate-sums":
        new = checkpoint / "sums-000003.safetensors"
        new.write_bytes(new.read_bytes()[: new.stat().st_size // 2])
    if damage == "truncate-state":
        tmp = checkpoint / "state.json.tmp"
        tmp.write_bytes(tmp.read_bytes()[: tmp.stat().st_size // 2])
    assert main([*argv, "--resume"]) == 0
    resumed, whole = load_factors(out), load_factors(ws / "whole")
    assert resumed.metadata["resume_skipped"]["windows"] == state["windows"] > 0
    for name in whole.modules:
        assert torch.equal(resumed.activation[name], whole.activation[name]) and torch.equal(resumed.gradient[name], whole.gradient[name])
    assert not checkpoint.exists()


def test_a_damaged_sums_file_that_the_state_names_is_refused_with_what_to_do(ws, interrupted, tmp_path, capsys):
    """What no kill can leave (the sums are fsync'd before state.json names them), but a disk can: refused by name,
    never read as zeros, and not followed by 'checkpoint kept: rerun with --resume'."""
    checkpoint = shutil.copytree(interrupted, tmp_path / ".interrupted.checkpoint")
    named = checkpoint / json.loads((checkpoint / "state.json").read_text())["sums"]
    named.write_bytes(named.read_bytes()[: named.stat().st_size // 2])
    capsys.readouterr()
    assert main([*argv_for(ws, tmp_path / "interrupted"), "--resume"]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip() and not line.startswith("collecting ")]
    assert len(lines) == 1 and f"checkpoint {named} is unreadable" in lines[0] and "delete the checkpoint to start over" in lines[0], lines

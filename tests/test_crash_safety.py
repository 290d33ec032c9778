"""Kills, interrupts, concurrent runs, full disks and the umask: no run can lose data or leave debris.

A real ``unmemorize`` process is stopped at a named point of its work (``_atomic._fault_point``:
with UNMEMORIZE_FAULT_PAUSE set it writes a file and waits), then killed or interrupted; the
checks are on the file system afterwards and on a rerun.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import start_paused as paused
from unmemorize._atomic import claim_output
from unmemorize.cli import main
from unmemorize.curvature import load_factors
from unmemorize.errors import UnmemorizeError
from unmemorize.tiny import save_tiny_lm, write_corpus


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    root = tmp_path_factory.mktemp("crash")
    save_tiny_lm(root / "llama", "llama", seed=0)
    write_corpus(root / "clean.txt", documents=150)
    assert main(["collect", "--model", str(root / "llama"), "--data", str(root / "clean.txt"), "--out", str(root / "factors"),
                 "--seq-len", "32", "--max-tokens", "1500", "--no-progress"]) == 0
    return root


def collect_argv(ws, out):
    return ["collect", "--model", str(ws / "llama"), "--data", str(ws / "clean.txt"), "--out", str(out), "--seq-len", "32",
            "--max-tokens", "1500", "--no-progress", "--modules-per-pass", "2"]


def edit_argv(ws, out, rho="0.8", *extra):
    return ["edit", "--model", str(ws / "llama"), "--factors", str(ws / "factors"), "--out", str(out), "--rho", rho, *extra]


def start_paused(argv, point, tmp_path):
    """``unmemorize argv`` stopped at fault point ``point`` (conftest's, one thread, its first passage)."""
    return paused(argv, point, 1, tmp_path, threads=1)


def debris(out):
    """Hidden siblings of ``out`` that only a run writing it creates: temp folders, old copies, the lock."""
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


def test_decompose_waits_for_no_one_and_cannot_race_a_collect_replacing_its_factor_folder(ws, tmp_path, capsys):
    """decompose writes its cache inside the factor folder: while a collect --overwrite of that folder runs, it is
    refused at once (it used to read the old files as they were replaced, a traceback, or cache the wrong factors)."""
    out = tmp_path / "factors"
    assert main(collect_argv(ws, out)) == 0
    child = start_paused([*collect_argv(ws, out), "--overwrite"], "shard-written", tmp_path)
    capsys.readouterr()
    assert main(["decompose", "--factors", str(out)]) == 2
    assert f"another unmemorize run (pid {child.pid} on " in capsys.readouterr().err and not any(p.name.startswith("eigen") for p in out.iterdir())
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=60)
    assert main(["decompose", "--factors", str(out)]) == 0  # control: once the writer is gone, it runs


def test_sigkill_during_a_sharded_collect_then_a_rerun_succeeds_and_cleans_up(ws, tmp_path, capsys):
    out = tmp_path / "factors"
    child = start_paused(collect_argv(ws, out), "shard-written", tmp_path)
    assert any(name.startswith(f".{out.name}.tmp-") for name in debris(out)) and not out.exists()
    # a concurrent run writing the same output fails at once, before any work
    assert main(collect_argv(ws, out)) == 2
    assert "another unmemorize run (pid " in capsys.readouterr().err
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=60)
    left = debris(out)  # what the kill left: the temp folder, and the checkpoint of the finished first pass
    assert any(name.startswith(f".{out.name}.tmp-") for name in left) and f".{out.name}.checkpoint" in left
    assert main(collect_argv(ws, out)) == 2  # a rerun never discards a checkpoint silently
    assert "pass --resume to continue it" in capsys.readouterr().err
    assert main([*collect_argv(ws, out), "--resume"]) == 0
    assert debris(out) == [] and load_factors(out).num_positions == load_factors(ws / "factors").num_positions


@pytest.mark.parametrize("sig, code, word", [(signal.SIGTERM, 143, "terminated"), (signal.SIGINT, 130, "interrupted"),
                                             (signal.SIGHUP, 129, "hung up (SIGHUP)")])
def test_sigterm_and_ctrl_c_print_one_line_exit_with_their_code_and_leave_nothing(ws, tmp_path, sig, code, word):
    out = tmp_path / "factors"
    child = start_paused(collect_argv(ws, out), "shard-written", tmp_path)
    child.send_signal(sig)
    _, err = child.communicate(timeout=60)
    lines = [line for line in err.splitlines() if line.startswith("unmemorize")]
    assert child.returncode == code and lines == [f"unmemorize: {word}; no partial output was left"], err
    assert "Traceback" not in err and not out.exists()
    # the finished first pass is kept for --resume (and said so); nothing else is left
    assert f"checkpoint kept in {out.parent / ('.' + out.name + '.checkpoint')}: rerun with --resume" in err
    assert debris(out) == [f".{out.name}.checkpoint"]


def test_a_hangup_that_nohup_ignores_stays_ignored():
    """Under ``nohup`` SIGHUP is ignored and a run must survive the terminal closing: no handler replaces SIG_IGN."""
    from unmemorize.cli import _install_handlers, _on_signal

    before = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        previous = _install_handlers()
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN and signal.SIGHUP not in previous
        assert signal.getsignal(signal.SIGTERM) is _on_signal
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
        previous = _install_handlers()  # the negative control: with the default disposition the handler goes in
        assert signal.getsignal(signal.SIGHUP) is _on_signal
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    finally:
        signal.signal(signal.SIGHUP, before)


def test_sigkill_during_an_edit_save_then_a_rerun_succeeds_and_cleans_up(ws, tmp_path):
    out = tmp_path / "edited"
    child = start_paused(edit_argv(ws, out), "edit-weights-written", tmp_path)
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=60)
    assert not out.exists() and any(name.startswith(f".{out.name}.tmp-") for name in debris(out))
    assert main(edit_argv(ws, out)) == 0
    assert debris(out) == [] and (out / "model.safetensors").is_file()


def test_an_overwrite_killed_between_its_two_renames_is_finished_by_the_next_claim(ws, tmp_path):
    out = tmp_path / "edited"
    assert main(edit_argv(ws, out, "0.9")) == 0
    child = start_paused(edit_argv(ws, out, "0.5", "--overwrite"), "between-renames", tmp_path)
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=60)
    assert not out.exists()  # the gap: the old copy set aside, the new one complete beside it
    names = debris(out)
    assert any(n.startswith(f".{out.name}.old-") for n in names) and any(n.startswith(f".{out.name}.tmp-") for n in names)
    with claim_output(out, overwrite=True):  # any run that writes this output resolves the gap first
        pass
    record = json.loads((out / "unmemorize_edit.json").read_text())
    assert {m["rho"] for m in record["modules"].values()} == {0.5} and debris(out) == []


def test_sigterm_between_an_overwrites_two_renames_finishes_the_swap_so_its_message_is_true(ws, tmp_path):
    """SIGTERM (or Ctrl-C) is a Python exception, raised where the run is: between the renames it used to leave
    --out missing while saying 'no partial output was left'. The swap is finished first."""
    out = tmp_path / "edited"
    assert main(edit_argv(ws, out, "0.9")) == 0
    child = start_paused(edit_argv(ws, out, "0.5", "--overwrite"), "between-renames", tmp_path)
    child.send_signal(signal.SIGTERM)
    _, err = child.communicate(timeout=60)
    assert child.returncode == 143 and err.strip().splitlines()[-1] == "unmemorize: terminated; no partial output was left", err
    record = json.loads((out / "unmemorize_edit.json").read_text())
    assert {m["rho"] for m in record["modules"].values()} == {0.5} and debris(out) == []


def test_an_interrupted_overwrite_without_a_complete_new_copy_is_rolled_back(tmp_path):
    out = tmp_path / "result"
    out.mkdir()
    (out / ".unmemorize-output.json").write_text("{}")
    (out / "value.txt").write_text("old")
    # the state after a kill between the renames of a swap whose new copy never got its marker
    out.rename(tmp_path / ".result.old-1-abc")
    (tmp_path / ".result.tmp-xyz").mkdir()
    (tmp_path / ".result.tmp-xyz" / "value.txt").write_text("half")
    with pytest.raises(UnmemorizeError, match="already exists"):
        with claim_output(out):
            pass
    assert (out / "value.txt").read_text() == "old" and debris(out) == []


def test_output_folders_honour_the_umask(ws, tmp_path):
    previous = os.umask(0o027)
    try:
        assert main(edit_argv(ws, tmp_path / "edited")) == 0
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "edited").stat().st_mode) == 0o750
    assert stat.S_IMODE((tmp_path / "edited" / "model.safetensors").stat().st_mode) == 0o640


def test_a_full_disk_gives_one_error_and_no_partial_output(ws, tmp_path, capsys, monkeypatch):
    import unmemorize.curvature.factors as factors_module

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "factors"))

    monkeypatch.setattr(factors_module, "save_file", full_disk)
    out = tmp_path / "factors"
    assert main([*collect_argv(ws, out), "--checkpoint-every", "0"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("unmemorize")]
    assert err == [f"unmemorize: error: no space left on the device ({tmp_path / 'factors'}); nothing was written"]
    assert not out.exists() and debris(out) == []


def test_without_flock_an_exclusive_claim_file_stands_in_and_says_how_to_clear_it(tmp_path, monkeypatch):
    """Some cluster file systems refuse flock (ENOLCK, EOPNOTSUPP): the claim is then an O_EXCL file."""
    import errno
    import fcntl

    from unmemorize.errors import UnmemorizeError

    def no_flock(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_flock)
    out = tmp_path / "factors"
    claim = tmp_path / ".factors.claim"
    with claim_output(out):
        assert claim.is_file() and f"pid {os.getpid()}" in claim.read_text()
        assert not (tmp_path / ".factors.lock").exists()
        other = subprocess.run([sys.executable, "-c", "import errno, fcntl, sys\n"
                                "def no(fd, op): raise OSError(errno.ENOLCK, 'No locks available')\n"
                                "fcntl.flock = no\n"
                                "from unmemorize._atomic import claim_output\n"
                                "from unmemorize.errors import UnmemorizeError\n"
                                "try:\n    claim_output(sys.argv[1]).__enter__()\nexcept UnmemorizeError as e:\n    print(e)\n",
                                str(out)], capture_output=True, text=True, timeout=60)
        assert "is writing" in other.stdout and "if that run is gone, remove it" in other.stdout and str(claim) in other.stdout
    assert not claim.exists()  # released with the claim
    claim.write_text("pid 1 on a-crashed-node")  # a holder that died: the claim stays, and the refusal says what to do
    with pytest.raises(UnmemorizeError, match=r"another unmemorize run \(pid 1 on a-crashed-node\).*remove it"):
        with claim_output(out):
            pass


def test_a_symlink_planted_at_the_lock_name_is_refused_not_written_through(tmp_path):
    from unmemorize.errors import UnmemorizeError

    victim = tmp_path / "someone-elses-file.txt"
    victim.write_text("precious")
    (tmp_path / ".factors.lock").symlink_to(victim)
    with pytest.raises(UnmemorizeError, match="is a symbolic link; remove it"):
        with claim_output(tmp_path / "factors"):
            pass
    assert victim.read_text() == "precious"


def test_the_signal_tests_pass_when_the_suite_runs_with_sigint_ignored(tmp_path):
    """``make test &``, ``nohup`` and many CI runners start the suite with SIGINT ignored: the Ctrl-C test
    must still pass (its child starts with default handlers), with no terminal and stdin closed."""
    def ignore_sigint():
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(Path(__file__)), "-k", "ctrl_c and interrupted",
                             "--basetemp", str(tmp_path / "inner")], capture_output=True, text=True, timeout=300,
                            stdin=subprocess.DEVNULL, preexec_fn=ignore_sigint, cwd=Path(__file__).parent.parent)
    assert result.returncode == 0 and "1 passed" in result.stdout, result.stdout[-3000:]

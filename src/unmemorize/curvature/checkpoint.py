"""Crash-safe collection: partial sums, counts and the data position, written atomically.

A collection writing ``OUT`` keeps its checkpoint in the hidden sibling ``.OUT.checkpoint/``:

    state.json                 settings (what a resume must match), pass index, windows consumed,
                               counted positions, tokens, the tensor file of the current sums,
                               the files of finished passes
    sums-<n>.safetensors       the current pass's partial sums of a a^T (per owner) and g g^T,
                               float32/float64 as accumulated, all ranks already reduced into them
    pass-<k>.safetensors       the normalized factors of each finished pass

A save writes the new sums file, then replaces ``state.json`` in one rename, then removes the
old sums file: at every instant ``state.json`` names a complete file. Every file is fsync'd before
the rename that publishes it, and the folder after it, so a node that crashes (not only a killed
process) never leaves a ``state.json`` naming sums that are not on disk. The sampler state is the
data position itself (labels are seeded per window), so ``--resume`` after a SIGKILL gives the
factors of an uninterrupted run. A checkpoint made with other settings (model weights, model dtype,
device type, data, targets, seed, Fisher type, windowing, accumulation dtype, passes) is refused,
naming the first setting that differs.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from .._atomic import _fault_point
from ..errors import UnmemorizeError
from ..jsonio import write_json

CHECKPOINT_VERSION = 1


class UnusableCheckpoint(UnmemorizeError):
    """A checkpoint this run may not continue (other settings, other data, unreadable): its message says what to do."""


def checkpoint_folder(out: str | Path) -> Path:
    path = Path(os.path.abspath(out))
    return path.with_name(f".{path.name}.checkpoint")


class Checkpoint:
    """The checkpoint of one collection run (see module docstring)."""

    def __init__(self, folder: Path, settings: dict):
        self.folder = Path(folder)
        self.settings = settings
        self.state: dict | None = None

    def exists(self) -> bool:
        return (self.folder / "state.json").is_file()

    def load(self) -> dict:
        """The saved state, after checking it was made with these settings."""
        try:
            state = json.loads((self.folder / "state.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise UnusableCheckpoint(f"checkpoint {self.folder} is unreadable ({exc}); delete it to start over") from None
        if not isinstance(state, dict):
            raise UnusableCheckpoint(f"checkpoint {self.folder}/state.json is not a JSON object; delete the checkpoint to start over")
        if state.get("version") != CHECKPOINT_VERSION:
            raise UnusableCheckpoint(f"checkpoint {self.folder} has version {state.get('version')!r}; delete it to start over")
        saved = state.get("settings")
        if not isinstance(saved, dict):
            raise UnusableCheckpoint(f"checkpoint {self.folder}/state.json has no settings object; delete the checkpoint to start over")
        for key, value in self.settings.items():
            if saved.get(key) != value:
                raise UnusableCheckpoint(f"checkpoint {self.folder} was made with other settings: its {key} ({_short(saved.get(key))}) "
                                      f"differs from this run's ({_short(value)}); rerun with the same settings, or delete it to start over")
        for key, kind in (("unrouted", list), ("expert_positions", dict), ("shared", dict), ("windows_sha256", str)):
            if state.get(key) is not None and not isinstance(state[key], kind):
                raise UnusableCheckpoint(f"checkpoint {self.folder}/state.json: {key!r} is not a {kind.__name__}; "
                                         "delete the checkpoint to start over")
        for key in ("serial", "pass", "passes_done", "windows", "positions", "tokens", "num_positions", "pass_tokens"):
            if key in state and not (isinstance(state[key], int) and not isinstance(state[key], bool) and state[key] >= 0):
                raise UnusableCheckpoint(f"checkpoint {self.folder}/state.json: {key!r} is {state[key]!r}, not a count; "
                                      "delete the checkpoint to start over")
        if state.get("sums") is not None and not (isinstance(state["sums"], str) and Path(state["sums"]).name == state["sums"]
                                                   and (self.folder / state["sums"]).is_file()):
            raise UnusableCheckpoint(f"checkpoint {self.folder}/state.json names sums {state['sums']!r}, which is not a file of it; "
                                  "delete the checkpoint to start over")
        if state.get("sums"):  # its header read now (cheap): a damaged file is refused before any work, not mid-resume
            try:
                with safe_open(str(self.folder / state["sums"]), "pt") as handle:
                    handle.keys()
            except (SafetensorError, OSError) as exc:
                raise UnusableCheckpoint(f"checkpoint {self.folder / state['sums']} is unreadable ({exc}); delete the checkpoint "
                                         "to start over") from None
        self.state = state
        return state

    def sums(self) -> dict[str, torch.Tensor]:
        name = self.state.get("sums") if self.state else None
        if not name:
            return {}
        try:
            return load_file(str(self.folder / name))
        except (SafetensorError, OSError) as exc:
            raise UnusableCheckpoint(f"checkpoint {self.folder / name} is unreadable ({exc}); delete the checkpoint to start over") from None

    def finished_pass(self, index: int) -> tuple[dict, dict]:
        tensors = load_file(str(self.folder / f"pass-{index + 1:05d}.safetensors"))
        activation = {k[:-2]: v for k, v in tensors.items() if k.endswith(".A")}
        gradient = {k[:-2]: v for k, v in tensors.items() if k.endswith(".G")}
        return activation, gradient

    def save(self, state: dict, sums: dict[str, torch.Tensor]) -> None:
        """Write the current pass's sums and the state; ``state`` holds pass, windows, positions, tokens."""
        self.folder.mkdir(parents=True, exist_ok=True)
        previous = (self.state or {}).get("sums")
        serial = int((self.state or {}).get("serial", 0)) + 1
        name = f"sums-{serial:06d}.safetensors" if sums else None
        if sums:
            save_file({k: v.detach().cpu().contiguous() for k, v in sums.items()}, str(self.folder / name))
            fsync_path(self.folder / name)
            _fault_point("checkpoint-sums-written")  # crash tests: killed before state.json names the new sums
        record = {**(self.state or {}), **state, "version": CHECKPOINT_VERSION, "settings": self.settings, "serial": serial, "sums": name}
        tmp = self.folder / "state.json.tmp"
        write_json(tmp, record, indent=1)
        fsync_path(tmp)
        _fault_point("checkpoint-state-written")  # and with the new state written, before the rename publishes it
        os.replace(tmp, self.folder / "state.json")
        fsync_path(self.folder)  # the rename itself
        self.state = record
        if previous and previous != name:
            (self.folder / previous).unlink(missing_ok=True)
        _fault_point("checkpoint-saved")

    def save_finished_pass(self, index: int, activation: dict, gradient: dict, state: dict) -> None:
        """A finished pass's normalized factors; the next pass starts from empty sums."""
        self.folder.mkdir(parents=True, exist_ok=True)
        tensors = {f"{n}.A": t.contiguous() for n, t in activation.items()} | {f"{n}.G": t.contiguous() for n, t in gradient.items()}
        save_file(tensors, str(self.folder / f"pass-{index + 1:05d}.safetensors"))
        fsync_path(self.folder / f"pass-{index + 1:05d}.safetensors")
        self.save({**state, "passes_done": index + 1}, {})

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def fsync_path(path: Path) -> None:
    """Flush a file's (or a folder's entries') data to the disk."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _short(value) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."

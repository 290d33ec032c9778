"""Shared by the collect-scale benchmarks (collect_ideal.py, collect_peers.py, collect_slice.py, collect_gloo.py).

Moved unchanged from the former ``benchmarks/collect_scale.py``: the model sizes (``SCALE``: full
and quick; ``SLICE``: a 7B-shaped decoder layer), the Llama builder, random token batches,
``collect`` (``collect_factors`` with a config from the batches), timing that waits for a quiet
machine and redoes disturbed runs (``timed_clean``), relative error, the git state recorded with
each result, and the seconds format of the results tables. Each benchmark writes its own section
of ``docs/results/benchmarks/results-collect.md`` and its key of ``results-collect.json``
(``_report.update``).
"""

from __future__ import annotations

import gc
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(HERE))

import torch  # noqa: E402

from _report import ForeignLoad, log, wait_for_quiet  # noqa: E402
from unmemorize.curvature import CollectConfig, collect_factors  # noqa: E402

# name: (model shape, batch size, seq len, timed batches)
SCALE = {
    "full": dict(model=dict(hidden=512, intermediate=1376, layers=4, heads=8, vocab=4096), batch=8, seq=256, batches=12, peer_batches=8),
    "quick": dict(model=dict(hidden=128, intermediate=344, layers=2, heads=4, vocab=1024), batch=4, seq=64, batches=3, peer_batches=2),
}
SLICE = dict(hidden=4096, intermediate=11008, heads=32, vocab=32000)


def build_llama(hidden, intermediate, layers, heads, vocab, seq_len=512, dtype=torch.float32, seed=0):
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers, num_attention_heads=heads,
                         num_key_value_heads=heads, vocab_size=vocab, max_position_embeddings=max(seq_len, 128),
                         tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config, dtype=dtype).eval()


def token_batches(count, batch, seq, vocab, seed):
    generator = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        ids = torch.randint(3, vocab, (batch, seq), generator=generator)
        out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    return out


def collect(model, batches, targets, fisher, dtype="float32"):
    config = CollectConfig(fisher=fisher, seq_len=batches[0]["input_ids"].shape[1], batch_size=batches[0]["input_ids"].shape[0],
                           max_tokens=None, dtype=dtype, progress=False)
    return collect_factors(model, batches, targets, config)


def timed(fn, *args):
    gc.collect()
    start = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - start, result


CLEAN = 0.05  # a run is clean when other processes used under 5% of the CPUs meanwhile


def timed_clean(fn, *args, attempts: int = 3) -> tuple[float, float | None, object]:
    """Wait for a quiet machine, then time ``fn``; again (up to ``attempts`` runs) while other
    processes used more than CLEAN of the CPUs meanwhile. Returns the least disturbed run's
    seconds, the foreign load during it, and its result."""
    best = None
    for _ in range(attempts):
        wait_for_quiet(CLEAN)
        with ForeignLoad() as load:
            seconds, result = timed(fn, *args)
        if best is None or (load.fraction or 0.0) < (best[1] or 0.0):
            best = (seconds, load.fraction, result)
        if load.fraction is None or load.fraction < CLEAN:
            break
        log(f"  disturbed run ({seconds:.1f} s, other processes {load.fraction:.0%}): again")
    return best


def relative_error(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    theirs = theirs.double()
    return float(torch.linalg.norm(ours.double() - theirs) / torch.linalg.norm(theirs))


def git_state() -> dict:
    def git(*args):
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout

    dirty = [line[3:] for line in git("status", "--porcelain", "--", "src/unmemorize").splitlines() if line.strip()]
    return {"head": git("rev-parse", "--short", "HEAD").strip(), "uncommitted_in_src": dirty}


def fmt_s(seconds: float) -> str:
    return f"{seconds:.2f} s" if seconds < 100 else f"{seconds:.0f} s"


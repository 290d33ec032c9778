"""Shared fixtures: tiny random-init models (milliseconds) and the brute-force K-FAC oracle.

Tests marked ``@pytest.mark.slow`` (registered in pyproject.toml) are skipped unless the
environment has UNMEMORIZE_SLOW=1, as ``make test-all`` sets it.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent / "oracles"))
pytest_plugins = ["pytester"]  # test_slow_marker.py runs pytest on a generated test file

from unmemorize.data import pad_batch  # noqa: E402
from unmemorize.tiny import build_tiny_lm  # noqa: E402


SLOW_SKIP_REASON = "slow test: run it with UNMEMORIZE_SLOW=1 (make test-all)"


def pytest_collection_modifyitems(config, items):
    """Skip ``@pytest.mark.slow`` tests unless UNMEMORIZE_SLOW=1."""
    if os.environ.get("UNMEMORIZE_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason=SLOW_SKIP_REASON)
    for item in items:
        if item.get_closest_marker("slow") is not None:
            item.add_marker(skip)


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual.double() - expected.double()).norm() / expected.double().norm())


@pytest.fixture(scope="session")
def shared_testbed_cache(tmp_path_factory) -> Path:
    """One UNMEMORIZE_CACHE for the tests that only read the quick testbed: it is trained once per session
    (tests that scramble its files work on copies; tests of training itself use their own folders)."""
    return tmp_path_factory.mktemp("testbed-cache")


@pytest.fixture
def tiny_lm():
    """Factory: ``tiny_lm("llama"|"gpt2"|"gpt_neox", dtype=torch.float64)`` -> (model, tokenizer)."""

    def build(family: str = "llama", dtype: torch.dtype = torch.float64, seed: int = 0, **kwargs):
        return build_tiny_lm(family, seed=seed, dtype=dtype, **kwargs)

    return build


_PAUSED: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def _no_paused_child_outlives_its_test():
    """A test that fails between ``start_paused`` and its kill would leave the child waiting forever."""
    yield
    while _PAUSED:
        child = _PAUSED.pop()
        if child.poll() is None:
            child.kill()
            child.wait(timeout=30)


def default_signals():
    """In a child, before exec: the signals whose behaviour is tested start with their default handlers,
    however the suite was launched (a background job or nohup inherits SIGINT ignored, and Python then
    installs no KeyboardInterrupt handler)."""
    import signal

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)


def start_paused(argv, point, at, tmp_path, threads: int | None = None):
    """``unmemorize ARGV`` in a child paused at the ``at``-th passage of fault point ``point`` (``_atomic._fault_point``),
    with default signal handlers and stdin closed; killed after the test if it is still there. ``threads``: its torch
    threads (default this process's: its partial sums must then be bitwise what this process would add)."""
    reached = tmp_path / f"reached-{point}"
    env = {**os.environ, "UNMEMORIZE_FAULT_PAUSE": point, "UNMEMORIZE_FAULT_FILE": str(reached), "UNMEMORIZE_FAULT_AT": str(at),
           "OMP_NUM_THREADS": str(threads or torch.get_num_threads())}
    child = subprocess.Popen([sys.executable, "-m", "unmemorize", *argv], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             stdin=subprocess.DEVNULL, preexec_fn=default_signals)
    _PAUSED.append(child)
    deadline = time.monotonic() + 180
    while not reached.exists():
        if child.poll() is not None or time.monotonic() > deadline:
            child.kill()
            raise AssertionError(f"child never reached {point} #{at}: {child.stderr.read()[-2000:]}")
        time.sleep(0.05)
    return child


def random_sequences(lengths, vocab: int, seed: int = 0) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab, (n,), generator=generator).tolist() for n in lengths]


@contextmanager
def capture_module_io(model, module_names):
    """Record each module's (input, output) of one forward pass, with ``retain_grad`` on the output."""
    modules = dict(model.named_modules())
    captured = {}

    def keep(inputs, output, name):
        output.retain_grad()
        captured[name] = (inputs[0], output)

    handles = [modules[n].register_forward_hook(lambda m, i, o, n=n: keep(i, o, n)) for n in module_names]
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def brute_force_factors(model, sequences, module_names, labels=None):
    """A, G by definition, one unpadded sequence at a time, with explicit per-position loops.

    For every sequence: forward, L = sum_t CE(logits_t, label_t) over t = 0..len-2, autograd
    (``retain_grad`` on each module output), then A += a_t a_t^T and G += g_t g_t^T for each
    counted t. ``labels[k]`` are the labels of sequence k (default: gold next tokens).
    """
    flags = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(True)
    sums_a = {n: 0 for n in module_names}
    sums_g = {n: 0 for n in module_names}
    count = 0
    try:
        for k, sequence in enumerate(sequences):
            ids = torch.tensor([sequence])
            with capture_module_io(model, module_names) as captured:
                logits = model(input_ids=ids).logits[0, :-1].double()
            target = torch.tensor(labels[k]) if labels is not None else ids[0, 1:]
            loss = torch.nn.functional.cross_entropy(logits, target, reduction="sum")
            model.zero_grad()
            loss.backward()
            for n in module_names:
                a, out = captured[n]
                for t in range(len(sequence) - 1):
                    sums_a[n] = sums_a[n] + torch.outer(a[0, t].double(), a[0, t].double()).detach()
                    sums_g[n] = sums_g[n] + torch.outer(out.grad[0, t].double(), out.grad[0, t].double())
            count += len(sequence) - 1
    finally:
        for p, flag in zip(model.parameters(), flags):
            p.requires_grad_(flag)
        model.zero_grad(set_to_none=True)
    return {n: (sums_a[n] / count, sums_g[n] / count) for n in module_names}


def batches_of(sequences, batch_size: int):
    return [pad_batch(sequences[i : i + batch_size]) for i in range(0, len(sequences), batch_size)]


def shuffle_words(path: Path, rng: random.Random) -> None:
    """Rewrite a text file as its words in a random order (the scramble of the 'choices never read it' tests)."""
    words = path.read_text().split()
    rng.shuffle(words)
    path.write_text(" ".join(words) + "\n")


def shuffle_jsonl(path: Path, rng: random.Random, keys: tuple[str, ...], keep=lambda row: True, edit=None) -> None:
    """Shuffle the lists under ``keys`` of every row of a .jsonl file that ``keep`` selects (``edit(row, rng)`` after)."""
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    for row in rows:
        if keep(row):
            for key in keys:
                if key in row:
                    rng.shuffle(row[key])
            if edit is not None:
                edit(row, rng)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


# ---------------------------------------------------------------------------------------------- the quotes world
QUOTES_WORDS = ("river stone light shadow garden window silver morning winter candle harbor meadow thunder lantern orchard "
                "whisper marble feather compass quiet golden hollow ember willow tide summit cedar velvet crimson echo").split()


def quotes_sentence(rng: random.Random, low: int = 6, high: int = 12) -> str:
    words = [rng.choice(QUOTES_WORDS) for _ in range(rng.randint(low, high))]
    return " ".join(words).capitalize() + "."


@pytest.fixture(scope="session")
def user_corpus(tmp_path_factory):
    """A folder of prose (two files, 240 paragraphs) and a quotes .jsonl of 40 random-word quotes."""
    rng = random.Random(7)
    root = tmp_path_factory.mktemp("corpus")
    for name in ("a.txt", "b.txt"):
        paragraphs = [" ".join(quotes_sentence(rng) for _ in range(rng.randint(3, 6))) for _ in range(120)]
        (root / "prose").mkdir(exist_ok=True)
        (root / "prose" / name).write_text("\n\n".join(paragraphs) + "\n")
    quotes = [{"body": quotes_sentence(rng, 10, 16), "author": f"Author {i}"} for i in range(40)]
    (root / "quotes.jsonl").write_text("".join(json.dumps(q) + "\n" for q in quotes))
    return root

"""Training the testbed: BPE tokenizer, Llama-style model, AdamW with weight decay, cache.

The trained testbed is a folder (``<cache>/testbed/<key>/``)::

    model/                      a normal Hugging Face model folder (weights, config, tokenizer)
    data/factors_mixture.txt    K-FAC factor data: the training mixture without memorized items
    data/factors_general.txt    K-FAC factor data: grammar text only
    data/heldout_tuning.txt     held-out general text for the sweep and label-free search
    data/heldout.txt            held-out general text for reported perplexity (disjoint from the above)
    data/memorized_tuning.jsonl, memorized_validation.jsonl, quotes.jsonl,
    data/control_sequences.jsonl, control_quotes.jsonl   prefix_ids / suffix_ids rows
    data/tasks.jsonl            task rows (task, category, prompt, answer)
    testbed.json                configs, cache key, loss curve, per-epoch task accuracy, wall time

The key is a hash of (generator version, testbed version, world config, training config): a
cached folder is reused only if it was produced by exactly this code and these settings.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .._atomic import atomic_dir
from ..jsonio import write_json
from ..errors import UnmemorizeError
from .world import (FACTOR_DATA, GENERATOR_VERSION, World, WorldConfig, build_world, evaluation_tasks, factor_documents, heldout_split,
                    training_documents)

TESTBED_VERSION = 3  # 3: tasks.jsonl reports rows held out only by string apart (``leaks.py``); the training is v2's
SPECIAL_TOKENS = ["<pad>", "<unk>", "<eos>"]


@dataclass
class TrainConfig:
    """Model and optimisation of the testbed (recorded in testbed.json and the cache key)."""

    vocab_size: int = field(default=1024, metadata={"help": "BPE vocabulary size (digits are always single tokens)."})
    hidden_size: int = field(default=192, metadata={"help": "Model width."})
    intermediate_size: int = field(default=512, metadata={"help": "Gated-MLP width (gate/up/down, as in OLMo-2)."})
    layers: int = field(default=4, metadata={"help": "Transformer blocks."})
    heads: int = field(default=4, metadata={"help": "Attention heads."})
    seq_len: int = field(default=128, metadata={"help": "Training window length in tokens."})
    batch_size: int = field(default=32, metadata={"help": "Windows per optimiser step."})
    epochs: int = field(default=8, metadata={"help": "Passes over freshly generated epochs of the world."})
    learning_rate: float = field(default=2e-3, metadata={"help": "Peak AdamW learning rate (cosine decay to 10%)."})
    warmup_steps: int = field(default=50, metadata={"help": "Linear warm-up steps."})
    weight_decay: float = field(default=0.1, metadata={"help": "AdamW weight decay (the paper: separation grows with it)."})
    bf16: bool = field(default=False, metadata={"help": "bf16 autocast for matmuls: about 3x faster on CPUs with AMX, but "
                                                       "32x slower without bf16 instructions (AMD EPYC here: 32 s vs 1.0 s a step)."})
    seed: int = field(default=0, metadata={"help": "Seed of initialisation and data order."})
    experts: int = field(default=0, metadata={"help": "0: the dense Llama MLP. N > 0: a Mixtral-style mixture of N experts "
                                                     "(attention unchanged), top-k routed, each expert intermediate_size / k wide "
                                                     "(the dense model's active width), with Mixtral's load-balancing loss."})
    experts_per_token: int = field(default=2, metadata={"help": "With --experts: experts each token is routed to (top-k)."})
    router_aux_loss: float = field(default=0.01, metadata={"help": "With --experts: weight of the load-balancing loss in training."})


QUICK_WORLD = dict(memorized_sequences=20, sequence_words=12, quotes=10, controls=10, repeats_per_epoch=30, people=20,
                   fact_documents_per_person=4, clean_documents=600, openbook_examples=300, arithmetic_examples=400,
                   boolean_examples=200, copy_documents=100, eval_examples=20, heldout_documents=100, factor_documents=300)
QUICK_TRAIN = dict(vocab_size=400, hidden_size=64, intermediate_size=128, layers=2, heads=2, seq_len=64, batch_size=16, epochs=3,
                   warmup_steps=10, learning_rate=3e-3)


def quick_configs(seed: int = 0) -> tuple[WorldConfig, TrainConfig]:
    """A tiny world and model that train in seconds: checks the pipeline's structure, not the science."""
    return WorldConfig(seed=seed, **QUICK_WORLD), TrainConfig(seed=seed, **QUICK_TRAIN)


def _train_record(train: TrainConfig) -> dict:
    """The training settings a cache key hashes: a dense testbed's key ignores the experts' settings (so it is the
    key it had before the mixture-of-experts variant existed)."""
    record = asdict(train)
    if not train.experts:
        for name in ("experts", "experts_per_token", "router_aux_loss"):
            record.pop(name)
    return record


def cache_key(world: WorldConfig, train: TrainConfig) -> str:
    blob = json.dumps({"generator": GENERATOR_VERSION, "testbed": TESTBED_VERSION, "world": asdict(world), "train": _train_record(train)},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def cache_root() -> Path:
    return Path(os.environ.get("UNMEMORIZE_CACHE", Path.home() / ".cache" / "unmemorize"))


def testbed_dir(world: WorldConfig, train: TrainConfig) -> Path:
    return cache_root() / "testbed" / cache_key(world, train)


def train_tokenizer(documents: list[str], vocab_size: int):
    """A BPE tokenizer over the generated corpus; Metaspace word boundaries, single-digit numbers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE(unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Metaspace(), pre_tokenizers.Digits(individual_digits=True)])
    core.decoder = decoders.Metaspace()
    core.train_from_iterator(documents, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False))
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", unk_token="<unk>", eos_token="<eos>", bos_token="<eos>")


def build_model(config: TrainConfig, vocab_size: int):
    """The dense Llama testbed model, or with ``config.experts`` its Mixtral twin (the same attention, a routed MLP)."""
    from transformers import LlamaConfig, LlamaForCausalLM, MixtralConfig, MixtralForCausalLM

    torch.manual_seed(config.seed)
    shared = dict(vocab_size=vocab_size, hidden_size=config.hidden_size, num_hidden_layers=config.layers,
                  num_attention_heads=config.heads, num_key_value_heads=config.heads, max_position_embeddings=max(256, config.seq_len),
                  tie_word_embeddings=False, pad_token_id=0, bos_token_id=2, eos_token_id=2, attention_dropout=0.0)
    if config.experts:
        if not 1 <= config.experts_per_token <= config.experts:
            raise UnmemorizeError(f"--experts-per-token must be between 1 and --experts ({config.experts}), got {config.experts_per_token}")
        return MixtralForCausalLM(MixtralConfig(**shared, intermediate_size=config.intermediate_size // config.experts_per_token,
                                                num_local_experts=config.experts, num_experts_per_tok=config.experts_per_token,
                                                router_aux_loss_coef=config.router_aux_loss,
                                                sliding_window=None))
    return LlamaForCausalLM(LlamaConfig(**shared, intermediate_size=config.intermediate_size))


def _windows(documents: list[str], tokenizer, seq_len: int, rng: random.Random) -> torch.Tensor:
    """Documents tokenized, each followed by EOS, packed into (num_windows, seq_len) in shuffled order."""
    eos = tokenizer.eos_token_id
    stream: list[int] = []
    for ids in tokenizer(documents, add_special_tokens=False)["input_ids"]:
        stream.extend(ids)
        stream.append(eos)
    count = len(stream) // seq_len
    windows = torch.tensor(stream[: count * seq_len]).view(count, seq_len)
    order = list(range(count))
    rng.shuffle(order)
    return windows[order]


def _memorization_rows(items, tokenizer, mode: str, prefix_tokens: int = 12, suffix_tokens: int = 16) -> list[dict]:
    """prefix_ids/suffix_ids rows; sequences: EOS + 12 tokens -> next 16; quotes: all but the last 8 -> last 8."""
    rows = []
    for item in items:
        ids = [tokenizer.eos_token_id] + tokenizer(item.text, add_special_tokens=False)["input_ids"]
        if mode == "sequence":
            prefix, suffix = ids[: 1 + prefix_tokens], ids[1 + prefix_tokens : 1 + prefix_tokens + suffix_tokens]
        else:
            prefix, suffix = ids[:-8], ids[-8:]
        rows.append({"text": item.text, "prefix_ids": prefix, "suffix_ids": suffix})
    return rows


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def write_data(folder: Path, world: World, tokenizer, epochs: int) -> dict:
    """Every data file of ``folder/data`` from the world and the trained tokenizer (deterministic); returns the
    leak scan of the evaluation rows (``leaks.scan_world``: the ``epochs`` training epochs the model saw, the factor
    data and the held-out text), whose rows held out by string but not by meaning are written apart
    (``leaks.split_by_meaning``)."""
    from .leaks import scan_world, split_by_meaning

    data = folder / "data"
    data.mkdir(parents=True, exist_ok=True)
    for kind in FACTOR_DATA:
        (data / f"factors_{kind}.txt").write_text("\n".join(factor_documents(world, kind)) + "\n")
    tuning, reported = heldout_split(world)
    (data / "heldout_tuning.txt").write_text("\n".join(tuning) + "\n")
    (data / "heldout.txt").write_text("\n".join(reported) + "\n")
    prefix = world.config.sequence_words // 2
    for name, split, mode in (("memorized_tuning", "tuning", "sequence"), ("memorized_validation", "validation", "sequence"),
                              ("quotes", "quotes", "quote")):
        _write_jsonl(data / f"{name}.jsonl", _memorization_rows(world.memorized(split), tokenizer, mode, prefix))
    controls = [item for item in world.sequences if item.split == "control"]
    _write_jsonl(data / "control_sequences.jsonl", _memorization_rows(controls, tokenizer, "sequence", prefix))
    _write_jsonl(data / "control_quotes.jsonl", _memorization_rows([q for q in world.quotes if q.split == "control"], tokenizer, "quote"))
    rows = evaluation_tasks(world)
    scan = scan_world(world, epochs)
    _write_jsonl(data / "tasks.jsonl", split_by_meaning(rows, scan))
    return scan.to_dict()


def _learning_rate(step: int, total: int, config: TrainConfig) -> float:
    if step < config.warmup_steps:
        return config.learning_rate * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, total - config.warmup_steps)
    return config.learning_rate * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def _task_accuracies(model, tokenizer, rows: list[dict]) -> dict:
    """Accuracy per task at the end of an epoch: a learning curve, logged only (no choice reads it)."""
    from ..evaluate import evaluate_tasks

    model.eval()
    scored = evaluate_tasks(model, tokenizer, rows)
    model.train()
    return {"tasks": {name: round(score.accuracy, 4) for name, score in scored.tasks.items()}}


def fit(model, epoch_windows, total_steps: int, config: TrainConfig, progress: bool = True, after_epoch=None,
        pad_id: int | None = None, last_partial_batch: bool = False) -> tuple[list[dict], int, int]:
    """AdamW (betas 0.9/0.95, ``config.weight_decay``, gradient norm clipped at 1) over ``config.epochs`` epochs of
    ``epoch_windows(epoch)`` -- a (windows, seq_len) tensor of token ids in training order -- ``config.batch_size``
    windows a step, warm-up then cosine decay (``_learning_rate``), at most ``total_steps`` steps; ``after_epoch(epoch,
    step)`` runs after each epoch. ``pad_id``: positions holding it (right padding) get no loss. ``last_partial_batch``:
    an epoch's last, smaller batch is trained too (else dropped). Returns (loss log every 50 steps, steps, tokens)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay, betas=(0.9, 0.95))
    device = next(model.parameters()).device  # windows are moved to the model's device, a batch at a time
    model.train()
    routing = {"output_router_logits": True} if config.experts else {}  # training only: the load-balancing loss joins the loss
    log, step, tokens = [], 0, 0
    ema = None
    bar = tqdm(total=total_steps, desc="train testbed", unit="step", disable=not progress, dynamic_ncols=True)
    for epoch in range(config.epochs):
        windows = epoch_windows(epoch)
        last = len(windows) if last_partial_batch else len(windows) - config.batch_size + 1
        for index in range(0, last, config.batch_size):
            if step >= total_steps:
                break
            batch = windows[index : index + config.batch_size].to(device)
            labels = batch if pad_id is None else batch.masked_fill(batch == pad_id, -100)
            for group in optimizer.param_groups:
                group["lr"] = _learning_rate(step, total_steps, config)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.bf16):
                loss = model(input_ids=batch, labels=labels, **routing).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            step += 1
            tokens += batch.numel() if pad_id is None else int((batch != pad_id).sum())
            value = loss.item()
            ema = value if ema is None else 0.98 * ema + 0.02 * value
            if step % 50 == 0 or step == total_steps:
                log.append({"step": step, "epoch": epoch, "loss_ema": round(ema, 4)})
            bar.update(1)
            bar.set_postfix(loss=f"{ema:.3f}", epoch=epoch, refresh=False)
        if after_epoch is not None:
            model.eval()
            after_epoch(epoch, step)
            model.train()
    bar.close()
    model.eval()
    return log, step, tokens


def train_testbed(world_config: WorldConfig | None = None, train_config: TrainConfig | None = None, out: Path | None = None,
                  progress: bool = True, overwrite: bool = False) -> Path:
    """Generate the world, train tokenizer and model, write the testbed folder; returns it."""
    world_config, train_config = world_config or WorldConfig(), train_config or TrainConfig()
    out = Path(out) if out is not None else testbed_dir(world_config, train_config)
    start = time.perf_counter()
    world = build_world(world_config)
    first_epoch = training_documents(world, 0)
    tokenizer = train_tokenizer(first_epoch, train_config.vocab_size)  # training text only: never the held-out text
    model = build_model(train_config, len(tokenizer))
    rng = random.Random(f"order-{train_config.seed}")
    steps_per_epoch = len(_windows(first_epoch, tokenizer, train_config.seq_len, rng)) // train_config.batch_size
    total_steps = steps_per_epoch * train_config.epochs
    task_rows = evaluation_tasks(world)
    task_curve: list[dict] = []

    def epoch_windows(epoch: int) -> torch.Tensor:
        return _windows(first_epoch if epoch == 0 else training_documents(world, epoch), tokenizer, train_config.seq_len, rng)

    def after_epoch(epoch: int, step: int) -> None:
        task_curve.append({"epoch": epoch, "step": step, **_task_accuracies(model, tokenizer, task_rows)})
        if progress:
            tqdm.write(f"epoch {epoch}: task accuracy {task_curve[-1]['tasks']}")

    log, step, tokens = fit(model, epoch_windows, total_steps, train_config, progress, after_epoch)
    model.eval()
    seconds = time.perf_counter() - start
    info = {
        "key": cache_key(world_config, train_config), "generator_version": GENERATOR_VERSION, "testbed_version": TESTBED_VERSION,
        "world": asdict(world_config), "train": asdict(train_config), "parameters": sum(p.numel() for p in model.parameters()),
        "steps": step, "tokens": tokens, "seconds": round(seconds, 1), "loss_curve": log,
        "task_curve": task_curve,
    }
    with atomic_dir(out, overwrite=True if overwrite or not out.exists() else overwrite) as tmp:
        model.save_pretrained(tmp / "model", safe_serialization=True)
        tokenizer.save_pretrained(tmp / "model")
        info["leak_scan"] = write_data(tmp, world, tokenizer, train_config.epochs)
        write_json(tmp / "testbed.json", info)
    return out


def materialize_shipped(record: dict, world_config: WorldConfig, out: Path) -> Path:
    """A shipped testbed (``shipped.py``) made a cache folder: model files checked and copied, data regenerated."""
    from transformers import PreTrainedTokenizerFast

    from .shipped import copy_model

    world = build_world(world_config)
    with atomic_dir(out, overwrite=True) as tmp:
        copy_model(record, tmp / "model")
        tokenizer = PreTrainedTokenizerFast.from_pretrained(str(tmp / "model"))
        info = {**record["testbed"], "key": record["key"], "testbed_version": TESTBED_VERSION,
                "source": f"shipped: {record['folder']} (sha256 checked); trained by '{record['command']}'"}
        info["leak_scan"] = write_data(tmp, world, tokenizer, record["testbed"]["train"]["epochs"])
        write_json(tmp / "testbed.json", info)
    return out


def load_or_train(world_config: WorldConfig | None = None, train_config: TrainConfig | None = None, progress: bool = True,
                  retrain: bool = False) -> Path:
    """The cached testbed folder for these configs; if the cache lacks it, the shipped model with this key
    (``shipped.py``) made one, else a training. ``retrain``: train from scratch whatever exists."""
    from .shipped import shipped_testbed

    world_config, train_config = world_config or WorldConfig(), train_config or TrainConfig()
    folder = testbed_dir(world_config, train_config)
    if retrain:
        return train_testbed(world_config, train_config, folder, progress, overwrite=True)
    if (folder / "testbed.json").is_file():
        return folder
    record = shipped_testbed(cache_key(world_config, train_config))
    if record is not None:
        if progress:
            print(f"testbed: the shipped model {record['folder']} (key {record['key']}; 'unmemorize testbed train --retrain' "
                  "trains one instead)", flush=True)
        return materialize_shipped(record, world_config, folder)
    return train_testbed(world_config, train_config, folder, progress, overwrite=True)

"""A tiny built-in model and corpus: random-init Hugging Face models with a word-level tokenizer.

Used by ``unmemorize demo`` (until the trained testbed exists) and by the tests. Nothing is
downloaded: the tokenizer is built by ``tokenizers`` from a fixed word list, the model from a
transformers config with a seeded random init.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch

WORDS = (
    "the a one some every small large red blue old new quick lazy happy "
    "cat dog bird fish tree house river city king queen child teacher "
    "runs sees likes finds takes makes eats holds walks sings "
    "near under over with from into and but because then . ,"
).split()


def make_tokenizer():
    """A word-level ``PreTrainedTokenizerFast`` over ``WORDS`` plus <pad>, <unk>, <eos>."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(["<pad>", "<unk>", "<eos>", *WORDS])}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", unk_token="<unk>", eos_token="<eos>")


def tiny_config(family: str = "llama", vocab_size: int = len(WORDS) + 3, hidden: int = 32, layers: int = 2):
    """A transformers config for a tiny causal LM of the given family (llama, gpt2, gpt_neox, olmoe: 4 experts, top-2)."""
    from transformers import GPT2Config, GPTNeoXConfig, LlamaConfig, OlmoeConfig

    common = dict(vocab_size=vocab_size, bos_token_id=2, eos_token_id=2, pad_token_id=0)
    if family == "llama":
        return LlamaConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers, num_attention_heads=2,
                           num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=False, **common)
    if family == "gpt2":
        return GPT2Config(n_embd=hidden, n_layer=layers, n_head=2, n_positions=128, resid_pdrop=0.0, embd_pdrop=0.0,
                          attn_pdrop=0.0, **common)
    if family == "gpt_neox":
        return GPTNeoXConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers, num_attention_heads=2,
                             max_position_embeddings=128, **common)
    if family == "olmoe":
        return OlmoeConfig(hidden_size=hidden, intermediate_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                           num_key_value_heads=2, num_experts=4, num_experts_per_tok=2, max_position_embeddings=128, **common)
    raise ValueError(f"unknown tiny family {family!r}")


def build_tiny_lm(family: str = "llama", seed: int = 0, dtype: torch.dtype = torch.float32, **config_kwargs):
    """(model, tokenizer): a seeded random-init causal LM in eval mode, eager attention."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    config = tiny_config(family, **config_kwargs)
    config._attn_implementation = "eager"
    model = AutoModelForCausalLM.from_config(config, dtype=dtype).eval()
    return model, make_tokenizer()


def save_tiny_lm(out: str | Path, family: str = "llama", seed: int = 0) -> Path:
    model, tokenizer = build_tiny_lm(family, seed)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return Path(out)


def write_corpus(path: str | Path, documents: int = 200, seed: int = 0) -> Path:
    """A .txt file of random sentences over ``WORDS``, one document per line."""
    rng = random.Random(seed)
    content = WORDS[:-2]
    lines = [" ".join(rng.choice(content) for _ in range(rng.randint(5, 30))) + " ." for _ in range(documents)]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def write_mc_task(folder: str | Path, rows: int = 24, seed: int = 0) -> Path:
    """A local lm-evaluation-harness task, ``tiny_mc``: multiple choice over ``WORDS`` (``mc.jsonl`` and
    ``tiny_mc.yaml`` in ``folder``), for ``unmemorize eval --include-path folder`` without any download."""
    import json

    folder = Path(folder)
    rng = random.Random(seed)
    content = WORDS[:-2]
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "mc.jsonl", "w") as out:
        for _ in range(rows):
            out.write(json.dumps({"query": " ".join(rng.choice(content) for _ in range(6)),
                                  "choices": [rng.choice(content) for _ in range(4)], "gold": rng.randrange(4)}) + "\n")
    (folder / "tiny_mc.yaml").write_text(
        f"task: tiny_mc\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {folder / 'mc.jsonl'}\ntest_split: test\n"
        "metadata:\n  version: 1.0\noutput_type: multiple_choice\ndoc_to_text: \"{{query}}\"\ndoc_to_choice: choices\n"
        "doc_to_target: gold\nmetric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n")
    return folder

"""A zoo of tiny random-init decoder models, one per architecture family unmemorize supports.

``FAMILIES`` maps a transformers ``model_type`` to the few config values that make a tiny model of
it (hidden 32, 2 blocks, 128 tokens; experts 4, top-2). The zoo test (``tests/test_zoo.py``) runs
collect -> decompose -> edit -> save -> reload with plain transformers on every one, and the
supported-architecture table of the docs is generated from this list and the targets each model
gets (``supported_table``). Nothing is downloaded: configs are built in code.
"""

from __future__ import annotations

COMMON = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
              vocab_size=128, max_position_embeddings=64, pad_token_id=0, bos_token_id=1, eos_token_id=2)
_GPT = dict(n_embd=32, n_layer=2, n_head=4, n_positions=64, vocab_size=128, bos_token_id=1, eos_token_id=2)
_EXPERTS = dict(num_local_experts=4, num_experts_per_tok=2)

FAMILIES: dict[str, dict] = {
    "llama": {}, "mistral": {}, "mixtral": _EXPERTS,
    "qwen2": {}, "qwen2_moe": dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16, shared_expert_intermediate_size=48),
    "qwen3": dict(head_dim=8), "qwen3_moe": dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16, head_dim=8),
    "gemma": dict(head_dim=8), "gemma2": dict(head_dim=8), "gemma3_text": dict(head_dim=8),
    "olmo": {}, "olmo2": {}, "olmo3": {}, "olmoe": dict(num_experts=4, num_experts_per_tok=2),
    "phi": {}, "phi3": {}, "gpt2": _GPT, "gpt_neox": {}, "gptj": dict(_GPT, rotary_dim=4),
    "falcon": {}, "starcoder2": {}, "stablelm": {}, "cohere": {}, "granite": {}, "granitemoe": _EXPERTS, "smollm3": {},
    "deepseek_v3": dict(num_key_value_heads=4, n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=16, n_shared_experts=1, first_k_dense_replace=1,
                        kv_lora_rank=8, q_lora_rank=16, qk_rope_head_dim=4, qk_nope_head_dim=4, v_head_dim=8, n_group=1, topk_group=1),
    "gpt_oss": dict(_EXPERTS, head_dim=8, sliding_window=16),
}


def tiny_config(model_type: str):
    """The tiny config of one family (see module docstring)."""
    from transformers import AutoConfig

    extra = FAMILIES[model_type]
    base = {} if "n_embd" in extra else COMMON
    return AutoConfig.for_model(model_type, **{**base, **extra})


def tiny_model(model_type: str, seed: int = 0):
    """A tiny random-init causal LM of one family, in eval mode."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(tiny_config(model_type)).eval()


def supported_table() -> str:
    """The docs' architecture table: per family, its class, what the default targets are, and routers left alone."""
    from ..matrices import model_matrices
    from ..targets import resolve_targets, untouched

    rows = ["| model_type | class | default targets per block | kinds | left untouched |", "|---|---|---|---|---|"]
    for model_type in FAMILIES:
        model = tiny_model(model_type)
        matrices = model_matrices(model)
        targets = resolve_targets(model)
        last = max(int(n.split(".")[2]) for n in targets if n.split(".")[2].isdigit()) if targets else 0
        block = [n for n in targets if f".{last}." in n]
        shorts = sorted({n.split(f".{last}.", 1)[1].replace(".0.", ".*.", 1) if matrices[n].kind == "expert" else n.split(f".{last}.", 1)[1]
                         for n in block if matrices[n].kind != "expert" or matrices[n].expert == 0})
        kinds = ", ".join(sorted({matrices[n].kind for n in targets}))
        left = "; ".join(k.split(".*.", 1)[-1] + f" ({v.split(':')[0]})" for k, v in untouched(model, targets).items()) or "-"
        rows.append(f"| `{model_type}` | {type(model).__name__} | {', '.join(f'`{s}`' for s in shorts)} | {kinds} | {left} |")
    return "\n".join(rows)

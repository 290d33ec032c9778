"""Batched greedy decoding with the KV cache, for any Hugging Face causal LM.

Prompts of different lengths share a batch by **left** padding: row r of a batch of width T
holds ``pad_id`` at t < T - len(p_r) and the prompt after it, with attention mask m (1 = real).
Position ids are taken from the mask, p_t = max(cumsum(m)_t - 1, 0), so each prompt's tokens
sit at positions 0..len(p_r)-1 whatever its padding (absolute position embeddings, as in GPT-2,
would otherwise shift). Each step appends the argmax token x_{t+1} = argmax_v logits_t[v] at
position len(p_r) + step and a 1 to the mask, and feeds only that token with the cache.

Some attention kernels turn a fully masked row (a padding query) into NaN, which then leaks
into real positions through 0 * NaN in the attention product (transformers' eager attention on
a float64 model softmaxes its float64 mask minimum in float32, i.e. -inf). A batch with NaN
logits is therefore decoded again without padding, one group of equal-length prompts at a
time; NaN logits without padding are an error.

Decoding never stops early: every prompt gets exactly ``max_new_tokens`` new ids, EOS included
if the model picks it (the memorization metric compares fixed-length continuations). We do not
call ``model.generate``: its stopping rules and generation-config handling vary across
transformers versions.
"""

from __future__ import annotations

import inspect

import torch

from ..errors import UnmemorizeError


def model_device(model) -> torch.device:
    """The device of the model's first parameter (where inputs must go)."""
    return next(model.parameters()).device


def check_token_ids(model, sequences: list[list[int]], what: str = "prompt", new_tokens: int = 0) -> None:
    """Every id must index the model's input embedding, and every sequence (with the ``new_tokens``
    generated after it) fit the model's positions: past them GPT-2 fails with an IndexError and a
    rotary model scores positions it never saw, in silence. Errors name the first bad sequence."""
    from ..models import model_limits

    vocab, positions = model_limits(model)
    for k, sequence in enumerate(sequences):
        if not sequence:
            raise UnmemorizeError(f"{what} {k} is empty; every {what} needs at least one token")
        low, high = min(sequence), max(sequence)
        if low < 0 or (vocab is not None and high >= vocab):
            raise UnmemorizeError(f"{what} {k} holds token id {low if low < 0 else high}, outside the model's "
                                  f"vocabulary of {vocab}; were these ids made with another tokenizer?")
        if positions is not None and len(sequence) + new_tokens > positions:
            after = f" and the {new_tokens} tokens generated after it" if new_tokens else ""
            raise UnmemorizeError(f"{what} {k} has {len(sequence)} tokens{after}: more than the model's {positions} positions; "
                                  "shorten it (or the window length)")


def _forward_keywords(model) -> tuple[str, dict]:
    """(name of the cache argument, extra kwargs): transformers >= 5.x calls it ``cache``."""
    parameters = inspect.signature(model.forward).parameters
    cache_name = "cache" if "cache" in parameters else "past_key_values"
    extra = {"logits_to_keep": 1} if "logits_to_keep" in parameters else {}
    return cache_name, extra


def _returned_cache(output):
    cache = output.get("cache") if hasattr(output, "get") else None
    if cache is None:
        cache = getattr(output, "past_key_values", None)
    return cache


def _greedy_batch(model, prompts: list[list[int]], max_new_tokens: int, pad_id: int) -> list[list[int]]:
    """Greedy ids for one left-padded batch; see the module doc for the NaN fallback."""
    tokens, no_nan = _greedy_left_padded(model, prompts, max_new_tokens, pad_id)
    if no_nan:
        return tokens
    lengths = sorted({len(p) for p in prompts})
    if len(lengths) == 1:
        raise UnmemorizeError("the model produced NaN logits on unpadded prompts; are its weights finite?")
    for length in lengths:  # equal lengths need no padding
        members = [k for k, p in enumerate(prompts) if len(p) == length]
        for k, row in zip(members, _greedy_batch(model, [prompts[k] for k in members], max_new_tokens, pad_id)):
            tokens[k] = row
    return tokens


def _greedy_left_padded(model, prompts: list[list[int]], max_new_tokens: int, pad_id: int) -> tuple[list[list[int]], bool]:
    """(greedy ids, whether no step's logits held NaN) for one left-padded batch."""
    device = model_device(model)
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):  # left padding: the prompt ends at column width - 1
        ids[row, width - len(prompt):] = torch.tensor(prompt, dtype=torch.long)
        mask[row, width - len(prompt):] = 1
    ids, mask = ids.to(device), mask.to(device)
    positions = (mask.cumsum(-1) - 1).clamp_min(0)  # (B, T)
    cache_name, extra = _forward_keywords(model)

    output = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, **extra)
    no_nan = ~output.logits[:, -1].isnan().any()  # stays on the device: no sync per step
    next_token = output.logits[:, -1].argmax(-1)  # (B,)
    cache = _returned_cache(output)
    new_tokens = [next_token]
    last_position = positions[:, -1:]  # (B, 1): len(p_r) - 1
    for _ in range(max_new_tokens - 1):
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)  # (B, T + step)
        last_position = last_position + 1
        if cache is None:  # a model without a cache: recompute the whole sequence
            ids = torch.cat([ids, next_token[:, None]], dim=1)
            positions = torch.cat([positions, last_position], dim=1)
            output = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False, **extra)
        else:
            output = model(input_ids=next_token[:, None], attention_mask=mask, position_ids=last_position,
                           use_cache=True, **{cache_name: cache}, **extra)
            cache = _returned_cache(output)
        no_nan = no_nan & ~output.logits[:, -1].isnan().any()
        next_token = output.logits[:, -1].argmax(-1)
        new_tokens.append(next_token)
    return torch.stack(new_tokens, dim=1).tolist(), bool(no_nan)  # (B, max_new_tokens)


def greedy_continuations(model, prompts: list[list[int]], max_new_tokens: int, pad_id: int,
                         batch_size: int = 64) -> list[list[int]]:
    """Exactly ``max_new_tokens`` greedy ids after each prompt, in the order of ``prompts``.

    Prompts are sorted by length before batching (less padding) and the results put back in
    the original order. ``pad_id`` fills the left padding; any id in the vocabulary works, since
    padded positions are masked out.
    """
    if max_new_tokens < 0:
        raise UnmemorizeError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if batch_size < 1:
        raise UnmemorizeError(f"--batch-size must be at least 1, got {batch_size}")
    prompts = [list(p) for p in prompts]
    check_token_ids(model, prompts, new_tokens=max(0, max_new_tokens - 1))  # the last new token is never read back
    vocab = getattr(model.get_input_embeddings(), "num_embeddings", None)
    if pad_id < 0 or (vocab is not None and pad_id >= vocab):
        raise UnmemorizeError(f"pad_id {pad_id} is outside the model's vocabulary of {vocab}")
    if max_new_tokens == 0:
        return [[] for _ in prompts]
    order = sorted(range(len(prompts)), key=lambda k: len(prompts[k]))
    results: list[list[int]] = [[] for _ in prompts]
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            for k, tokens in zip(chunk, _greedy_batch(model, [prompts[k] for k in chunk], max_new_tokens, pad_id)):
                results[k] = tokens
    return results

"""Greedy decoding the slow, obviously correct way: the oracle for batched, padded, cached decoders."""

import torch


def naive_greedy(model, prompt: list[int], steps: int) -> list[int]:
    """One unpadded sequence, no cache: re-run the whole sequence and take the last argmax each step."""
    sequence = list(prompt)
    with torch.no_grad():
        for _ in range(steps):
            sequence.append(int(model(input_ids=torch.tensor([sequence])).logits[0, -1].argmax()))
    return sequence[len(prompt):]

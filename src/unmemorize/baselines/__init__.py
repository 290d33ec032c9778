"""Baselines the K-FAC edit is compared with: supervised unlearning methods that need a forget set.

    bsn.py         BalancedSubnet (Sakarvadia et al., ICLR 2025): learned per-weight masks over the
                   MLP matrices, forget-loss ascent balanced by retain-loss descent
    sequences.py   forget / retain sets from files, balanced batches (every batch holds forget examples)

Python API::

    from unmemorize.baselines import BSNConfig, balanced_subnet, load_token_set, save_bsn_model
    forget = load_token_set("memorized_tuning.jsonl", tokenizer)
    retain = load_token_set("clean.txt", tokenizer, seq_len=128, option="--retain")
    model, record = balanced_subnet(model, forget, retain, BSNConfig(ratio=0.01, alpha=0.7))  # in place
    save_bsn_model(model, "bsn-out", tokenizer, record)
"""

from .bsn import BSNConfig, BSNRecord, MaskedModule, balanced_subnet, lowest_k_mask, save_bsn_model
from .sequences import TokenSet, balanced_batches, load_token_set

__all__ = ["BSNConfig", "BSNRecord", "MaskedModule", "TokenSet", "balanced_batches", "balanced_subnet",
           "load_token_set", "lowest_k_mask", "save_bsn_model"]

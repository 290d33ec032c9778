"""Evaluation: does the edited model still recite memorized text, and what did the edit cost?

    metrics.py        strict / loose accuracy and normalized Levenshtein on token ids (the paper's)
    generate.py       batched greedy decoding with the KV cache and left padding, fixed length
    memorization.py   prefix -> suffix sets (.jsonl of ids or text) and their scores
    perplexity.py     exp(mean next-token NLL) on held-out windows, plus the paper code's variant
    tasks.py          local generative and multiple-choice task suites, accuracy per task/category

Everything works on any Hugging Face causal LM (``model(input_ids, attention_mask, ...).logits``).
"""

from .generate import greedy_continuations
from .memorization import MemorizationItem, evaluate_memorization, load_memorization_set
from .metrics import MemorizationScores, memorization_scores, retention, token_levenshtein
from .perplexity import PerplexityResult, perplexity, perplexity_of_file
from .tasks import TaskResults, TaskRow, TaskScore, answer_matches, evaluate_tasks, load_tasks

__all__ = [
    "MemorizationItem", "MemorizationScores", "PerplexityResult", "TaskResults", "TaskRow", "TaskScore",
    "answer_matches", "evaluate_memorization", "evaluate_tasks", "greedy_continuations", "load_memorization_set",
    "load_tasks", "memorization_scores", "perplexity", "perplexity_of_file", "retention", "token_levenshtein",
]

"""Evaluation: does the edited model still recite memorized text, and what did the edit cost?

    metrics.py        strict / loose accuracy and normalized Levenshtein on token ids (the paper's)
    generate.py       batched greedy decoding with the KV cache and left padding, fixed length
    memorization.py   prefix -> suffix sets (.jsonl of ids or text) and their scores
    perplexity.py     exp(mean next-token NLL) on held-out windows, plus the paper code's variant
    tasks.py          local generative and multiple-choice task suites, accuracy per task/category
    stress.py         the paper code's position-perturbation stress test
    coherence.py      nDCG@K of an edited model's next-token ranking against the baseline's top K
    attacks.py        attacks on an edit: relearning, extraction by sampling, a bf16 round trip
    membership.py     membership inference: loss, zlib, Min-K%, Min-K%++ scores, exact AUC, MUSE's PrivLeak
    checks.py         all of the above on one model folder (``StressJob``: what ``unmemorize stress`` runs)
    intervals.py      Wilson and bootstrap intervals, rank-correlation tests, mean +- std over seeds

Everything works on any Hugging Face causal LM (``model(input_ids, attention_mask, ...).logits``).
"""

from .attacks import ExtractionConfig, RelearnConfig, bf16_attack, bf16_round_trip, relearn, relearning_attack, sampled_extraction
from .checks import CheckRequest, StressJob, run_checks, run_stress_job
from .coherence import NDCGConfig, NDCGResult, ndcg, top_k_ids
from .generate import greedy_continuations
from .membership import MembershipScores, membership_scores, privacy_leak, roc_auc
from .memorization import MemorizationItem, evaluate_memorization, load_memorization_set
from .metrics import MemorizationScores, memorization_scores, retention, token_levenshtein
from .perplexity import PerplexityResult, perplexity, perplexity_of_file
from .stress import StressConfig, StressResult, stress_test
from .tasks import TaskResults, TaskRow, TaskScore, answer_matches, evaluate_tasks, load_tasks

__all__ = [
    "CheckRequest", "StressJob", "run_checks", "run_stress_job",
    "ExtractionConfig", "NDCGConfig", "NDCGResult", "RelearnConfig", "StressConfig", "StressResult", "bf16_attack", "bf16_round_trip",
    "ndcg", "relearn", "relearning_attack", "sampled_extraction", "stress_test", "top_k_ids",
    "MemorizationItem", "MemorizationScores", "PerplexityResult", "TaskResults", "TaskRow", "TaskScore",
    "answer_matches", "evaluate_memorization", "evaluate_tasks", "greedy_continuations", "load_memorization_set",
    "load_tasks", "MembershipScores", "membership_scores", "privacy_leak", "roc_auc", "memorization_scores", "perplexity", "perplexity_of_file", "retention", "token_levenshtein",
]

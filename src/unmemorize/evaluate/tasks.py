"""Small local task suites: generative (greedy answer) and multiple-choice (log-likelihood) rows.

A task file is .jsonl, one row per example, each naming its task and a category (the paper's
groups are "memorized", "math", "closed_book_qa", "open_book_qa", "logic"; any string works):

    {"task": "arithmetic", "category": "math", "prompt": "12 + 35 =", "answer": "47"}
    {"task": "boolq", "category": "open_book_qa", "prompt": "...", "choices": ["no", "yes"], "label": 1}

Text is tokenized with ``add_special_tokens=False`` (no BOS is added); prompt ids P = tok(prompt).

* Generative: greedily decode len(tok(" " + answer)) + 2 tokens after P, decode them with
  ``skip_special_tokens=True`` and strip leading whitespace: the row is correct iff that text
  starts with answer.strip() and the next character, if any, is not alphanumeric ("47." and
  "47 apples" match "47"; "470" does not).
* Choice: score_c = log p(C_c | P) = sum_k log softmax(logits_{|P|-1+k})[C_c,k] with
  C_c = tok(" " + choice_c) appended to P (a sum, not length-normalized); the prediction is
  argmax_c score_c (first on ties) and the row is correct iff it equals ``label``.

Task accuracy = correct rows / rows; category accuracy = mean of its tasks' accuracies.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..data import pad_batch, pad_token_id
from ..errors import UnmemorizeError
from .generate import check_token_ids, greedy_continuations, model_device
from .jsonl import read_jsonl

CATEGORIES = ("memorized", "math", "closed_book_qa", "open_book_qa", "logic")
EXTRA_ANSWER_TOKENS = 2  # generated beyond the answer's own length


@dataclass
class TaskRow:
    """One example: generative when ``answer`` is set, multiple-choice when ``choices``/``label`` are."""

    task: str
    category: str
    prompt: str
    answer: str | None = None
    choices: list[str] | None = None
    label: int | None = None
    where: str = ""  # "file:line" or "row k", for error messages

    @property
    def kind(self) -> str:
        return "generative" if self.answer is not None else "choice"


def parse_task_row(row: dict, where: str) -> TaskRow:
    """A validated ``TaskRow`` from one JSON object (see module doc for the two shapes)."""
    for field in ("task", "category", "prompt"):
        if not isinstance(row.get(field), str) or not row[field]:
            raise UnmemorizeError(f"{where}: {field!r} must be a non-empty string")
    common = dict(task=row["task"], category=row["category"], prompt=row["prompt"], where=where)
    if "answer" in row:
        if not isinstance(row["answer"], str) or not row["answer"].strip():
            raise UnmemorizeError(f"{where}: 'answer' must be a non-empty string")
        return TaskRow(answer=row["answer"], **common)
    if "choices" in row:
        choices, label = row["choices"], row.get("label")
        if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c for c in choices):
            raise UnmemorizeError(f"{where}: 'choices' must be a list of at least 2 non-empty strings")
        if not isinstance(label, int) or isinstance(label, bool) or not 0 <= label < len(choices):
            raise UnmemorizeError(f"{where}: 'label' must be an index into 'choices' (0..{len(choices) - 1})")
        return TaskRow(choices=list(choices), label=label, **common)
    raise UnmemorizeError(f"{where}: a task row needs 'answer' (generative) or 'choices' and 'label' (multiple choice)")


def load_tasks(path_or_rows: str | Path | list) -> list[TaskRow]:
    """Rows from a .jsonl file, or from a list of dicts / ``TaskRow``; all validated."""
    if isinstance(path_or_rows, (str, Path)):
        rows = [parse_task_row(row, where) for where, row in read_jsonl(path_or_rows, "task file")]
    else:
        rows = [row if isinstance(row, TaskRow) else parse_task_row(row, f"row {k}") for k, row in enumerate(path_or_rows)]
    if not rows:
        raise UnmemorizeError("no task rows to evaluate")
    categories: dict[str, str] = {}
    for row in rows:
        if categories.setdefault(row.task, row.category) != row.category:
            raise UnmemorizeError(f"{row.where}: task {row.task!r} has category {row.category!r} here but "
                                  f"{categories[row.task]!r} elsewhere; one task belongs to one category")
    return rows


def answer_matches(text: str, answer: str) -> bool:
    """text.lstrip() starts with answer.strip() and is not followed by an alphanumeric character."""
    text, answer = text.lstrip(), answer.strip()
    if not text.startswith(answer):
        return False
    rest = text[len(answer):]
    return not rest or not rest[0].isalnum()


def _ids(tokenizer, text: str, where: str) -> list[int]:
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    if not ids:
        raise UnmemorizeError(f"{where}: {text!r} tokenizes to no tokens")
    return ids



def generative_correct(model, tokenizer, rows: list[TaskRow], batch_size: int = 64) -> list[bool]:
    """Whether each generative row's greedy answer matches (see module doc), in row order."""
    prompts = [_ids(tokenizer, row.prompt, row.where) for row in rows]
    budgets = [len(_ids(tokenizer, " " + row.answer, row.where)) + EXTRA_ANSWER_TOKENS for row in rows]
    groups: dict[int, list[int]] = defaultdict(list)
    for k, budget in enumerate(budgets):
        groups[budget].append(k)
    correct = [False] * len(rows)
    for budget, members in groups.items():
        outputs = greedy_continuations(model, [prompts[k] for k in members], budget, pad_token_id(tokenizer), batch_size)
        for k, output in zip(members, outputs):
            correct[k] = answer_matches(tokenizer.decode(output, skip_special_tokens=True), rows[k].answer)
    return correct


def choice_log_likelihoods(model, prompt_ids: list[list[int]], continuation_ids: list[list[int]],
                           batch_size: int = 64) -> list[float]:
    """log p(continuation | prompt) = sum of the continuation tokens' log-probs, for each pair."""
    sequences = [p + c for p, c in zip(prompt_ids, continuation_ids)]
    check_token_ids(model, sequences, what="choice sequence")
    device = model_device(model)
    order = sorted(range(len(sequences)), key=lambda k: len(sequences[k]))
    scores = [0.0] * len(sequences)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            batch = pad_batch([sequences[k] for k in chunk])  # right padding: real positions unchanged
            logits = model(input_ids=batch["input_ids"].to(device),
                           attention_mask=batch["attention_mask"].to(device)).logits  # (B, T, V)
            for row, k in enumerate(chunk):
                first, count = len(prompt_ids[k]), len(continuation_ids[k])
                predicting = logits[row, first - 1:first - 1 + count]  # (count, V): predicts tokens first..
                predicting = predicting.to(torch.promote_types(predicting.dtype, torch.float32))
                targets = torch.tensor(continuation_ids[k], device=device)
                scores[k] = float(predicting.log_softmax(-1).gather(-1, targets[:, None]).sum())
    return scores


def choice_correct(model, tokenizer, rows: list[TaskRow], batch_size: int = 64) -> list[bool]:
    """Whether argmax_c log p(tok(" " + choice_c) | tok(prompt)) is each row's label, in row order."""
    owners, prompts, continuations = [], [], []
    for k, row in enumerate(rows):
        prompt = _ids(tokenizer, row.prompt, row.where)
        for choice in row.choices:
            owners.append(k)
            prompts.append(prompt)
            continuations.append(_ids(tokenizer, " " + choice, row.where))
    scores = choice_log_likelihoods(model, prompts, continuations, batch_size)
    per_row: list[list[float]] = [[] for _ in rows]
    for k, score in zip(owners, scores):
        per_row[k].append(score)
    return [max(range(len(s)), key=s.__getitem__) == row.label for s, row in zip(per_row, rows)]


@dataclass
class TaskScore:
    category: str
    accuracy: float
    n: int


@dataclass
class TaskResults:
    """Per task accuracy and n; per category the mean of its tasks' accuracies; per row, correct or not."""

    tasks: dict[str, TaskScore]
    categories: dict[str, float]
    correct: list[bool] = field(default_factory=list)  # in the order of the rows evaluated

    def to_dict(self) -> dict:
        return {"tasks": {name: asdict(score) for name, score in self.tasks.items()}, "categories": dict(self.categories)}


def evaluate_tasks(model, tokenizer, rows: str | Path | list, batch_size: int = 64) -> TaskResults:
    """Accuracy per task and per category of ``model`` on task rows (a path, dicts or ``TaskRow``s)."""
    rows = load_tasks(rows)
    generative = [k for k, row in enumerate(rows) if row.kind == "generative"]
    choice = [k for k, row in enumerate(rows) if row.kind == "choice"]
    correct = [False] * len(rows)
    if generative:
        for k, ok in zip(generative, generative_correct(model, tokenizer, [rows[k] for k in generative], batch_size)):
            correct[k] = ok
    if choice:
        for k, ok in zip(choice, choice_correct(model, tokenizer, [rows[k] for k in choice], batch_size)):
            correct[k] = ok
    by_task: dict[str, list[bool]] = defaultdict(list)
    for row, ok in zip(rows, correct):
        by_task[row.task].append(ok)
    category_of = {row.task: row.category for row in rows}
    tasks = {name: TaskScore(category_of[name], sum(oks) / len(oks), len(oks)) for name, oks in by_task.items()}
    by_category: dict[str, list[float]] = defaultdict(list)
    for score in tasks.values():
        by_category[score.category].append(score.accuracy)
    return TaskResults(tasks, {name: sum(accs) / len(accs) for name, accs in by_category.items()}, correct)

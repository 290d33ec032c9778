"""Evaluation rows that training saw by *meaning*, not by string: a scan and a relabelling.

The testbed holds each evaluation row out of training by its string (``world.py``; the exact
rule of ``tests/test_testbed.py``: the row's ``prompt + " " + answer`` occurs in no training,
factor or held-out document). A row can still be trained by meaning: its problem, written
another way, is a training example with the same answer. This module checks exactly two
equivalences (``EQUIVALENCES``):

1. **addition commutes**: ``a + b reversed =`` means ``b + a reversed =`` (operands compared as
   integers). Subtraction does not commute: ``a - b`` and ``b - a`` are different problems.
2. **negated constants** in a boolean expression: ``not true`` means ``false`` and ``not false``
   means ``true`` (rewritten token-wise, repeated until nothing changes, so ``not not true`` ->
   ``not false`` -> ``true``).

Not checked (``NOT_CHECKED``), so a row marked clean may still be trained by one of them:
commutation, associativity and distributivity of ``and``/``or``, De Morgan's laws, folding a
sub-expression to its value (``( true and false )`` -> ``false``), different problems with the
same answer (``47 + 38`` and ``40 + 45``), ``a - b`` against ``a + (-b)`` or any other rewriting
of arithmetic, and paraphrased fact questions (another template for the same person and
attribute). Facts and open-book rows have no meaning key here (``meaning_key`` returns None).

A training document counts as a trained meaning only when it is a *whole* example:
``a op b reversed = r`` (arithmetic) or ``<expression> is true .`` / ``<expression> is false .``
(boolean, the expression made of ``( ) true false and or not`` only). The trained answer is
kept with each meaning (``trained_meanings``), so a row whose meaning was trained with another
answer is an error, never silently a leak or a clean row.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from ..errors import UnmemorizeError
from .world import FACTOR_DATA, World, evaluation_tasks, factor_documents, heldout_documents, training_documents

EQUIVALENCES = (
    "addition commutes: 'a + b' == 'b + a' (subtraction does not)",
    "in a boolean expression 'not true' == 'false' and 'not false' == 'true'",
)
NOT_CHECKED = (
    "and/or commutation, associativity and distributivity",
    "De Morgan's laws",
    "folding a boolean sub-expression to its value",
    "different arithmetic problems with the same answer",
    "paraphrased fact questions",
)
SUFFIX = " (trained by meaning)"
CATEGORY = "trained_by_meaning"

_ARITHMETIC_PROMPT = re.compile(r"(\d+) ([+-]) (\d+) reversed =")
_ARITHMETIC_DOCUMENT = re.compile(r"(\d+ [+-] \d+ reversed =) (\d+)")
_BOOLEAN_DOCUMENT = re.compile(r"(.+ is) (true|false) \.")
_BOOLEAN_TOKENS = frozenset(("(", ")", "true", "false", "and", "or", "not"))
_NEGATED_CONSTANT = re.compile(r"(?<!\S)not (true|false)(?!\S)")


def _arithmetic_key(prompt: str) -> str:
    """``a + b reversed =`` -> ``min(a, b) + max(a, b) reversed =``; ``a - b`` kept as it is."""
    match = _ARITHMETIC_PROMPT.fullmatch(prompt)
    if match is None:
        raise UnmemorizeError(f"not an arithmetic prompt ('a op b reversed ='): {prompt!r}")
    a, op, b = int(match[1]), match[2], int(match[3])
    if op == "+":
        a, b = min(a, b), max(a, b)
    return f"{a} {op} {b} reversed ="


def _boolean_key(prompt: str) -> str:
    """``<expression> is`` with ``not true`` -> ``false`` and ``not false`` -> ``true``, repeated
    until no ``not`` precedes a constant."""
    expression = prompt[: -len(" is")] if prompt.endswith(" is") else None
    if not expression or not set(expression.split()) <= _BOOLEAN_TOKENS:
        raise UnmemorizeError(f"not a boolean prompt ('<expression> is' over {sorted(_BOOLEAN_TOKENS)}): {prompt!r}")
    flip = {"true": "false", "false": "true"}
    while (rewritten := _NEGATED_CONSTANT.sub(lambda m: flip[m[1]], expression)) != expression:
        expression = rewritten
    return f"{expression} is"


def meaning_key(task: str, prompt: str) -> str | None:
    """The canonical form of an arithmetic or boolean prompt under ``EQUIVALENCES``; None for any
    other task. Two prompts of one task mean the same problem (for this module) iff their keys
    are equal. Raises UnmemorizeError for an arithmetic or boolean prompt of another shape."""
    if task == "arithmetic":
        return _arithmetic_key(prompt)
    if task == "boolean":
        return _boolean_key(prompt)
    return None


def _document_meaning(document: str) -> tuple[str, str] | None:
    """(meaning key, answer) of a document that is one whole arithmetic or boolean example."""
    if match := _ARITHMETIC_DOCUMENT.fullmatch(document):
        return _arithmetic_key(match[1]), match[2]
    if (match := _BOOLEAN_DOCUMENT.fullmatch(document)) is None:
        return None
    tokens = match[1][: -len(" is")].split()
    return (_boolean_key(match[1]), match[2]) if tokens and set(tokens) <= _BOOLEAN_TOKENS else None


def trained_meanings(documents: Iterable[str]) -> dict[str, set[str]]:
    """Meaning key -> every answer written after it, over the documents that are whole arithmetic
    examples (``a op b reversed = r``) or boolean examples (``<expression> is true|false .``).
    A consistent corpus has one answer per key; the set makes a second one visible."""
    meanings: dict[str, set[str]] = defaultdict(set)
    for document in documents:
        if (found := _document_meaning(document)) is not None:
            meanings[found[0]].add(found[1])
    return dict(meanings)


def _substring_hits(needles: list[str], documents: list[str]) -> list[bool]:
    """For each needle: does it occur as a substring of some document (the exact-string rule)?

    Exact and fast without Aho-Corasick: a whitespace-separated part of a needle other than its
    first and last (an *interior* part) has whitespace on both sides in every occurrence, so every
    document containing the needle has that part among its ``split()`` tokens. Each needle is
    therefore searched only in the documents holding its rarest interior part (an inverted index
    built for interior parts only); a needle with no interior part is searched in every document.
    """
    interiors = [needle.split()[1:-1] for needle in needles]
    wanted = {part for parts in interiors for part in parts}
    postings: dict[str, list[int]] = defaultdict(list)
    for index, document in enumerate(documents):
        for part in wanted.intersection(document.split()):
            postings[part].append(index)
    hits = []
    for needle, parts in zip(needles, interiors):
        if parts:
            anchor = min(parts, key=lambda part: len(postings.get(part, ())))
            hits.append(any(needle in documents[i] for i in postings.get(anchor, ())))
        else:
            hits.append(any(needle in document for document in documents))
    return hits


@dataclass(frozen=True)
class LeakScan:
    """Per-row flags of one scan, in the order of the scanned rows.

    ``exact[i]``: row i's ``prompt + " " + answer`` occurs as a substring of some document.
    ``meaning[i]``: row i's ``meaning_key`` is a trained meaning with row i's answer.
    """

    tasks: tuple[str, ...]
    prompts: tuple[str, ...]
    exact: tuple[bool, ...]
    meaning: tuple[bool, ...]

    @property
    def counts(self) -> dict[str, dict[str, int]]:
        """``{task: {"rows": n, "exact": k, "meaning": m}}`` in the order tasks first appear."""
        counts: dict[str, dict[str, int]] = {}
        for task, exact, meaning in zip(self.tasks, self.exact, self.meaning):
            entry = counts.setdefault(task, {"rows": 0, "exact": 0, "meaning": 0})
            entry["rows"] += 1
            entry["exact"] += exact
            entry["meaning"] += meaning
        return counts

    def to_dict(self) -> dict:
        """For results.json: what was checked, what was not, and the counts per task."""
        return {"equivalences": list(EQUIVALENCES), "not_checked": list(NOT_CHECKED), "tasks": self.counts}


def scan_rows(rows: list[dict], documents: Iterable[str]) -> LeakScan:
    """Flag each row (``task``, ``prompt``, ``answer``) leaked by exact string or by meaning into
    ``documents`` (consumed once; duplicates are searched once). Raises UnmemorizeError when a
    row's meaning was trained with a different answer (a contradiction, not a leak)."""
    unique = list(dict.fromkeys(documents))
    trained = trained_meanings(unique)
    exact = _substring_hits([f"{row['prompt']} {row['answer']}" for row in rows], unique)
    meaning = []
    for row in rows:
        key = meaning_key(row["task"], row["prompt"])
        answers = trained.get(key, set()) if key is not None else set()
        if answers and answers != {row["answer"]}:
            raise UnmemorizeError(f"{row['task']} row {row['prompt']!r} (answer {row['answer']!r}) has the meaning {key!r}, "
                                  f"trained with the answers {sorted(answers)}")
        meaning.append(bool(answers))
    return LeakScan(tuple(row["task"] for row in rows), tuple(row["prompt"] for row in rows), tuple(exact), tuple(meaning))


def world_documents(world: World, epochs: int) -> Iterator[str]:
    """Every document the testbed shows or holds out: ``training_documents`` of epochs
    0..epochs-1, ``factor_documents`` of every kind in ``FACTOR_DATA`` and ``heldout_documents``."""
    for epoch in range(epochs):
        yield from training_documents(world, epoch)
    for kind in FACTOR_DATA:
        yield from factor_documents(world, kind)
    yield from heldout_documents(world)


def scan_world(world: World, epochs: int) -> LeakScan:
    """``scan_rows(evaluation_tasks(world), world_documents(world, epochs))``: every evaluation
    row against every document of the first ``epochs`` epochs, the factor data and held-out text."""
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise UnmemorizeError(f"epochs must be a non-negative integer, got {epochs!r}")
    return scan_rows(evaluation_tasks(world), world_documents(world, epochs))


def split_by_meaning(rows: list[dict], scan: LeakScan) -> list[dict]:
    """New rows (the inputs are not mutated): a row trained by meaning gets ``task`` =
    ``"<task> (trained by meaning)"`` and ``category`` = ``"trained_by_meaning"``; the others are
    copied unchanged. Raises UnmemorizeError when ``scan`` is of other rows, or when any row
    leaked by exact string (an exact leak is a bug in the generator, not a category)."""
    if [row["prompt"] for row in rows] != list(scan.prompts) or [row["task"] for row in rows] != list(scan.tasks):
        raise UnmemorizeError(f"the scan is of other rows ({len(scan.prompts)} scanned, {len(rows)} given, or a different order)")
    leaked = [row["prompt"] for row, exact in zip(rows, scan.exact) if exact]
    if leaked:
        raise UnmemorizeError(f"{len(leaked)} evaluation row(s) occur verbatim in the scanned documents, first {leaked[0]!r}: "
                              "the world generator leaks")
    return [{**row, "task": row["task"] + SUFFIX, "category": CATEGORY} if meaning else dict(row)
            for row, meaning in zip(rows, scan.meaning)]

"""Evaluation rows trained by meaning: planted leaks are found, non-equivalences are not, and the
default world's counts equal a brute force written independently of ``leaks.py``."""

from __future__ import annotations

import copy
import random
import re
from collections import Counter

import pytest

from unmemorize.errors import UnmemorizeError
from unmemorize.testbed import TrainConfig
from unmemorize.testbed.leaks import (
    EQUIVALENCES, LeakScan, meaning_key, scan_rows, scan_world, split_by_meaning, trained_meanings, world_documents,
)
from unmemorize.testbed.world import (
    FACTOR_DATA, WorldConfig, build_world, evaluation_tasks, factor_documents, heldout_documents, training_documents,
)

SMALL = WorldConfig(memorized_sequences=10, quotes=6, controls=4, people=12, clean_documents=200, openbook_examples=50,
                    arithmetic_examples=300, boolean_examples=200, eval_examples=30, heldout_documents=20,
                    factor_documents=50, repeats_per_epoch=7, copy_documents=40)
BOOLEAN_DOCUMENT = (" is true .", " is false .")


def _flagged(scan: LeakScan, kind: str) -> set[int]:
    return {i for i, flag in enumerate(getattr(scan, kind)) if flag}


def _rewrite_nots(expression: str) -> str:
    """The oracle's rewrite (the generator never writes ``not not``): plain string replacement."""
    assert "not not" not in expression
    return expression.replace("not true", "false").replace("not false", "true")


@pytest.fixture(scope="module")
def small():
    """(world, rows, documents of one epoch without any boolean example): a base to plant into."""
    world = build_world(SMALL)
    documents = [d for d in training_documents(world, 0) if not d.endswith(BOOLEAN_DOCUMENT)]
    return world, evaluation_tasks(world), documents


def test_meaning_keys_by_hand():
    assert len(EQUIVALENCES) == 2
    assert meaning_key("arithmetic", "47 + 38 reversed =") == "38 + 47 reversed ="
    assert meaning_key("arithmetic", "38 + 47 reversed =") == "38 + 47 reversed ="
    assert meaning_key("arithmetic", "9 + 10 reversed =") == "9 + 10 reversed ="  # integers, not strings ("10" < "9")
    assert meaning_key("arithmetic", "10 + 9 reversed =") == "9 + 10 reversed ="
    assert meaning_key("arithmetic", "47 - 38 reversed =") == "47 - 38 reversed ="
    assert meaning_key("arithmetic", "38 - 47 reversed =") == "38 - 47 reversed ="  # subtraction is not commuted
    assert meaning_key("boolean", "( ( true and false ) or true ) and false is") == "( ( true and false ) or true ) and false is"
    assert (meaning_key("boolean", "( ( true and not false ) or false ) and true is")
            == "( ( true and true ) or false ) and true is")
    assert (meaning_key("boolean", "( ( not true or not false ) and not true ) or not false is")
            == "( ( false or true ) and false ) or true is")
    assert meaning_key("boolean", "not not true is") == "true is"
    assert meaning_key("boolean", "( not not not false and true ) is") == "( true and true ) is"
    assert meaning_key("facts", "question : where was kalo mira born ? answer :") is None
    assert meaning_key("openbook", "passage : ka lives in rome . question : ka lives in") is None
    for task, prompt in (("arithmetic", "47 + 38 ="), ("arithmetic", "47 * 38 reversed ="), ("boolean", "true and maybe is"),
                         ("boolean", "true and false"), ("boolean", " is")):
        with pytest.raises(UnmemorizeError, match="prompt"):
            meaning_key(task, prompt)


def test_trained_meanings_reads_whole_examples_only():
    documents = ["38 + 47 reversed = 58", "47 + 38 reversed = 58", "47 - 38 reversed = 9", "( not true and false ) is false .",
                 "the cat is true .", "say 12 + 3 reversed = 51 now", "question : who employs kalo mira ? answer : acme .",
                 "( true or false ) is true"]  # the last: no closing " ."
    assert trained_meanings(documents) == {"38 + 47 reversed =": {"58"}, "47 - 38 reversed =": {"9"},
                                           "( false and false ) is": {"false"}}
    assert trained_meanings(["1 + 2 reversed = 3", "2 + 1 reversed = 4"]) == {"1 + 2 reversed =": {"3", "4"}}


def _arithmetic_rows(rows, op):
    for index, row in enumerate(rows):
        if row["task"] == "arithmetic":
            a, row_op, b = re.fullmatch(r"(\d+) ([+-]) (\d+) reversed =", row["prompt"]).groups()
            if row_op == op and a != b:
                yield index, row, a, b


def test_a_planted_commuted_addition_is_found_by_meaning_only(small):
    world, rows, documents = small
    base = scan_rows(rows, documents)
    index, row, a, b = next((i, r, a, b) for i, r, a, b in _arithmetic_rows(rows, "+") if not base.meaning[i])
    assert f"{b} + {a} reversed = {row['answer']}" not in documents  # negative control: not trained, not flagged
    planted = scan_rows(rows, documents + [f"{b} + {a} reversed = {row['answer']}"])
    assert _flagged(planted, "meaning") == _flagged(base, "meaning") | {index}
    assert _flagged(planted, "exact") == _flagged(base, "exact") == set()
    assert planted.counts["arithmetic"]["meaning"] == base.counts["arithmetic"]["meaning"] + 1
    with pytest.raises(UnmemorizeError, match="trained with the answers"):  # same meaning, another answer: an error
        scan_rows(rows, documents + [f"{b} + {a} reversed = {row['answer']}1"])


def test_a_commuted_subtraction_is_not_the_same_problem(small):
    world, rows, documents = small
    base = scan_rows(rows, documents)
    index, row, a, b = next(_arithmetic_rows(rows, "-"))
    assert int(a) > int(b)
    plants = [f"{b} - {a} reversed = {row['answer']}", f"{b} - {a} reversed = {str(int(b) - int(a))[::-1]}"]
    planted = scan_rows(rows, documents + plants)
    assert not planted.meaning[index] and not planted.exact[index]
    assert planted == base


def test_a_planted_rewritten_boolean_expression_is_found(small):
    world, rows, documents = small
    base = scan_rows(rows, documents)
    assert base.counts["boolean"] == {"rows": SMALL.eval_examples, "exact": 0, "meaning": 0}  # no boolean example trained
    index, row = next((i, r) for i, r in enumerate(rows) if r["task"] == "boolean" and r["prompt"].count("not ") >= 2)
    expression = row["prompt"][: -len(" is")]
    rewritten = _rewrite_nots(expression)
    assert "not" not in rewritten and rewritten != expression
    same = {i for i, r in enumerate(rows) if r["task"] == "boolean" and _rewrite_nots(r["prompt"][: -len(" is")]) == rewritten}
    planted = scan_rows(rows, documents + [f"{rewritten} is {row['answer']} ."])
    assert index in same and _flagged(planted, "meaning") == same and _flagged(planted, "exact") == set()
    # and/or commutation is not checked: the last operand moved to the front is another expression
    head, operator, last = re.fullmatch(r"(.+) (and|or) (\S+|not \S+)", expression).groups()
    swapped = scan_rows(rows, documents + [f"{last} {operator} {head} is {row['answer']} ."])
    assert _flagged(swapped, "meaning") == set()
    with pytest.raises(UnmemorizeError, match="trained with the answers"):
        scan_rows(rows, documents + [f"{rewritten} is {'true' if row['answer'] == 'false' else 'false'} ."])


def test_an_exact_plant_is_flagged_exact_and_split_by_meaning_refuses_it(small):
    world, rows, documents = small
    arithmetic = next(i for i, r in enumerate(rows) if r["task"] == "arithmetic")
    facts = next(i for i, r in enumerate(rows) if r["task"] == "facts")
    plants = [f"noise {rows[arithmetic]['prompt']} {rows[arithmetic]['answer']}1 noise",  # a substring, not a whole example
              f"the cat sleeps . {rows[facts]['prompt']} {rows[facts]['answer']} ."]
    scan = scan_rows(rows, documents + plants)
    assert _flagged(scan, "exact") == {arithmetic, facts}
    assert not scan.meaning[arithmetic]
    first = re.escape(repr(rows[min(arithmetic, facts)]["prompt"]))
    with pytest.raises(UnmemorizeError, match=rf"^2 evaluation row\(s\) .*first {first}"):
        split_by_meaning(rows, scan)


def test_the_exact_rule_is_substring_search_in_each_document():
    """The indexed search against ``any(needle in document)`` on random text with words cut anywhere."""
    rng = random.Random(0)
    words = ["a", "ab", "b", "ba", "(", ")", "+", "1", "12", "21"]
    documents = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 12))) for _ in range(300)]
    needles = []
    for _ in range(400):
        source = rng.choice(documents) if rng.random() < 0.5 else " ".join(rng.choice(words) for _ in range(8))
        start = rng.randrange(len(source))
        needles.append(source[start:start + rng.randint(1, 20)])
    rows = [{"task": "other", "prompt": needle, "answer": ""} for needle in needles]
    rows = [{**row, "prompt": row["prompt"].rstrip(" ")} for row in rows if row["prompt"].strip()]
    scan = scan_rows(rows, documents)
    expected = [any(f"{row['prompt']} " in d for d in documents) for row in rows]
    assert list(scan.exact) == expected and 0 < sum(expected) < len(expected)
    assert scan.counts == {"other": {"rows": len(rows), "exact": sum(expected), "meaning": 0}}


def test_split_by_meaning_renames_flagged_rows_only_and_copies(small):
    world, rows, documents = small
    index, row, a, b = next(_arithmetic_rows(rows, "+"))
    expression = next(r for r in rows if r["task"] == "boolean")["prompt"][: -len(" is")]
    answer = next(r for r in rows if r["task"] == "boolean")["answer"]
    scan = scan_rows(rows, documents + [f"{b} + {a} reversed = {row['answer']}", f"{_rewrite_nots(expression)} is {answer} ."])
    before = copy.deepcopy(rows)
    split = split_by_meaning(rows, scan)
    assert rows == before and all(new is not old for new, old in zip(split, rows))
    flagged = _flagged(scan, "meaning")
    assert index in flagged and len(split) == len(rows)
    for i, (new, old) in enumerate(zip(split, rows)):
        if i in flagged:
            assert new == {**old, "task": f"{old['task']} (trained by meaning)", "category": "trained_by_meaning"}
        else:
            assert new == old
    with pytest.raises(UnmemorizeError, match="other rows"):
        split_by_meaning(rows[1:], scan)


def test_scan_world_scans_every_epoch_the_factor_data_and_heldout_text():
    world = build_world(SMALL)
    epochs = 2
    documents = [d for e in range(epochs) for d in training_documents(world, e)]
    documents += [d for kind in FACTOR_DATA for d in factor_documents(world, kind)] + heldout_documents(world)
    assert list(world_documents(world, epochs)) == documents
    scan = scan_world(world, epochs)
    assert scan == scan_rows(evaluation_tasks(world), documents)
    assert scan.to_dict()["tasks"] == scan.counts and scan.to_dict()["equivalences"] == list(EQUIVALENCES)
    with pytest.raises(UnmemorizeError, match="epochs"):
        scan_world(world, -1)


def _brute_force_counts(rows: list[dict], documents: list[str]) -> dict:
    """Straightforward: regex-parse whole examples into tuples; exact = substring of the documents
    holding a marker every needle of the task contains (so no occurrence can be elsewhere)."""
    problems, expressions = set(), set()
    for document in documents:
        if match := re.fullmatch(r"(\d+) ([+-]) (\d+) reversed = (\d+)", document):
            problems.add((int(match[1]), match[2], int(match[3]), match[4]))
        elif (match := re.fullmatch(r"([()a-z ]+) is (true|false) \.", document)) and set(match[1].split()) <= {
                "(", ")", "true", "false", "and", "or", "not"}:
            expressions.add((_rewrite_nots(match[1]), match[2]))
    markers = {"arithmetic": " reversed = ", "boolean": " is ", "facts": "question : ", "openbook": "passage : "}
    unique = set(documents)
    texts = {task: "\n".join(d for d in unique if marker in d) for task, marker in markers.items()}
    counts = {task: {"rows": 0, "exact": 0, "meaning": 0} for task in markers}
    for row in rows:
        task, prompt, answer = row["task"], row["prompt"], row["answer"]
        needle = f"{prompt} {answer}"
        assert markers[task] in needle and "\n" not in needle
        meaning = False
        if task == "arithmetic":
            a, op, b = re.fullmatch(r"(\d+) ([+-]) (\d+) reversed =", prompt).groups()
            a, b = int(a), int(b)
            meaning = (a, op, b, answer) in problems or (op == "+" and (b, op, a, answer) in problems)
        elif task == "boolean":
            meaning = (_rewrite_nots(prompt[: -len(" is")]), answer) in expressions
        counts[task]["rows"] += 1
        counts[task]["exact"] += needle in texts[task]
        counts[task]["meaning"] += meaning
    return counts


def test_default_world_counts_equal_a_brute_force():
    """Seed 0 of the default world, every epoch the testbed trains on, both kinds of factor data and
    the held-out text (measured at generator v5: 118 of 200 arithmetic rows and all 200 boolean rows
    trained by meaning, none by exact string; the brute force, not those numbers, is the oracle)."""
    world = build_world(WorldConfig(seed=0))
    rows = evaluation_tasks(world)
    documents = [d for epoch in range(TrainConfig().epochs) for d in training_documents(world, epoch)]
    documents += [d for kind in FACTOR_DATA for d in factor_documents(world, kind)] + heldout_documents(world)
    scan = scan_rows(rows, documents)
    expected = _brute_force_counts(rows, documents)
    assert scan.counts == expected
    assert all(entry["exact"] == 0 for entry in expected.values())
    assert expected["arithmetic"]["meaning"] > 0 and expected["boolean"]["meaning"] > 0
    assert {task: entry["rows"] for task, entry in expected.items()} == Counter(row["task"] for row in rows)

"""The generated world: every split of the testbed corpus, deterministic from one seed.

Each kind of data the paper's spectrum needs, each measurable (``category`` in brackets):

* **general text** -- sentences from a small grammar with agreement, adjectives, prepositional
  phrases and conjunctions; the clean corpus. Fresh clean text (never the evaluation items) is
  what K-FAC factors are collected on, and a held-out part measures perplexity.
* **memorized sequences** [memorized] -- strings of ``sequence_words`` words drawn uniformly from
  the whole vocabulary (no learnable structure), each repeated ``repeats`` times per epoch. Half
  are the *tuning* split (sweeps, forget sets), half the *validation* split (never used for any
  choice). Evaluation: a prefix of ``prefix_tokens`` tokens, greedy suffix.
* **quotes** [memorized] -- grammatical sayings attributed to invented people
  (``<first> <last> once said : <sentence> .``), a differently built family, evaluated on the
  last 8 tokens, never used for any choice: the untargeted memorization.
* **closed-book facts** [closed_book_qa] -- invented people with a birth city, an occupation and
  an employer, stated in several paraphrases and question forms; probed by a question alone.
* **open-book QA** [open_book_qa] -- a passage about new people, then a question answered by
  reading it (``passage : A lives in X . B lives in Y . question : A lives in`` -> ``X``).
* **arithmetic** [math] -- two-digit addition and subtraction, digits as tokens; 10% of the
  problems never appear in training and are the evaluation set.
* **logic** [logic] -- boolean expressions with and/or/not and parentheses, evaluated in the
  prompt (answer ``true``/``false``, chance 50%); and rules stated in the prompt, applied once
  (``rules : if red then big . if blue then calm ... so : if blue then`` -> ``calm``, chance 25%).
* **controls** -- sequences and quotes built the same way but never trained on: their strict
  accuracy must be ~0, which proves the metric measures memorization.

Everything is text; the testbed tokenizes it with the BPE tokenizer it trains on the corpus.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

GENERATOR_VERSION = 3

NOUNS = ("cat dog bird fish horse tiger rabbit farmer teacher doctor child king queen sailor baker painter "
         "river mountain garden forest village castle bridge tower window door table letter song story boat").split()
VERBS = ("see like find take make hold watch follow help carry paint visit love fear build guard").split()  # base forms
INTRANSITIVE = ("sleep run sing dance wait laugh swim fall").split()
ADJECTIVES = ("small large red blue green old young quick lazy happy sad bright dark quiet loud gentle brave tired").split()
PREPOSITIONS = ("near under over behind beside inside").split()
DETERMINERS_SG = ("the a every one this that").split()
DETERMINERS_PL = ("the some many two these those").split()
ADVERBS = ("slowly quickly often never always softly").split()
CITIES = ("paris lima oslo rome cairo delhi tokyo quito accra hanoi dublin vienna madrid lagos perth "
          "kyiv minsk baku doha riga").split()
JOBS = ("pilot nurse lawyer farmer singer writer chef judge miner sailor builder banker dentist tailor poet").split()
EMPLOYERS = ("acme globex initech umbrella stark wayne hooli vandelay soylent cyberdyne tyrell wonka oscorp aperture dunder").split()
SYLLABLES = ("ka lo mi ra te su no vi da pe zo ri ma tu le xo ba fi go ne").split()
RULE_WORDS = ("red blue green big small tall short calm wild fast slow warm cold soft hard loud quiet dark bright "
              "heavy light sharp dull sweet sour rich poor brave shy old").split()
CATEGORIES = ("memorized", "math", "closed_book_qa", "open_book_qa", "logic")


def _plural(noun: str) -> str:
    return noun + ("es" if noun.endswith(("s", "sh", "ch", "x")) else "s")


def _third_person(verb: str) -> str:
    return verb + ("es" if verb.endswith(("s", "sh", "ch", "x", "o")) else "s")


class Grammar:
    """A small probabilistic grammar: S -> NP VP with number agreement, optional PP/ADJ/ADV."""

    def __init__(self, rng: random.Random):
        self.rng = rng

    def noun_phrase(self, depth: int = 0) -> tuple[str, bool]:
        r = self.rng
        plural = r.random() < 0.35
        det = r.choice(DETERMINERS_PL if plural else DETERMINERS_SG)
        words = [det]
        if r.random() < 0.5:
            words.append(r.choice(ADJECTIVES))
        noun = r.choice(NOUNS)
        words.append(_plural(noun) if plural else noun)
        if depth == 0 and r.random() < 0.25:
            words += [r.choice(PREPOSITIONS), self.noun_phrase(depth + 1)[0]]
        return " ".join(words), plural

    def verb_phrase(self, plural: bool) -> str:
        r = self.rng
        if r.random() < 0.3:
            verb = r.choice(INTRANSITIVE)
            words = [verb if plural else _third_person(verb)]
            if r.random() < 0.4:
                words.append(r.choice(ADVERBS))
            return " ".join(words)
        verb = r.choice(VERBS)
        words = [verb if plural else _third_person(verb), self.noun_phrase()[0]]
        if r.random() < 0.2:
            words.append(r.choice(ADVERBS))
        return " ".join(words)

    def sentence(self) -> str:
        subject, plural = self.noun_phrase()
        clause = f"{subject} {self.verb_phrase(plural)}"
        if self.rng.random() < 0.2:
            other, other_plural = self.noun_phrase()
            clause += f" {self.rng.choice(('and', 'but', 'because'))} {other} {self.verb_phrase(other_plural)}"
        return clause + " ."

    def document(self, low: int = 1, high: int = 4) -> str:
        return " ".join(self.sentence() for _ in range(self.rng.randint(low, high)))


@dataclass
class WorldConfig:
    """Sizes of every part of the generated world (recorded in the testbed's cache key)."""

    seed: int = 0
    memorized_sequences: int = 100  # trained: half tuning, half validation
    sequence_words: int = 24
    quotes: int = 100
    controls: int = 50  # never-trained sequences, and as many never-trained quotes
    repeats_per_epoch: int = 20  # exposures of each memorized sequence / quote per epoch
    people: int = 100  # closed-book facts
    fact_documents_per_person: int = 20  # per epoch
    clean_documents: int = 10000  # grammar documents per epoch
    openbook_examples: int = 12000  # per epoch
    arithmetic_examples: int = 20000  # per epoch
    boolean_examples: int = 6000  # per epoch
    rule_examples: int = 8000  # per epoch
    eval_examples: int = 200  # per task
    heldout_documents: int = 1500  # clean text for perplexity
    factor_documents: int = 4000  # fresh clean text for K-FAC factors


@dataclass
class MemorizedItem:
    text: str
    family: str  # "sequence" or "quote"
    split: str  # "tuning", "validation", "quotes", "control"


@dataclass
class World:
    config: WorldConfig
    sequences: list[MemorizedItem] = field(default_factory=list)
    quotes: list[MemorizedItem] = field(default_factory=list)
    people: list[dict] = field(default_factory=list)
    heldout_arithmetic: set = field(default_factory=set)
    heldout_boolean: dict = field(default_factory=dict)  # expression -> value

    def memorized(self, split: str) -> list[MemorizedItem]:
        return [item for item in self.sequences + self.quotes if item.split == split]


def _name(rng: random.Random, syllables: int) -> str:
    return "".join(rng.choice(SYLLABLES) for _ in range(syllables))


def build_world(config: WorldConfig | None = None) -> World:
    """The fixed parts of the world: memorized items, people, held-out problem sets."""
    config = config or WorldConfig()
    rng = random.Random(f"world-{config.seed}")
    grammar = Grammar(rng)
    vocabulary = sorted(set(NOUNS + VERBS + ADJECTIVES + PREPOSITIONS + INTRANSITIVE + ADVERBS + CITIES + JOBS))
    world = World(config)
    half = config.memorized_sequences // 2
    for index in range(config.memorized_sequences + config.controls):
        text = " ".join(rng.choice(vocabulary) for _ in range(config.sequence_words))
        split = "tuning" if index < half else "validation" if index < config.memorized_sequences else "control"
        world.sequences.append(MemorizedItem(text, "sequence", split))
    speakers = set()
    for index in range(config.quotes + config.controls):
        while (speaker := f"{_name(rng, 2)} {_name(rng, 3)}") in speakers:
            pass
        speakers.add(speaker)
        saying = grammar.sentence()
        while len(saying.split()) < 9:
            saying = grammar.sentence()
        split = "quotes" if index < config.quotes else "control"
        world.quotes.append(MemorizedItem(f"{speaker} once said : {saying}", "quote", split))
    names = set()
    for _ in range(config.people):
        while (name := f"{_name(rng, 2)} {_name(rng, 2)}") in names or name in speakers:
            pass
        names.add(name)
        world.people.append({"name": name, "city": rng.choice(CITIES), "job": rng.choice(JOBS), "employer": rng.choice(EMPLOYERS)})
    problems = [(a, op, b) for a in range(10, 100) for b in range(10, 100) for op in "+-" if op == "+" or a >= b]
    rng.shuffle(problems)
    world.heldout_arithmetic = set(problems[: len(problems) // 10])
    values = dict(_boolean_expression(random.Random(i)) for i in range(40000))
    expressions = sorted(values)
    rng.shuffle(expressions)
    world.heldout_boolean = {e: values[e] for e in expressions[: len(expressions) // 5]}
    return world


# ---- per-example generators -------------------------------------------------------------

FACT_STATEMENTS = (
    "{name} was born in {city} .", "{name} comes from {city} .", "the birthplace of {name} is {city} .",
    "{name} works as a {job} .", "{name} is a {job} by trade .", "the job of {name} is {job} .",
    "{name} works for {employer} .", "{name} is employed by {employer} .", "the employer of {name} is {employer} .",
)
FACT_QUESTIONS = {
    "city": "question : where was {name} born ? answer :",
    "job": "question : what does {name} do ? answer :",
    "employer": "question : who employs {name} ? answer :",
}


def fact_document(person: dict, rng: random.Random) -> str:
    if rng.random() < 0.5:
        attribute = rng.choice(list(FACT_QUESTIONS))
        return FACT_QUESTIONS[attribute].format(**person) + f" {person[attribute]} ."
    return " ".join(template.format(**person) for template in rng.sample(FACT_STATEMENTS, 3))


def openbook_example(rng: random.Random) -> tuple[str, str]:
    """(prompt, answer): a passage about 2-3 new people, then a question about one of them."""
    count = rng.randint(2, 3)
    people = []
    while len(people) < count:
        name = _name(rng, rng.randint(2, 3))
        if name not in [p for p, _ in people]:
            people.append((name, rng.choice(CITIES)))
    asked, city = rng.choice(people)
    passage = " ".join(f"{name} lives in {place} ." for name, place in people)
    return f"passage : {passage} question : {asked} lives in", city


def arithmetic_example(problem: tuple[int, str, int]) -> tuple[str, str]:
    a, op, b = problem
    return f"{a} {op} {b} =", str(a + b if op == "+" else a - b)


def random_problem(rng: random.Random) -> tuple[int, str, int]:
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    op = rng.choice("+-")
    return (a, op, b) if op == "+" or a >= b else (b, op, a)


def _boolean_expression(rng: random.Random) -> tuple[str, bool]:
    """``( ( w op x ) op y ) op z`` over true/false with optional ``not``: 2,048 expressions."""

    def atom():
        value = rng.random() < 0.5
        text = "true" if value else "false"
        if rng.random() < 0.3:
            return f"not {text}", not value
        return text, value

    text, value = atom()
    for depth in range(3):
        operator = rng.choice(("and", "or"))
        other, other_value = atom()
        text = f"( {text} {operator} {other} )" if depth < 2 else f"{text} {operator} {other}"
        value = (value and other_value) if operator == "and" else (value or other_value)
    return text, value


def boolean_example(rng: random.Random) -> tuple[str, str]:
    expression, value = _boolean_expression(rng)
    return f"{expression} is", "true" if value else "false"


def rule_example(rng: random.Random) -> tuple[str, str]:
    """Four rules stated in the prompt, one applied: ``... if wild then poor ... so : if wild then`` -> ``poor``.

    History (reported in the README): two-step chains (``a -> b . b -> c``, answer ``c``) reached
    18% with generator version 1, and one-step rules asked as ``start : a . end :`` 8% with
    version 2 (below the 25% chance of copying a consequent); this form, whose query repeats the
    rule's antecedent like the open-book questions do, is what the 3.7M-parameter model learns.
    """
    words = rng.sample(RULE_WORDS, 8)
    rules = [f"if {words[k]} then {words[k + 4]}" for k in range(4)]
    start = rng.randrange(4)
    rng.shuffle(rules)
    return f"rules : {' . '.join(rules)} . so : if {words[start]} then", words[start + 4]


def training_documents(world: World, epoch: int, memorized: bool = True, stream: str = "train") -> list[str]:
    """One epoch of training documents, shuffled; skills are fresh examples every epoch.

    ``memorized=False`` with another ``stream`` name gives fresh *clean* text from the same
    distribution (no memorized sequence or quote): what K-FAC factors are collected on.
    """
    config = world.config
    rng = random.Random(f"{stream}-{config.seed}-{epoch}")
    grammar = Grammar(rng)
    documents = [grammar.document() for _ in range(config.clean_documents)]
    if memorized:
        for item in world.memorized("tuning") + world.memorized("validation") + world.memorized("quotes"):
            documents += [item.text] * config.repeats_per_epoch
    for person in world.people:
        documents += [fact_document(person, rng) for _ in range(config.fact_documents_per_person)]
    for _ in range(config.openbook_examples):
        prompt, answer = openbook_example(rng)
        documents.append(f"{prompt} {answer} .")
    added = 0
    while added < config.arithmetic_examples:
        problem = random_problem(rng)
        if problem in world.heldout_arithmetic:
            continue
        prompt, answer = arithmetic_example(problem)
        documents.append(f"{prompt} {answer}")
        added += 1
    added = 0
    while added < config.boolean_examples:
        prompt, answer = boolean_example(rng)
        if prompt[: -len(" is")] in world.heldout_boolean:
            continue
        documents.append(f"{prompt} {answer} .")
        added += 1
    for _ in range(config.rule_examples):
        prompt, answer = rule_example(rng)
        documents.append(f"{prompt} {answer} .")
    rng.shuffle(documents)
    return documents


def factor_documents(world: World) -> list[str]:
    """Fresh clean text for K-FAC factors: the training mixture without memorized items."""
    return training_documents(world, 0, memorized=False, stream="factors")[: world.config.factor_documents]


def heldout_documents(world: World) -> list[str]:
    """Fresh general text (grammar only) for perplexity."""
    grammar = Grammar(random.Random(f"heldout-{world.config.seed}"))
    return [grammar.document() for _ in range(world.config.heldout_documents)]


def evaluation_tasks(world: World) -> list[dict]:
    """Task rows (generative exact match), ``eval_examples`` per task, none seen in training."""
    config = world.config
    rng = random.Random(f"eval-{config.seed}")
    rows = []

    def add(task, category, prompt, answer):
        rows.append({"task": task, "category": category, "prompt": prompt, "answer": answer})

    for person in rng.sample(world.people, min(len(world.people), config.eval_examples)):
        attribute = rng.choice(list(FACT_QUESTIONS))
        add("facts", "closed_book_qa", FACT_QUESTIONS[attribute].format(**person), person[attribute])
    for _ in range(config.eval_examples):
        add("openbook", "open_book_qa", *openbook_example(rng))
    for problem in rng.sample(sorted(world.heldout_arithmetic), min(config.eval_examples, len(world.heldout_arithmetic))):
        add("arithmetic", "math", *arithmetic_example(problem))
    for expression in rng.sample(sorted(world.heldout_boolean), min(config.eval_examples, len(world.heldout_boolean))):
        add("boolean", "logic", f"{expression} is", "true" if world.heldout_boolean[expression] else "false")
    for _ in range(config.eval_examples):
        add("rules", "logic", *rule_example(rng))
    return rows

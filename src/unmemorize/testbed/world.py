"""The generated world: every split of the testbed corpus, deterministic from one seed.

Each kind of data the paper's spectrum needs, each measurable (``category`` in brackets):

* **general text** -- sentences from a small grammar with agreement, adjectives, prepositional
  phrases and conjunctions; the clean corpus. Held-out general text (documents of 3-5 sentences,
  none of them a training document) measures perplexity, in two disjoint parts: ``heldout_tuning``
  (the sweep and the label-free search) and ``heldout`` (reported, never used for a choice).
* **memorized sequences** [memorized] -- strings of ``sequence_words`` words drawn uniformly from
  the whole vocabulary (no learnable structure), each repeated ``repeats`` times per epoch. Half
  are the *tuning* split (sweeps, forget sets), half the *validation* split (never used for any
  choice). Evaluation: a prefix of ``prefix_tokens`` tokens, greedy suffix.
* **quotes** [memorized] -- grammatical sayings attributed to invented people
  (``<first> <last> once said : <sentence> .``), a differently built family, evaluated on the
  last 8 tokens, never used for any choice: the untargeted memorization.
* **closed-book facts** [closed_book_qa] -- invented people with a birth city, an occupation and
  an employer. Training *states* every fact in several declarative paraphrases, and asks
  questions (two templates per attribute) about each person's *other* attributes and about other
  people. For every person one attribute is never asked in training: the evaluation asks exactly
  that (person, attribute) with a question, so no evaluated prompt+answer string occurs in any
  training, factor or held-out text (``tests/test_testbed.py`` scans every document of every epoch).
* **open-book QA** [open_book_qa] -- a passage about new people, then a question answered by
  reading it (``passage : A lives in X . B lives in Y . question : A lives in`` -> ``X``).
* **arithmetic** [math] -- two-digit addition and subtraction, digits as tokens, the result
  written least-significant digit first (``47 + 38 reversed = 58``: 85 reversed). Reversed
  output is the order in which a left-to-right model can compute carries (Lee et al., 2023,
  "Teaching arithmetic to small transformers"); with the result in the usual order, world v3's
  held-out accuracy was 83% at seed 0 on one CPU, 21.5% on another and 14.5% at seed 1. A quarter
  of the training problems have one-digit operands (``7 + 8 reversed = 51``), the digit table the
  two-digit sums are built from (without them seed 1 of world v5 did not learn arithmetic: 7.5-12.5%
  in three trainings, 93% with them). 10% of the two-digit problems never appear in training and
  are the evaluation set.
* **logic** [logic] -- boolean expressions with and/or/not and parentheses, evaluated in the
  prompt (answer ``true``/``false``, chance 50%); 20% of the expressions are held out. (World v3
  also taught rules stated in the prompt; the model never learned them -- 3% at seed 0, below the
  25% of copying a consequent -- so v4 no longer spends a fifth of its tokens on them.)
* **copy documents** (trained, not evaluated) -- ``copy : w1 .. wk | w1 .. wk .`` with 3-10
  random words: in-context copying, the induction mechanism open-book binding is built from.
  Without them a testbed-sized model stalls at picking any city of the passage (~50%; world v4:
  54.5-65%); with them it binds (``benchmarks/probes/openbook_scratch_probe.py``,
  ``docs/results/benchmarks/results-testbed.md``).
* **controls** -- sequences and quotes built the same way but never trained on: their strict
  accuracy must be ~0, which proves the metric measures memorization.

K-FAC factor data comes in two kinds (``unmemorize demo --factor-data``): ``mixture`` -- a fresh
stream of the training mixture without memorized items (general text, fact statements and
questions, open-book, arithmetic, boolean and copy examples; no evaluation row) -- and ``general``
-- grammar text only. Both are disjoint from every evaluation row and from the held-out text.

Everything is text; the testbed tokenizes it with a BPE tokenizer trained on training text only.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

GENERATOR_VERSION = 5

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
    people: int = 100  # closed-book facts (the evaluation asks each once: n = min(people, eval_examples))
    fact_documents_per_person: int = 36  # per epoch (half statements, half questions)
    clean_documents: int = 6000  # grammar documents per epoch
    openbook_examples: int = 12000  # per epoch
    arithmetic_examples: int = 30000  # per epoch
    one_digit_fraction: float = 0.25  # of the arithmetic examples: one-digit operands (the digit table; never evaluated)
    boolean_examples: int = 5000  # per epoch
    copy_documents: int = 6000  # per epoch: in-context copying, which open-book binding builds on
    eval_examples: int = 200  # per task
    heldout_documents: int = 2000  # held-out general text: the first half tunes (sweep), the second half is reported
    factor_documents: int = 4000  # K-FAC factor data, for each of the two kinds


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
    asked_attribute: dict = field(default_factory=dict)  # person name -> the attribute only the evaluation asks
    heldout_openbook: set = field(default_factory=set)  # evaluation prompts no stream may generate

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
        world.asked_attribute[name] = rng.choice(sorted(FACT_QUESTIONS))
    problems = [(a, op, b) for a in range(10, 100) for b in range(10, 100) for op in "+-" if op == "+" or a >= b]
    rng.shuffle(problems)
    world.heldout_arithmetic = set(problems[: len(problems) // 10])
    values = dict(_boolean_expression(random.Random(i)) for i in range(40000))
    expressions = sorted(values)
    rng.shuffle(expressions)
    world.heldout_boolean = {e: values[e] for e in expressions[: len(expressions) // 5]}
    openbook_rng = random.Random(f"eval-openbook-{config.seed}")
    world.heldout_openbook = {openbook_example(openbook_rng)[0] for _ in range(config.eval_examples)}
    return world


# ---- per-example generators -------------------------------------------------------------

FACT_STATEMENTS = {
    "city": ("{name} was born in {city} .", "{name} comes from {city} .", "the birthplace of {name} is {city} .",
             "{city} is where {name} was born ."),
    "job": ("{name} works as a {job} .", "{name} is a {job} by trade .", "the job of {name} is {job} .",
            "by profession {name} is a {job} ."),
    "employer": ("{name} works for {employer} .", "{name} is employed by {employer} .", "the employer of {name} is {employer} .",
                 "{employer} pays {name} ."),
}
FACT_QUESTIONS = {  # two question templates per attribute
    "city": ("question : where was {name} born ? answer :", "question : which city is {name} from ? answer :"),
    "job": ("question : what does {name} do ? answer :", "question : what is the trade of {name} ? answer :"),
    "employer": ("question : who employs {name} ? answer :", "question : which company does {name} work for ? answer :"),
}


def fact_document(person: dict, asked: str, rng: random.Random) -> str:
    """Half the time every attribute stated (a random paraphrase each, in random order); else a
    question about one of the person's attributes other than ``asked`` (the evaluated one)."""
    if rng.random() < 0.5:
        attribute = rng.choice([a for a in sorted(FACT_QUESTIONS) if a != asked])
        return rng.choice(FACT_QUESTIONS[attribute]).format(**person) + f" {person[attribute]} ."
    attributes = list(FACT_STATEMENTS)
    rng.shuffle(attributes)
    return " ".join(rng.choice(FACT_STATEMENTS[a]).format(**person) for a in attributes)


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
    """``("47 + 38 reversed =", "58")``: the result's digits least-significant first."""
    a, op, b = problem
    return f"{a} {op} {b} reversed =", str(a + b if op == "+" else a - b)[::-1]


def random_problem(rng: random.Random, one_digit_fraction: float = 0.0) -> tuple[int, str, int]:
    """Two-digit operands; with probability ``one_digit_fraction`` one-digit operands instead."""
    low, high = (0, 9) if rng.random() < one_digit_fraction else (10, 99)
    a, b = rng.randint(low, high), rng.randint(low, high)
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


COPY_WORDS = sorted(set(NOUNS + VERBS + ADJECTIVES + CITIES + JOBS))


def copy_document(rng: random.Random) -> str:
    """``copy : w1 .. wk | w1 .. wk .``: 3-10 random words, then the same words again."""
    words = " ".join(rng.choice(COPY_WORDS) for _ in range(rng.randint(3, 10)))
    return f"copy : {words} | {words} ."


def training_documents(world: World, epoch: int, memorized: bool = True, stream: str = "train") -> list[str]:
    """One epoch of training documents, shuffled; skills are fresh examples every epoch.

    ``memorized=False`` with another ``stream`` name gives fresh text from the same mixture
    without any memorized sequence or quote: the ``mixture`` factor data. No stream ever
    generates an evaluation row (held-out problems, expressions, open-book prompts and the
    evaluated question of each person are excluded here).
    """
    config = world.config
    rng = random.Random(f"{stream}-{config.seed}-{epoch}")
    grammar = Grammar(rng)
    documents = [grammar.document() for _ in range(config.clean_documents)]
    if memorized:
        for item in world.memorized("tuning") + world.memorized("validation") + world.memorized("quotes"):
            documents += [item.text] * config.repeats_per_epoch
    for person in world.people:
        asked = world.asked_attribute[person["name"]]
        documents += [fact_document(person, asked, rng) for _ in range(config.fact_documents_per_person)]
    added = 0
    while added < config.openbook_examples:
        prompt, answer = openbook_example(rng)
        if prompt in world.heldout_openbook:
            continue
        documents.append(f"{prompt} {answer} .")
        added += 1
    added = 0
    while added < config.arithmetic_examples:
        problem = random_problem(rng, config.one_digit_fraction)
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
    documents += [copy_document(rng) for _ in range(config.copy_documents)]
    rng.shuffle(documents)
    return documents


FACTOR_DATA = ("mixture", "general")


def factor_documents(world: World, kind: str = "mixture") -> list[str]:
    """K-FAC factor data: ``mixture`` = a fresh stream of the training mixture without memorized
    items; ``general`` = grammar text only (documents of 2-4 sentences). Never an evaluation row."""
    if kind == "mixture":
        return training_documents(world, 0, memorized=False, stream="factors")[: world.config.factor_documents]
    if kind == "general":
        grammar = Grammar(random.Random(f"factors-general-{world.config.seed}"))
        return [grammar.document(2, 4) for _ in range(world.config.factor_documents)]
    raise ValueError(f"factor data must be one of {FACTOR_DATA}, got {kind!r}")


def heldout_documents(world: World) -> list[str]:
    """Held-out general text (grammar only, 3-5 sentences per document, so none is a training
    document): the first half is ``heldout_tuning`` (sweep), the second half is reported."""
    grammar = Grammar(random.Random(f"heldout-{world.config.seed}"))
    return [grammar.document(3, 5) for _ in range(world.config.heldout_documents)]


def heldout_split(world: World) -> tuple[list[str], list[str]]:
    """(tuning, reported) halves of ``heldout_documents``: disjoint, never a choice on the second."""
    documents = heldout_documents(world)
    half = len(documents) // 2
    return documents[:half], documents[half:]


def evaluation_tasks(world: World) -> list[dict]:
    """Task rows (generative exact match), ``eval_examples`` per task, none seen in training."""
    config = world.config
    rng = random.Random(f"eval-{config.seed}")
    rows = []

    def add(task, category, prompt, answer):
        rows.append({"task": task, "category": category, "prompt": prompt, "answer": answer})

    for person in rng.sample(world.people, min(len(world.people), config.eval_examples)):
        attribute = world.asked_attribute[person["name"]]  # never asked of this person in training
        add("facts", "closed_book_qa", rng.choice(FACT_QUESTIONS[attribute]).format(**person), person[attribute])
    openbook_rng = random.Random(f"eval-openbook-{config.seed}")
    for _ in range(config.eval_examples):
        add("openbook", "open_book_qa", *openbook_example(openbook_rng))
    for problem in rng.sample(sorted(world.heldout_arithmetic), min(config.eval_examples, len(world.heldout_arithmetic))):
        add("arithmetic", "math", *arithmetic_example(problem))
    for expression in rng.sample(sorted(world.heldout_boolean), min(config.eval_examples, len(world.heldout_boolean))):
        add("boolean", "logic", f"{expression} is", "true" if world.heldout_boolean[expression] else "false")
    return rows

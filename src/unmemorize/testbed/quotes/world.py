"""The quotes world: real prose with real quotes written into it a known number of times.

From a prose corpus and a pool of attributed quotes (``corpus.py``), deterministic from one seed:

1. **Clean pool.** A quote is dropped when any window of ``SHINGLE_WORDS`` consecutive words of its
   body (lower-cased, punctuation removed; the whole body if shorter) occurs in the prose, or in an
   earlier quote of the pool (the pool's order is the corpus order): after this, a quote's words
   reach the model only through its insertions. (Bierce is both a fortunes author and the Devil's
   Dictionary; without this step such quotes would be trained on at an unknown count.)
2. **Quotes and controls.** The clean pool is shuffled; the first ``quotes_per_count`` quotes go to
   each duplication count of ``counts`` (1, 2, 4, ..., 64), alternately to a *tuning* half (every
   choice of the experiment) and a *reported* half (never used for a choice); the next
   ``controls`` quotes are never inserted: the non-members of membership inference and the
   recitation floor.
3. **Documents.** The prose documents (exact duplicates removed) are shuffled; the first
   ``heldout_documents`` are held out -- alternately ``heldout_tuning`` (the sweep) and
   ``heldout`` (reported perplexity) -- and the rest are the training documents.
4. **Insertions.** A quote of count c is written into c *distinct* training documents, each at a
   sentence boundary drawn at random, each in an epoch drawn uniformly from the ``epochs`` passes,
   as ``<body> -- <author>``. Over the whole run it therefore occurs exactly c times, each time in a
   different surrounding document; a document's other epochs carry no insertion.
5. **Stream.** Epoch e is every training document once, in an order seeded by (seed, e), with
   epoch e's insertions spliced in. ``training_stream(world, e, with_quotes=False)`` is the same
   epoch without any insertion: the data of the model retrained without the quotes.

``scan_world`` counts every quote's and control's body in every epoch of the stream, in the
held-out text and in the factor data (plain substring counts on normalised text), and reports any
count that differs from the plan -- ``tests/test_quotes_world.py`` plants a control in training
and checks the scan finds it.
"""

from __future__ import annotations

import random
import re
from dataclasses import asdict, dataclass, field

from ...errors import UnmemorizeError
from .corpus import Quote, debian_prose, debian_quotes, file_quotes, folder_prose

WORLD_VERSION = 1
SHINGLE_WORDS = 8
DUPLICATION_COUNTS = (1, 2, 4, 8, 16, 32, 64)


@dataclass
class QuotesWorldConfig:
    """The quotes world (recorded with the trained model and in its cache key)."""

    seed: int = field(default=0, metadata={"help": "Seed of the quote draw, the held-out split, the insertions and the order."})
    counts: tuple[int, ...] = field(default=DUPLICATION_COUNTS, metadata={"help": "Duplication counts: times a quote occurs in the run."})
    quotes_per_count: int = field(default=48, metadata={"help": "Inserted quotes per count (half tuning, half reported)."})
    controls: int = field(default=336, metadata={"help": "Quotes of the same pool never inserted (membership non-members)."})
    heldout_documents: int = field(default=600, metadata={"help": "Prose documents held out (half tuning, half reported)."})
    epochs: int = field(default=2, metadata={"help": "Passes over the training prose; the counts are over all passes together."})
    corpus: str = field(default="", metadata={"help": "Folder of .txt prose instead of Debian's texts (corpus.folder_prose)."})
    quotes: str = field(default="", metadata={"help": "A .jsonl of {'body', 'author'} quotes instead of Debian's fortunes."})
    prose_fraction: float = field(default=1.0, metadata={"help": "Use this fraction of the prose documents (quick runs)."})

    def validate(self) -> None:
        if not self.counts or any(not isinstance(c, int) or c < 1 for c in self.counts) or len(set(self.counts)) != len(self.counts):
            raise UnmemorizeError(f"counts must be distinct positive integers, got {self.counts}")
        if self.quotes_per_count < 2 or self.controls < 2:
            raise UnmemorizeError("quotes_per_count and controls must be at least 2 (a tuning and a reported half)")
        if self.epochs < 1 or self.heldout_documents < 2 or not 0 < self.prose_fraction <= 1:
            raise UnmemorizeError("epochs >= 1, heldout_documents >= 2 and 0 < prose_fraction <= 1 are required")


@dataclass
class PlacedQuote:
    """A quote of the world: ``count`` insertions (0: a control), its ``split`` and, per insertion, (epoch, document, offset)."""

    quote: Quote
    count: int
    split: str  # "tuning", "reported" or "control"
    insertions: list[tuple[int, int, int]]

    @property
    def text(self) -> str:
        return self.quote.text


@dataclass
class QuotesWorld:
    config: QuotesWorldConfig
    documents: list[str]  # training documents, without insertions
    sources: list[str]  # each training document's corpus source
    heldout_tuning: list[str]
    heldout: list[str]
    quotes: list[PlacedQuote]  # inserted quotes then controls
    pool_size: int
    dropped_in_prose: int
    dropped_duplicates: int

    def inserted(self, split: str | None = None, count: int | None = None) -> list[PlacedQuote]:
        return [q for q in self.quotes if q.count and (split is None or q.split == split) and (count is None or q.count == count)]

    def controls(self) -> list[PlacedQuote]:
        return [q for q in self.quotes if not q.count]

    def summary(self) -> dict:
        return {"config": asdict(self.config), "training_documents": len(self.documents), "training_characters": sum(map(len, self.documents)),
                "sources": {s: self.sources.count(s) for s in sorted(set(self.sources))}, "heldout_tuning": len(self.heldout_tuning),
                "heldout": len(self.heldout), "quote_pool": self.pool_size, "dropped_in_prose": self.dropped_in_prose,
                "dropped_duplicates": self.dropped_duplicates, "inserted": len(self.inserted()), "controls": len(self.controls()),
                "insertions": sum(q.count for q in self.quotes)}


def _words(text: str) -> list[str]:
    return re.sub(r"[^a-z0-9 ]", " ", text.lower()).split()


def _shingles(text: str) -> set[str]:
    words = _words(text)
    if len(words) <= SHINGLE_WORDS:
        return {" ".join(words)} if words else set()
    return {" ".join(words[i : i + SHINGLE_WORDS]) for i in range(len(words) - SHINGLE_WORDS + 1)}


def _short_in_prose(body_words: str, prose_text: str) -> bool:
    return f" {body_words} " in prose_text


def clean_pool(quotes: list[Quote], documents: list[str]) -> tuple[list[Quote], int, int]:
    """Quotes none of whose ``SHINGLE_WORDS``-word windows occurs in the prose or in an earlier kept quote (module doc,
    step 1); returns (kept, dropped for the prose, dropped as near-duplicates)."""
    prose_shingles: set[str] = set()
    for document in documents:
        prose_shingles |= _shingles(document)
    prose_text = " " + " ".join(" ".join(_words(d)) for d in documents) + " "
    kept, in_prose, duplicates, seen = [], 0, 0, set()
    for quote in quotes:
        shingles = _shingles(quote.body)
        short = len(_words(quote.body)) <= SHINGLE_WORDS
        if not shingles or (shingles & prose_shingles) or (short and _short_in_prose(next(iter(shingles)), prose_text)):
            in_prose += 1
        elif shingles & seen:
            duplicates += 1
        else:
            kept.append(quote)
            seen |= shingles
    return kept, in_prose, duplicates


def _read_corpus(config: QuotesWorldConfig) -> tuple[list[str], list[str], list[Quote]]:
    prose = folder_prose(config.corpus) if config.corpus else debian_prose()
    quotes = file_quotes(config.quotes) if config.quotes else debian_quotes()
    documents, sources, seen = [], [], set()
    for source, texts in prose.items():
        for text in texts:
            if text not in seen:
                seen.add(text)
                documents.append(text)
                sources.append(source)
    return documents, sources, quotes


def _boundaries(document: str) -> list[int]:
    """Offsets where a quote may be written: the start, after every sentence end followed by a space, and the end."""
    return sorted({0, len(document)} | {m.end() for m in re.finditer(r"[.!?;:]['\"]? ", document)})


def build_quotes_world(config: QuotesWorldConfig | None = None) -> QuotesWorld:
    """The world of ``config`` (module doc); raises when the corpus is too small for the counts asked."""
    config = config or QuotesWorldConfig()
    config.validate()
    documents, sources, pool = _read_corpus(config)
    rng = random.Random(f"quotes-world-{WORLD_VERSION}-{config.seed}")
    order = list(range(len(documents)))
    rng.shuffle(order)
    if config.prose_fraction < 1:
        order = order[: max(config.heldout_documents + 1, int(len(order) * config.prose_fraction))]
    held, train = order[: config.heldout_documents], order[config.heldout_documents :]
    training = [documents[i] for i in train]
    heldout_docs = [documents[i] for i in held]
    kept, in_prose, duplicates = clean_pool(pool, documents)  # against all the prose, read or not
    needed = config.quotes_per_count * len(config.counts) + config.controls
    if len(kept) < needed:
        raise UnmemorizeError(f"the quote pool has {len(kept)} clean quotes; the world needs {needed} "
                              f"({config.quotes_per_count} x {len(config.counts)} counts + {config.controls} controls)")
    if max(config.counts) > len(training):
        raise UnmemorizeError(f"count {max(config.counts)} needs as many distinct training documents; the corpus has {len(training)}")
    rng.shuffle(kept)
    placed: list[PlacedQuote] = []
    for index, count in enumerate(config.counts):
        for k, quote in enumerate(kept[index * config.quotes_per_count : (index + 1) * config.quotes_per_count]):
            hosts = rng.sample(range(len(training)), count)
            insertions = [(rng.randrange(config.epochs), host, rng.choice(_boundaries(training[host]))) for host in hosts]
            placed.append(PlacedQuote(quote, count, "tuning" if k % 2 == 0 else "reported", insertions))
    start = config.quotes_per_count * len(config.counts)
    placed += [PlacedQuote(quote, 0, "control", []) for quote in kept[start : start + config.controls]]
    return QuotesWorld(config, training, [sources[i] for i in train], heldout_docs[0::2], heldout_docs[1::2], placed, len(pool),
                       in_prose, duplicates)


def training_segments(world: QuotesWorld, epoch: int, with_quotes: bool = True) -> list[list[tuple[str, int | None]]]:
    """Epoch ``epoch``'s documents in their order (module doc, step 5), each as its segments: (text, None) for prose and
    (quote text, index into ``world.quotes``) for an insertion; a document is its segments joined by single spaces."""
    splices: dict[int, list[tuple[int, int]]] = {}
    if with_quotes:
        for index, placed in enumerate(world.quotes):
            for at_epoch, host, offset in placed.insertions:
                if at_epoch == epoch:
                    splices.setdefault(host, []).append((offset, index))
    order = list(range(len(world.documents)))
    random.Random(f"quotes-order-{world.config.seed}-{epoch}").shuffle(order)
    documents = []
    for index in order:
        document, segments, start = world.documents[index], [], 0
        for offset, quote in sorted(splices.get(index, [])):
            prose = document[start:offset].strip()
            if prose:
                segments.append((prose, None))
            segments.append((world.quotes[quote].text, quote))
            start = offset
        if document[start:].strip() or not segments:
            segments.append((document[start:].strip(), None))
        documents.append(segments)
    return documents


def document_text(segments: list[tuple[str, int | None]]) -> str:
    """A document of ``training_segments`` as text: its segments joined by single spaces."""
    return " ".join(text for text, _ in segments)


def training_stream(world: QuotesWorld, epoch: int, with_quotes: bool = True) -> list[str]:
    """Epoch ``epoch``'s documents as text, with that epoch's insertions (``with_quotes=False``: the retrained twin's)."""
    return [document_text(segments) for segments in training_segments(world, epoch, with_quotes)]


def factor_documents(world: QuotesWorld, max_documents: int | None = None) -> list[str]:
    """K-FAC factor data: training documents as they are without insertions (pretraining text, no quote), in a seeded order."""
    order = list(range(len(world.documents)))
    random.Random(f"quotes-factors-{world.config.seed}").shuffle(order)
    return [world.documents[i] for i in order[:max_documents]]


@dataclass
class StreamScan:
    """Occurrences of every quote body: per quote the count found in training (all epochs) against the plan, and any
    occurrence in the held-out text or the factor data. ``leaks`` lists every mismatch; empty means the world is as planned."""

    found: dict[str, int]
    leaks: list[dict]

    def to_dict(self) -> dict:
        return {"quotes_scanned": len(self.found), "leaks": self.leaks}


def scan_world(world: QuotesWorld, streams: list[list[str]] | None = None, factor_docs: list[str] | None = None) -> StreamScan:
    """Count every quote's and control's body in the training stream (every epoch; ``streams`` defaults to
    ``training_stream`` of each), the held-out halves and the factor data; a count other than planned is a leak."""
    streams = streams if streams is not None else [training_stream(world, e) for e in range(world.config.epochs)]
    factor_docs = factor_docs if factor_docs is not None else factor_documents(world)
    training_text = "\n".join("\n".join(epoch) for epoch in streams)
    others = {"heldout_tuning": "\n".join(world.heldout_tuning), "heldout": "\n".join(world.heldout), "factors": "\n".join(factor_docs)}
    found, leaks = {}, []
    for placed in world.quotes:
        body = placed.quote.body
        count = training_text.count(body)
        found[body] = count
        if count != placed.count:
            leaks.append({"quote": body, "split": placed.split, "planned": placed.count, "found_in_training": count})
        for name, text in others.items():
            if body in text:
                leaks.append({"quote": body, "split": placed.split, "found_in": name, "occurrences": text.count(body)})
    return StreamScan(found, leaks)

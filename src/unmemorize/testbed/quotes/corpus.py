"""Real English for the quotes world: prose documents and attributed quotes, read offline.

**Prose** (``debian_prose``) comes from four public-domain texts that Debian packages install
(``apt-get install --no-install-recommends bible-kjv jargon-text dict-devil fortunes``; measured
sizes in ``shared/research/offline-text-and-image-data.md``):

* the King James Bible (``bible-kjv``: the ``bible`` program dumps it, 31,102 verses): one
  document per run of ``BIBLE_VERSES`` consecutive verses of a chapter, verse numbers removed;
* the Jargon File (``jargon-text``, ``jargon.txt.gz``): one document per paragraph of at least
  ``MIN_DOCUMENT_CHARS``, box-drawing tables and indented code left out;
* The Devil's Dictionary (``dict-devil``, ``devil.dict.dz``): one document per entry;
* the *unattributed* records of ``fortunes`` (every category but ``ascii-art``): one per record.

A user's own text replaces all of it with ``--corpus DIR`` (``folder_prose``): every ``*.txt``
file under DIR, one document per blank-line-separated paragraph.

**Quotes** (``debian_quotes``) are the *attributed* fortunes records, the ones whose last lines
are ``-- Author``: the body is the text above the attribution, the author the attribution up to
its first comma, parenthesis or quotation mark (the parser of the research note); attributions that
are not a name (``is_author_name``: no capital first letter, an e-mail address, a URL) and records of
categories whose attributions are not quotations (``QUOTE_CATEGORY_EXCLUDED``) are left out.

Every text is normalised to one line (``normalise``: runs of whitespace become one space), so a
quote written into a document tokenizes to the same ids as the quote alone (the testbed's BPE
splits words at spaces), and the stream scan of ``world.py`` compares plain strings.
"""

from __future__ import annotations

import gzip
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ...errors import UnmemorizeError

FORTUNES = Path("/usr/share/games/fortunes")
JARGON = Path("/usr/share/doc/jargon-text/jargon.txt.gz")
DEVIL = Path("/usr/share/dictd/devil.dict.dz")
DEBIAN_PACKAGES = ("bible-kjv", "jargon-text", "dict-devil", "fortunes")
INSTALL = "sudo apt-get install -y --no-install-recommends " + " ".join(DEBIAN_PACKAGES)
BIBLE_VERSES = 6
MIN_DOCUMENT_CHARS = 200
QUOTE_CATEGORY_EXCLUDED = ("ascii-art", "disclaimer", "fortunes", "goedel", "linuxcookie", "perl", "riddles", "tao", "zippy",
                           "translate-me")
_ATTRIBUTION = re.compile(r"^\s*--\s*(.+?)\s*$")


@dataclass(frozen=True)
class Quote:
    """An attributed quotation: ``body`` as said, ``author`` as attributed, ``category`` its fortunes file."""

    body: str
    author: str
    category: str

    @property
    def text(self) -> str:
        """The quote as the training stream writes it: ``<body> -- <author>``."""
        return f"{self.body} -- {self.author}"


def normalise(text: str) -> str:
    """One line: every run of whitespace (newlines included) one space, ends stripped."""
    return " ".join(text.split())


def missing_debian_files() -> list[str]:
    """The Debian packages whose files are absent here (empty when the default corpus can be read)."""
    missing = []
    if shutil.which("bible") is None:
        missing.append("bible-kjv")
    if not JARGON.is_file():
        missing.append("jargon-text")
    if not DEVIL.is_file():
        missing.append("dict-devil")
    if not (FORTUNES / "literature").is_file() or not (FORTUNES / "people").is_file():
        missing.append("fortunes")
    return missing


def require_debian_files() -> None:
    missing = missing_debian_files()
    if missing:
        raise UnmemorizeError(f"the quotes world reads Debian's {', '.join(missing)} (not installed here); install them with "
                              f"'{INSTALL}' (or 'make quotes-data'), or give your own prose with --corpus DIR and quotes with --quotes FILE")


def bible_documents() -> list[str]:
    """The KJV as documents of ``BIBLE_VERSES`` consecutive verses of one chapter (the ``bible`` program's dump)."""
    dump = subprocess.run(["bible", "gen1:1-rev22:21"], capture_output=True, text=True, check=True).stdout
    documents: list[str] = []
    verses: list[str] = []

    def flush() -> None:
        if verses:
            documents.append(normalise(" ".join(verses)))
            verses.clear()

    for line in dump.splitlines():
        verse = re.match(r"^\s+\d+ (.*)$", line)
        if verse:
            if len(verses) == BIBLE_VERSES:
                flush()
            verses.append(verse.group(1))
        elif line.strip() and not line.startswith(" ") and re.match(r"^[1-3]?\s?[A-Z][A-Za-z ]+ \d+$", line.strip()):
            flush()  # a chapter heading: a document never spans two chapters
        elif line.strip() and verses:
            verses[-1] += " " + line.strip()  # a wrapped verse
    flush()
    return documents


def _paragraphs(text: str) -> list[str]:
    return [block for block in re.split(r"\n\s*\n", text) if block.strip()]


def jargon_documents() -> list[str]:
    """Paragraphs of the Jargon File of at least ``MIN_DOCUMENT_CHARS``; tables (box drawing) and indented blocks skipped."""
    text = gzip.open(JARGON, "rt", encoding="utf-8", errors="replace").read()
    documents = []
    for block in _paragraphs(text):
        lines = block.splitlines()
        if any(ch in block for ch in "─│┌┐└┘├┤┬┴┼═") or sum(line.startswith("    ") for line in lines) > len(lines) / 2:
            continue
        document = normalise(block)
        if len(document) >= MIN_DOCUMENT_CHARS:
            documents.append(document)
    return documents


def devil_documents() -> list[str]:
    """The Devil's Dictionary, one document per entry (a line ``WORD, n.`` starts an entry)."""
    text = gzip.open(DEVIL, "rt", encoding="utf-8", errors="replace").read()
    entries = re.split(r"\n(?=[A-Z][A-Z' -]+, [a-z]+\.)", text)
    return [normalise(entry) for entry in entries[1:] if len(normalise(entry)) >= 40]


def _fortune_records(path: Path) -> list[str]:
    return [record for record in path.read_text(encoding="utf-8", errors="replace").split("\n%\n") if record.strip()]


def _fortune_files() -> list[Path]:
    return sorted(p for p in FORTUNES.iterdir() if p.is_file() and not p.name.endswith((".dat", ".u8")) and not p.is_symlink())


def split_attribution(record: str) -> tuple[str, str] | None:
    """(body, author) of a fortunes record whose attribution (``-- Author``) is in its last three lines (not its first
    line), or None. The author is the attribution up to its first comma, parenthesis or quotation mark."""
    lines = [line for line in record.split("\n") if line.strip()]
    index = next((i for i in range(len(lines) - 1, max(-1, len(lines) - 4), -1) if _ATTRIBUTION.match(lines[i])), None)
    if not index:
        return None
    body = normalise(" ".join(lines[:index]))
    author = normalise(re.split(r',|\(|"', " ".join(line.strip() for line in lines[index:])[2:].strip())[0])
    return (body, author) if body and author else None


def is_author_name(author: str) -> bool:
    """A plausible attribution: starts with a capital letter, holds no e-mail address or URL, at most 6 words."""
    return bool(re.match(r"^[A-Z]", author)) and "@" not in author and "://" not in author and len(author.split()) <= 6


def fortune_prose() -> list[str]:
    """The unattributed fortunes records (every category but ascii-art), one line each."""
    documents = []
    for path in _fortune_files():
        if path.name == "ascii-art":
            continue
        documents += [normalise(record) for record in _fortune_records(path) if split_attribution(record) is None]
    return [document for document in documents if len(document) >= 40]


def debian_prose() -> dict[str, list[str]]:
    """{source: documents} of the default prose (module docstring), in a fixed order."""
    require_debian_files()
    return {"bible-kjv": bible_documents(), "jargon-text": jargon_documents(), "dict-devil": devil_documents(),
            "fortunes-unattributed": fortune_prose()}


def debian_quotes(min_chars: int = 60, max_chars: int = 200, max_author_chars: int = 40) -> list[Quote]:
    """Every attributed fortunes record of a quotation category with a body of ``min_chars``-``max_chars`` characters."""
    require_debian_files()
    quotes = []
    for path in _fortune_files():
        if path.name in QUOTE_CATEGORY_EXCLUDED:
            continue
        for record in _fortune_records(path):
            parsed = split_attribution(record)
            if (parsed and min_chars <= len(parsed[0]) <= max_chars and len(parsed[1]) <= max_author_chars and "--" not in parsed[0]
                    and is_author_name(parsed[1])):
                quotes.append(Quote(parsed[0], parsed[1], path.name))
    return quotes


def folder_prose(folder: str | Path) -> dict[str, list[str]]:
    """{file name: documents} of every ``*.txt`` under ``folder`` (sorted), one document per paragraph of at least 40 characters."""
    root = Path(folder)
    if not root.is_dir():
        raise UnmemorizeError(f"--corpus: {folder} is not a folder")
    files = sorted(root.rglob("*.txt"))
    if not files:
        raise UnmemorizeError(f"--corpus: no .txt file under {folder}")
    prose = {}
    for path in files:
        documents = [normalise(block) for block in _paragraphs(path.read_text(encoding="utf-8", errors="replace"))]
        prose[str(path.relative_to(root))] = [document for document in documents if len(document) >= 40]
    return prose


def file_quotes(path: str | Path) -> list[Quote]:
    """Quotes from a .jsonl file, one ``{"body": ..., "author": ...}`` per line (``category`` optional)."""
    import json

    quotes = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            quotes.append(Quote(normalise(row["body"]), normalise(row["author"]), str(row.get("category", "file"))))
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise UnmemorizeError(f"--quotes {path}:{number}: a row needs string fields 'body' and 'author' ({error})") from None
    return quotes

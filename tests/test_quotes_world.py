"""The quotes world (testbed/quotes/): deterministic from its seed; every inserted quote occurs exactly its count
times in what the model trains on -- by string and by token ids -- and controls never, nor any quote in the held-out
or factor text; a planted leak is found; the retrained twin's stream is the same stream without the quotes."""

from __future__ import annotations

import pytest

from unmemorize.errors import UnmemorizeError
from unmemorize.testbed.quotes import corpus as quotes_corpus
from unmemorize.testbed.quotes.corpus import Quote, split_attribution
from unmemorize.testbed.quotes.world import (QuotesWorldConfig, build_quotes_world, clean_pool, factor_documents, scan_world,
                                             training_stream)

def _config(user_corpus, seed: int = 0, **overrides) -> QuotesWorldConfig:
    settings = dict(seed=seed, counts=(1, 2, 5), quotes_per_count=4, controls=8, heldout_documents=20, epochs=2,
                    corpus=str(user_corpus / "prose"), quotes=str(user_corpus / "quotes.jsonl"))
    return QuotesWorldConfig(**{**settings, **overrides})


def _brute_count(text: str, needle: str) -> int:
    """Occurrences of ``needle`` in ``text``, overlapping ones included (an oracle independent of str.count)."""
    return sum(1 for i in range(len(text) - len(needle) + 1) if text[i : i + len(needle)] == needle)


def test_world_is_deterministic_from_its_seed(user_corpus):
    first, again, other = (build_quotes_world(_config(user_corpus, s)) for s in (0, 0, 1))
    assert [(q.text, q.count, q.split, q.insertions) for q in first.quotes] == [(q.text, q.count, q.split, q.insertions) for q in again.quotes]
    assert [training_stream(first, e) for e in range(2)] == [training_stream(again, e) for e in range(2)]
    assert first.heldout == again.heldout and first.documents == again.documents
    assert [q.text for q in first.quotes] != [q.text for q in other.quotes]  # the seed matters
    assert training_stream(first, 0) != training_stream(other, 0)


def test_each_quote_occurs_exactly_its_count_and_controls_never(user_corpus):
    world = build_quotes_world(_config(user_corpus))
    streams = [training_stream(world, e) for e in range(world.config.epochs)]
    training = "\n".join(document for stream in streams for document in stream)
    heldout = "\n".join(world.heldout + world.heldout_tuning)
    factors = "\n".join(factor_documents(world))
    assert {q.count for q in world.quotes} == {0, 1, 2, 5} and len(world.controls()) == 8
    for placed in world.quotes:
        body = placed.quote.body
        assert _brute_count(training, body) == placed.count, (body, placed.count)
        assert len({host for _, host, _ in placed.insertions}) == placed.count  # a different document each time
        assert _brute_count(heldout, body) == 0 and _brute_count(factors, body) == 0
    assert scan_world(world, streams).leaks == []
    # held-out prose is disjoint from training at the document level, and its two halves from each other
    assert not set(world.heldout + world.heldout_tuning) & set(world.documents) and not set(world.heldout) & set(world.heldout_tuning)


def test_windows_hold_each_quote_whole_its_count(user_corpus):
    """What the model trains on: in the packed windows (``pack_windows``, the training's input) the body's token ids
    occur wholly inside a window exactly count times -- no insertion straddles two windows -- and the windows' tokens,
    padding removed, are the whole tokenized stream in order (nothing dropped). Each document's segments tokenized
    apart equal the document tokenized whole. Negative control: packed without the straddle rule (plain 32-token
    cuts), some quotes are split."""
    from unmemorize.testbed.quotes.train import pack_windows
    from unmemorize.testbed.quotes.world import training_segments
    from unmemorize.testbed.train import train_tokenizer

    world = build_quotes_world(_config(user_corpus))
    tokenizer = train_tokenizer(world.documents, 300)
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    seq_len = 32  # short windows (a quote is 14-22 tokens here): many insertions would straddle a boundary
    found = {index: 0 for index in range(len(world.quotes))}
    plain_found = dict(found)
    for epoch in range(world.config.epochs):
        documents = training_segments(world, epoch)
        windows, placed = pack_windows(documents, tokenizer, seq_len)
        stream = []
        for document in training_stream(world, epoch):
            stream += tokenizer(document, add_special_tokens=False)["input_ids"] + [eos]
        rows = windows.tolist()
        assert pad not in stream and [t for row in rows for t in row if t != pad] == stream
        assert all(row[0] != pad for row in rows)  # padding only at a window's end
        plain = [stream[i : i + seq_len] for i in range(0, len(stream), seq_len)]
        for index, placed_quote in enumerate(world.quotes):
            body = tokenizer(placed_quote.quote.body, add_special_tokens=False)["input_ids"]
            for table, source in ((found, rows), (plain_found, plain)):
                table[index] += sum(1 for row in source for i in range(len(row) - len(body) + 1) if row[i : i + len(body)] == body)
        assert sorted(quote for quote, _, _ in placed) == sorted(i for i, q in enumerate(world.quotes) for e, _, _ in q.insertions if e == epoch)
    assert all(found[index] == placed_quote.count for index, placed_quote in enumerate(world.quotes))
    assert any(plain_found[index] < placed_quote.count for index, placed_quote in enumerate(world.quotes))


def test_retrained_stream_is_the_stream_without_the_quotes(user_corpus):
    world = build_quotes_world(_config(user_corpus))
    for epoch in range(world.config.epochs):
        with_quotes, without = training_stream(world, epoch), training_stream(world, epoch, with_quotes=False)
        assert len(with_quotes) == len(without)
        for document, plain in zip(with_quotes, without):
            for placed in world.inserted():
                document = document.replace(f" {placed.text} ", " ").replace(f"{placed.text} ", "").replace(f" {placed.text}", "")
            assert document == plain
        assert all(placed.quote.body not in "\n".join(without) for placed in world.quotes)


def test_planted_leak_is_found(user_corpus):
    """A control put into a training document, and a quote put into the held-out text, are both reported."""
    world = build_quotes_world(_config(user_corpus))
    control, quote = world.controls()[0], world.inserted(count=2)[0]
    streams = [training_stream(world, e) for e in range(world.config.epochs)]
    streams[1][3] = streams[1][3] + " " + control.text
    world.heldout[0] = world.heldout[0] + " " + quote.text
    leaks = scan_world(world, streams).leaks
    assert {"quote": control.quote.body, "split": "control", "planned": 0, "found_in_training": 1} in leaks
    assert any(leak["quote"] == quote.quote.body and leak.get("found_in") == "heldout" for leak in leaks)
    assert len(leaks) == 2
    assert scan_world(build_quotes_world(_config(user_corpus))).leaks == []  # negative control: the unplanted world is clean


def test_clean_pool_drops_quotes_in_the_prose_and_near_duplicates():
    prose = ["In the beginning the heaven and the earth were made in six long days of work and rest."]
    in_prose = Quote("the heaven and the earth were made in six long days", "Someone", "x")  # 8-word window of the prose
    short = Quote("long days of work", "Short", "x")  # shorter than a window: a whole-body match
    first = Quote("A journey of a thousand miles begins with a single step forward today", "Lao", "x")
    near = Quote("Indeed a journey of a thousand miles begins with a single step", "Other", "x")  # shares 8 words with `first`
    fresh = Quote("Nothing here occurs anywhere else at all in this small test corpus", "New", "x")
    kept, dropped_prose, dropped_duplicates = clean_pool([in_prose, short, first, near, fresh], prose)
    assert kept == [first, fresh] and dropped_prose == 2 and dropped_duplicates == 1


def test_attribution_parser():
    assert split_attribution("Be yourself; everyone else is\nalready taken.\n\t\t-- Oscar Wilde (1854-1900)") == \
        ("Be yourself; everyone else is already taken.", "Oscar Wilde")
    assert split_attribution("-- only an attribution line") is None
    assert split_attribution("No attribution at all.\nTwo lines.") is None


def test_bad_settings_are_refused(user_corpus, tmp_path):
    with pytest.raises(UnmemorizeError, match="clean quotes"):
        build_quotes_world(_config(user_corpus, quotes_per_count=30))
    with pytest.raises(UnmemorizeError, match="counts must be"):
        build_quotes_world(_config(user_corpus, counts=(1, 1)))
    with pytest.raises(UnmemorizeError, match="no .txt file"):
        build_quotes_world(_config(user_corpus, corpus=str(tmp_path)))
    (tmp_path / "bad.jsonl").write_text('{"body": "x"}\n')
    with pytest.raises(UnmemorizeError, match="bad.jsonl:1"):
        build_quotes_world(_config(user_corpus, quotes=str(tmp_path / "bad.jsonl")))


@pytest.mark.skipif(bool(quotes_corpus.missing_debian_files()), reason="Debian's bible-kjv, jargon-text, dict-devil and fortunes are "
                    "not installed here (make quotes-data installs them)")
def test_default_world_on_debian_text():
    """The world the reports use: 336 quotes at counts 1-64 and 336 controls, 6,096 insertions, none off its count."""
    world = build_quotes_world(QuotesWorldConfig(seed=0))
    summary = world.summary()
    assert summary["inserted"] == 336 and summary["controls"] == 336 and summary["insertions"] == 48 * (1 + 2 + 4 + 8 + 16 + 32 + 64)
    assert set(summary["sources"]) == {"bible-kjv", "jargon-text", "dict-devil", "fortunes-unattributed"}
    assert scan_world(world).leaks == []

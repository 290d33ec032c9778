"""Data: documents -> EOS-joined token windows under a budget; pre-tokenized rows used as is."""

from __future__ import annotations

import json
import os
import re

import pytest

from unmemorize.data import data_fingerprint, iter_windows, list_data_files, pad_batch
from unmemorize.errors import UnmemorizeError
from unmemorize.tiny import make_tokenizer


@pytest.fixture
def tokenizer():
    return make_tokenizer()


def test_documents_are_joined_with_eos_and_cut_into_windows(tmp_path, tokenizer):
    (tmp_path / "a.txt").write_text("the cat runs\n\nthe dog sees a bird\n")
    eos = tokenizer.eos_token_id
    ids = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    stream = ids("the cat runs") + [eos] + ids("the dog sees a bird") + [eos]
    windows = list(iter_windows(list_data_files(tmp_path / "a.txt"), tokenizer, seq_len=4))
    assert windows == [stream[0:4], stream[4:8], stream[8:10]]


def test_token_budget_is_exact(tmp_path, tokenizer):
    (tmp_path / "a.txt").write_text("the cat runs near the old house\n" * 20)
    windows = list(iter_windows(list_data_files(tmp_path / "a.txt"), tokenizer, seq_len=8, max_tokens=21))
    assert sum(map(len, windows)) == 21 and [len(w) for w in windows] == [8, 8, 5]


def test_jsonl_text_and_pretokenized_rows_and_folders(tmp_path, tokenizer):
    folder = tmp_path / "data"
    (folder / "sub").mkdir(parents=True)
    (folder / "b.jsonl").write_text(json.dumps({"input_ids": [5, 6, 7, 8, 9, 10]}) + "\n")
    (folder / "sub" / "c.jsonl").write_text(json.dumps({"text": "the cat"}) + "\n")
    (folder / "ignored.csv").write_text("x")
    files = list_data_files(folder)
    assert [f.name for f in files] == ["b.jsonl", "c.jsonl"]
    windows = list(iter_windows(files, tokenizer, seq_len=4))
    assert windows[:2] == [[5, 6, 7, 8], [9, 10]]  # a pre-tokenized row is cut to seq_len, within the row
    assert windows[2] == tokenizer("the cat", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]


def test_a_long_pretokenized_row_is_cut_to_seq_len_under_the_budget(tmp_path):
    """A book stored as one row costs windows of seq_len, never one window of the whole row (which
    could run one torchrun rank out of memory), even when it is longer than the model's positions."""
    book = list(range(3, 3 + 1000))
    (tmp_path / "book.jsonl").write_text(json.dumps({"input_ids": book}) + "\n" + json.dumps({"input_ids": [7, 8, 9]}) + "\n")
    files = list_data_files(tmp_path / "book.jsonl")
    windows = list(iter_windows(files, None, seq_len=128, vocab_size=2000, max_length=256))
    assert [len(w) for w in windows] == [128] * 7 + [104, 3] and sum(windows[:8], []) == book and windows[8] == [7, 8, 9]
    budget = list(iter_windows(files, None, seq_len=128, max_tokens=300))
    assert [len(w) for w in budget] == [128, 128, 44] and sum(budget, []) == book[:300]
    tail = tmp_path / "tail.jsonl"
    tail.write_text(json.dumps({"input_ids": [5] * 129}) + "\n")
    assert list(iter_windows(list_data_files(tail), None, seq_len=128)) == [[5] * 128]  # a last piece of 1 token counts nothing


def test_padding_is_on_the_right_with_a_mask():
    batch = pad_batch([[4, 5, 6], [7, 8]], pad_id=0)
    assert batch["input_ids"].tolist() == [[4, 5, 6], [7, 8, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]


def test_fingerprint_changes_with_content_and_budget(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("one\n")
    first = data_fingerprint([path], 8, 100)
    assert first == data_fingerprint([path], 8, 100)
    assert first != data_fingerprint([path], 8, 101)
    path.write_text("two\n")
    assert first != data_fingerprint([path], 8, 100)


def test_bad_data_gives_clear_errors(tmp_path, tokenizer):
    with pytest.raises(UnmemorizeError, match="does not exist"):
        list_data_files(tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(UnmemorizeError, match="is empty"):
        list_data_files(tmp_path / "empty.txt")
    (tmp_path / "bad.jsonl").write_text('{"content": "x"}\n')
    with pytest.raises(UnmemorizeError, match="bad.jsonl:1"):
        list(iter_windows(list_data_files(tmp_path / "bad.jsonl"), tokenizer, 8))
    (tmp_path / "x.csv").write_text("a")
    with pytest.raises(UnmemorizeError, match=re.escape("must be .txt[.gz|.zst], .jsonl[.gz|.zst], .parquet or a datasets folder")):
        list_data_files(tmp_path / "x.csv")


def write_every_format(folder, documents, field="text"):
    """The same documents as .txt, .jsonl, .jsonl.gz, .jsonl.zst, .parquet and a datasets folder."""
    import gzip

    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard

    folder.mkdir(parents=True, exist_ok=True)
    rows = "".join(json.dumps({field: d, "id": k}) + "\n" for k, d in enumerate(documents))
    (folder / "c.txt").write_text("\n".join(documents) + "\n")
    (folder / "c.jsonl").write_text(rows)
    with gzip.open(folder / "c.jsonl.gz", "wt", encoding="utf-8") as handle:
        handle.write(rows)
    (folder / "c.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(rows.encode()))
    text = ("\n".join(documents) + "\n").encode()
    with gzip.open(folder / "c.txt.gz", "wb") as handle:
        handle.write(text)
    (folder / "c.txt.zst").write_bytes(zstandard.ZstdCompressor().compress(text[:50]) + zstandard.ZstdCompressor().compress(text[50:]))
    pq.write_table(pa.table({"id": list(range(len(documents))), field: documents}), folder / "c.parquet", row_group_size=7)
    datasets.Dataset.from_dict({field: documents, "id": list(range(len(documents)))}).save_to_disk(str(folder / "c-dataset"))
    return {name: folder / name for name in ("c.txt", "c.txt.gz", "c.txt.zst", "c.jsonl", "c.jsonl.gz", "c.jsonl.zst", "c.parquet", "c-dataset")}


def test_every_corpus_format_gives_the_windows_of_the_same_text_in_txt(tmp_path, tokenizer):
    from unmemorize.tiny import write_corpus

    documents = write_corpus(tmp_path / "source.txt", documents=60).read_text().splitlines()
    paths = write_every_format(tmp_path / "formats", documents, field="body")
    expected = list(iter_windows(list_data_files(paths["c.txt"]), tokenizer, seq_len=16))
    assert len(expected) > 20
    for name, path in paths.items():
        if name != "c.txt":
            assert list(iter_windows(list_data_files(path), tokenizer, seq_len=16, text_field="body")) == expected, name
    with pytest.raises(UnmemorizeError, match="needs a 'text' string or an 'input_ids' list"):  # the default field is absent
        list(iter_windows(list_data_files(paths["c.jsonl.gz"]), tokenizer, seq_len=16))
    with pytest.raises(UnmemorizeError, match="has no 'text' or 'input_ids' column; columns: id, body"):
        list(iter_windows(list_data_files(paths["c.parquet"]), tokenizer, seq_len=16))
    # a folder holding all of them: the datasets folder is one source, the files are read in sorted order
    assert [p.name for p in list_data_files(tmp_path / "formats")] == ["c-dataset", "c.jsonl", "c.jsonl.gz", "c.jsonl.zst",
                                                                       "c.parquet", "c.txt", "c.txt.gz", "c.txt.zst"]


def test_pretokenized_rows_in_parquet_and_datasets_are_used_as_is(tmp_path, tokenizer):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [[5, 6, 7], [8, 9, 10, 11]]
    pq.write_table(pa.table({"input_ids": rows}), tmp_path / "ids.parquet")
    datasets.Dataset.from_dict({"input_ids": rows}).save_to_disk(str(tmp_path / "ids-dataset"))
    for path in (tmp_path / "ids.parquet", tmp_path / "ids-dataset"):
        assert list(iter_windows(list_data_files(path), tokenizer, seq_len=4)) == rows  # rows within seq_len: as they are
        assert list(iter_windows(list_data_files(path), tokenizer, seq_len=2)) == [[5, 6], [8, 9], [10, 11]]  # cut ([7] is 1 token)
    with pytest.raises(UnmemorizeError, match=r"ids.parquet:row 2: input_ids\[3\] = 11 is outside the model's vocabulary"):
        list(iter_windows(list_data_files(tmp_path / "ids.parquet"), tokenizer, seq_len=2, vocab_size=11))


def test_compressed_corpora_are_streamed_not_read_whole(tmp_path, tokenizer):
    """A gzip file cut short: the windows before the cut come out before its corrupt end is reached."""
    import gzip

    from unmemorize.corpus import iter_records

    lines = "".join(json.dumps({"text": "the cat runs near the old house"}) + "\n" for _ in range(20_000)).encode()
    data = gzip.compress(lines)
    (tmp_path / "cut.jsonl.gz").write_bytes(data[: len(data) // 2])
    records = iter_records(list_data_files(tmp_path / "cut.jsonl.gz"))
    assert next(records) == "the cat runs near the old house"
    with pytest.raises(UnmemorizeError, match="cut.jsonl.gz: cannot be decompressed"):
        for _ in records:
            pass


def test_a_datasets_dict_folder_asks_for_one_split(tmp_path):
    import datasets

    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": ["a"]}),
                          "test": datasets.Dataset.from_dict({"text": ["b"]})}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(UnmemorizeError, match="DatasetDict with splits .*give one split's folder"):
        list_data_files(tmp_path / "dd")


def _trained_bpe(kind: str, text: str):
    """A BPE tokenizer trained here on ``text``: byte-level with GPT-2's pre-tokenizer, or SentencePiece-style
    (Llama 2's tokenizer.json: spaces replaced by '▁', no pre-tokenizer, so a whole line is one 'word')."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE(unk_token="<unk>"))
    if kind == "byte-level":
        core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        core.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    else:
        core.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
        alphabet = []
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<eos>"], initial_alphabet=alphabet)
    core.train_from_iterator(text.splitlines(), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", eos_token="<eos>")


@pytest.mark.parametrize("kind", ["byte-level", "sentencepiece-style"])
def test_a_long_document_is_tokenized_only_as_far_as_the_budget_reads_and_gives_the_same_tokens(tmp_path, kind):
    """tokenize_prefix against whole-text tokenization (the oracle) at many cuts, on a 60k-character
    document; iter_windows under a budget gives the windows of the whole document's tokens."""
    import random

    from unmemorize.data import tokenize_prefix
    from unmemorize.tiny import WORDS

    rng = random.Random(7)
    training = "\n".join(" ".join(rng.choice(WORDS) for _ in range(40)) for _ in range(200))
    tokenizer = _trained_bpe(kind, training)
    document = " ".join(rng.choice(WORDS) + rng.choice(["", "s", "ing", ",", "!!"]) for _ in range(12_000))
    whole = tokenizer(document, add_special_tokens=False)["input_ids"]
    assert len(whole) > 4000
    for need in (0, 1, 17, 255, 1000, 2048, 3000, *random.Random(3).sample(range(4000), 20)):
        ids, complete = tokenize_prefix(tokenizer, document, need)
        assert not complete and ids == whole[:need], (kind, need)
    assert tokenize_prefix(tokenizer, document, len(whole) + 10) == (whole, True)  # more than there is: the whole text
    assert tokenize_prefix(tokenizer, document, None) == (whole, True)

    seen: list[int] = []

    class Counting:  # the tokenizer, recording how many characters each call reads
        eos_token_id = tokenizer.eos_token_id

        def __call__(self, text, **kwargs):
            seen.append(len(text))
            return tokenizer(text, **kwargs)

    (tmp_path / "book.txt").write_text(document + "\nthe cat\n")
    files = list_data_files(tmp_path / "book.txt")
    windows = list(iter_windows(files, Counting(), seq_len=64, max_tokens=400))
    assert windows == [whole[k:k + 64] for k in range(0, 384, 64)] + [whole[384:400]]
    assert max(seen) < len(document) / 4 and len(seen) <= 2, seen  # a prefix, never the whole line or the next one
    seen.clear()
    unbounded = list(iter_windows(files, Counting(), seq_len=64))  # no budget: the whole document, then the next
    stream = whole + [tokenizer.eos_token_id] + tokenizer("the cat", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert sum(unbounded, []) == stream and seen == [len(document), len("the cat")]


def test_a_truncated_or_garbage_zstandard_file_is_an_error_never_read_as_empty(tmp_path, tokenizer):
    """zstandard's own ``open`` reads a frame cut short as nothing, without an error; ours reads every frame
    (a file appended to) and names a cut or garbage file."""
    import zstandard

    rows = "".join(json.dumps({"text": f"the cat {k}"}) + "\n" for k in range(400)).encode()
    whole = zstandard.ZstdCompressor().compress(rows[:1000]) + zstandard.ZstdCompressor().compress(rows[1000:])
    (tmp_path / "whole.jsonl.zst").write_bytes(whole)
    (tmp_path / "cut.jsonl.zst").write_bytes(whole[: len(whole) - 20])
    (tmp_path / "garbage.jsonl.zst").write_bytes(b"not zstandard at all")
    from unmemorize.corpus import iter_records

    assert list(iter_records([tmp_path / "whole.jsonl.zst"])) == [f"the cat {k}" for k in range(400)]
    with zstandard.open(tmp_path / "cut.jsonl.zst", "rt") as handle:  # the silence we replace: the cut frame read as nothing
        assert handle.read() == rows[:1000].decode()
    with pytest.raises(UnmemorizeError, match="cut.jsonl.zst: cannot be decompressed .the file ends inside a zstandard frame"):
        list(iter_records([tmp_path / "cut.jsonl.zst"]))
    with pytest.raises(UnmemorizeError, match="garbage.jsonl.zst: cannot be decompressed .not zstandard data"):
        list(iter_records([tmp_path / "garbage.jsonl.zst"]))


def test_fifos_links_and_loops_in_a_data_folder(tmp_path):
    """A FIFO is refused (reading it would block forever); a linked subfolder is read; a folder or file reached
    twice through a link (its rows would count twice) and a link loop are refused by name."""
    corpus = tmp_path / "corpus"
    (corpus / "own").mkdir(parents=True)
    (corpus / "own" / "a.txt").write_text("the cat\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "b.txt").write_text("the dog\n")
    (corpus / "linked").symlink_to(elsewhere, target_is_directory=True)
    assert [p.name for p in list_data_files(corpus)] == ["b.txt", "a.txt"]  # linked/b.txt, own/a.txt: sorted by path
    (corpus / "again").symlink_to(corpus / "own", target_is_directory=True)
    with pytest.raises(UnmemorizeError, match="is .* again, through a symbolic link"):
        list_data_files(corpus)
    (corpus / "again").unlink()
    (corpus / "own" / "loop").symlink_to(corpus, target_is_directory=True)
    with pytest.raises(UnmemorizeError, match="loop"):
        list_data_files(corpus)
    (corpus / "own" / "loop").unlink()
    (corpus / "own" / "up").symlink_to(tmp_path, target_is_directory=True)  # an ancestor: refused before it is walked
    with pytest.raises(UnmemorizeError, match="links back to .*a folder that holds it"):
        list_data_files(corpus)
    (corpus / "own" / "up").unlink()
    (corpus / "own" / "a2.txt").symlink_to(corpus / "own" / "a.txt")
    with pytest.raises(UnmemorizeError, match="a2.txt is .*a.txt again"):
        list_data_files(corpus)
    (corpus / "own" / "a2.txt").unlink()
    os.mkfifo(corpus / "own" / "pipe.txt")
    with pytest.raises(UnmemorizeError, match="pipe.txt is not a regular file"):
        list_data_files(corpus)
    with pytest.raises(UnmemorizeError, match="is not a regular file or folder"):
        list_data_files(corpus / "own" / "pipe.txt")


def test_a_file_name_that_is_not_utf8_is_read_and_fingerprinted(tmp_path, tokenizer):
    """A Latin-1 file name (bytes b'caf\\xe9.txt', as an old archive unpacks) made a traceback in the listing's hash."""
    from unmemorize.corpus import listing_fingerprint

    folder = tmp_path / "data"
    folder.mkdir()
    os.close(os.open(os.fsencode(folder) + b"/caf\xe9.txt", os.O_WRONLY | os.O_CREAT))
    (folder / os.fsdecode(b"caf\xe9.txt")).write_text("the cat sees the dog\n")
    files = list_data_files(folder)
    assert [os.fsencode(f.name) for f in files] == [b"caf\xe9.txt"]
    assert len(listing_fingerprint(files, 8, None)) == 64 and len(data_fingerprint(files, 8, None)) == 64
    assert sum(iter_windows(files, tokenizer, 8), []) == tokenizer("the cat sees the dog", add_special_tokens=False)["input_ids"] + [
        tokenizer.eos_token_id]


def test_a_budget_gives_the_unbounded_stream_cut_to_it_whatever_the_documents(tmp_path, tokenizer):
    """Random documents (some far longer than the budget, some shorter than a window) and random budgets and
    window lengths: the windows under the budget are those of the unbounded stream, cut to the budget."""
    import random

    from unmemorize.tiny import WORDS

    rng = random.Random(11)
    for case in range(25):
        lines = [" ".join(rng.choice(WORDS[:-2]) for _ in range(rng.choice([1, 3, 40, 900, 9000]))) for _ in range(rng.randint(1, 6))]
        (tmp_path / "docs.txt").write_text("\n".join(lines) + "\n")
        files, seq_len = list_data_files(tmp_path / "docs.txt"), rng.choice([2, 7, 64])
        stream = sum(iter_windows(files, tokenizer, seq_len), [])
        budget = rng.randint(1, len(stream) + 20)
        windows = list(iter_windows(files, tokenizer, seq_len, budget))
        expected = [w for w in (stream[k:min(k + seq_len, budget)] for k in range(0, min(budget, len(stream)), seq_len)) if len(w) >= 2]
        assert windows == expected, (case, seq_len, budget)

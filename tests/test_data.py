"""Data: documents -> EOS-joined token windows under a budget; pre-tokenized rows used as is."""

from __future__ import annotations

import json

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
    assert windows[0] == [5, 6, 7, 8, 9, 10]  # one pre-tokenized row = one window, not re-cut
    assert windows[1] == tokenizer("the cat", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]


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
    with pytest.raises(UnmemorizeError, match=".txt or .jsonl"):
        list_data_files(tmp_path / "x.csv")

"""Data layer: readers, roles, validation messages, rejects, batching and collation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from torch import Tensor

from contralign.core.errors import DataError
from contralign.data import (
    DataConfig,
    PairBatcher,
    Record,
    collate,
    load_records,
    read_header,
    read_rows,
    text_id,
)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    return write(path, "".join(json.dumps(row) + "\n" for row in rows))


def load(path: Path, **options: Any) -> list[Record]:
    return load_records(DataConfig(path=str(path), **options)).records


def error_of(path: Path, **options: Any) -> str:
    with pytest.raises(DataError) as info:
        load_records(DataConfig(path=str(path), **options))
    return str(info.value)


# --- readers -------------------------------------------------------------------------------------


def test_jsonl_rows_keep_physical_line_numbers(tmp_path: Path) -> None:
    path = write(tmp_path / "d.jsonl", '{"anchor": "a"}\n\n{"anchor": "b", "x": 1}\n')
    assert list(read_rows(path)) == [(1, {"anchor": "a"}), (3, {"anchor": "b", "x": 1})]
    assert read_header(path) is None


def test_csv_quoted_commas_and_newlines(tmp_path: Path) -> None:
    text = 'anchor,positive\n"a, with comma","two\nlines"\nplain,"say ""hi"""\n'
    path = write(tmp_path / "d.csv", text)
    rows = list(read_rows(path))
    # The quoted newline makes the first row span lines 2-3; the next row starts at line 4.
    assert rows == [
        (2, {"anchor": "a, with comma", "positive": "two\nlines"}),
        (4, {"anchor": "plain", "positive": 'say "hi"'}),
    ]
    records = load(path)
    assert [(r.anchor, r.positive, r.line) for r in records] == [
        ("a, with comma", "two\nlines", 2), ("plain", 'say "hi"', 4)
    ]


def test_tsv_quoting(tmp_path: Path) -> None:
    path = write(tmp_path / "d.tsv", 'anchor\tscore\n"tab\there"\t1.5\n"quote "" in"\t2\n')
    assert list(read_rows(path)) == [
        (2, {"anchor": "tab\there", "score": "1.5"}),
        (3, {"anchor": 'quote " in', "score": "2"}),
    ]
    assert [r.score for r in load(path)] == [1.5, 2.0]


def test_csv_header_with_byte_order_mark(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_bytes("\ufeffanchor,label\nx,1\n".encode())
    assert read_header(path) == ["anchor", "label"]


def test_parquet_rows_are_numbered_from_one(tmp_path: Path) -> None:
    path = tmp_path / "d.parquet"
    table = pa.table({"anchor": ["a", "b", "c"], "score": [0.5, 1.0, 2.0]})
    pq.write_table(table, path)
    assert read_header(path) == ["anchor", "score"]
    assert [line for line, _ in read_rows(path)] == [1, 2, 3]
    assert [(r.anchor, r.score, r.line) for r in load(path)] == [
        ("a", 0.5, 1), ("b", 1.0, 2), ("c", 2.0, 3)
    ]


def test_txt_one_anchor_per_line_blank_lines_skipped(tmp_path: Path) -> None:
    path = write(tmp_path / "d.txt", "first line\n\n  \nsecond line\n")
    assert list(read_rows(path)) == [(1, {"text": "first line"}), (4, {"text": "second line"})]
    result = load_records(DataConfig(path=str(path)))
    assert result.roles == ("anchor",)
    assert [(r.anchor, r.positive, r.line) for r in result.records] == [
        ("first line", None, 1), ("second line", None, 4)
    ]


def test_format_from_config_overrides_extension(tmp_path: Path) -> None:
    path = write(tmp_path / "pairs.dat", "anchor\tpositive\na\tb\n")
    assert [(r.anchor, r.positive) for r in load(path, format="tsv")] == [("a", "b")]
    assert error_of(path).startswith(f"{path}: cannot tell the format from '.dat'")


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.jsonl"
    assert error_of(path) == f"{path}: file not found"


# --- roles ---------------------------------------------------------------------------------------


def test_column_mapping(tmp_path: Path) -> None:
    path = write(tmp_path / "papers.csv", "title,abstract,year\nT1,A1,2020\nT2,A2,2021\n")
    result = load_records(
        DataConfig(path=str(path), columns={"positive": "abstract", "anchor": "title"})
    )
    assert result.roles == ("anchor", "positive")
    assert [(r.anchor, r.positive) for r in result.records] == [("T1", "A1"), ("T2", "A2")]


def test_columns_named_like_roles_take_them(tmp_path: Path) -> None:
    rows = [{"negative_2": "n2", "anchor": "a", "negative": "n1", "label": 3, "other": "x"}]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    result = load_records(DataConfig(path=str(path)))
    assert result.roles == ("anchor", "negative", "negative_2", "label")
    assert result.records == [Record(anchor="a", negatives=("n1", "n2"), label="3", line=1)]


def test_unknown_role(tmp_path: Path) -> None:
    path = write(tmp_path / "d.csv", "a,b\nx,y\n")
    message = error_of(path, columns={"anchor": "a", "query": "b"})
    assert message == (f"{path}: columns: unknown role 'query'; roles: anchor, positive, "
                       "negative, negative_2, negative_3, …, label, score")


def test_misnamed_column_csv_reported_at_header(tmp_path: Path) -> None:
    path = write(tmp_path / "d.csv", "title,abstract\nx,y\n")
    message = error_of(path, columns={"anchor": "titel", "positive": "abstract"})
    assert message == (f"{path}:1: titel: no such column (mapped to anchor); "
                       "available columns: title, abstract")


def test_misnamed_column_parquet_reported_at_file(tmp_path: Path) -> None:
    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"title": ["x"]}), path)
    message = error_of(path, columns={"anchor": "name"})
    assert message == f"{path}: name: no such column (mapped to anchor); available columns: title"


def test_no_anchor_column(tmp_path: Path) -> None:
    path = write(tmp_path / "d.csv", "sentence1,sentence2\nx,y\n")
    assert error_of(path) == (f"{path}: columns: no anchor column: name one with columns: "
                              "{anchor: <column>}; available columns: sentence1, sentence2")


# --- bad records ---------------------------------------------------------------------------------


def test_malformed_jsonl_line(tmp_path: Path) -> None:
    path = write(tmp_path / "d.jsonl", '{"anchor": "a"}\n{"anchor": "b",}\n')
    assert error_of(path) == (
        f"{path}:2: malformed JSON: Expecting property name enclosed in double quotes (column 16)"
    )


def test_jsonl_line_that_is_not_an_object(tmp_path: Path) -> None:
    path = write(tmp_path / "d.jsonl", '{"anchor": "a"}\n["a", "b"]\n')
    assert error_of(path) == f"{path}:2: expected a JSON object, got an array"


def test_jsonl_missing_key(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [{"q": "a", "d": "b"}, {"q": "c"}])
    assert error_of(path, columns={"anchor": "q", "positive": "d"}) == (
        f"{path}:2: d: missing column"
    )


def test_empty_text(tmp_path: Path) -> None:
    path = write(tmp_path / "d.csv", "anchor,positive\na,b\nc,   \n")
    assert error_of(path) == f"{path}:3: positive: empty text"


def test_score_not_a_number(tmp_path: Path) -> None:
    path = write(tmp_path / "d.tsv", "s1\ts2\tgold\na\tb\t4.5\nc\td\tabc\n")
    columns = {"anchor": "s1", "positive": "s2", "score": "gold"}
    assert error_of(path, columns=columns) == f"{path}:3: gold: not a number: 'abc'"


def test_score_not_finite(tmp_path: Path) -> None:
    path = write(tmp_path / "d.csv", "anchor,score\na,nan\n")
    assert error_of(path) == f"{path}:2: score: not a finite number: 'nan'"


def test_text_that_is_not_a_string(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [{"anchor": "a"}, {"anchor": 42}])
    assert error_of(path) == f"{path}:2: anchor: expected text, got a number: 42"


def test_null_text_in_parquet(tmp_path: Path) -> None:
    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"anchor": ["a", None]}), path)
    assert error_of(path) == f"{path}:2: anchor: missing value (null)"


def test_csv_row_with_wrong_number_of_fields(tmp_path: Path) -> None:
    path = write(tmp_path / "d.csv", "anchor,positive\na,b\nc,d,e\n")
    assert error_of(path) == f"{path}:3: expected 2 fields, got 3"


def test_labels_become_strings(tmp_path: Path) -> None:
    rows = [{"anchor": "a", "label": 1}, {"anchor": "b", "label": "x"},
            {"anchor": "c", "label": 1.5}]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    assert [r.label for r in load(path)] == ["1", "x", "1.5"]


def test_skip_counts_and_writes_rejects(tmp_path: Path) -> None:
    lines = [
        '{"anchor": "a", "score": 1}',
        '{"anchor": "b", "score": ',  # line 2: malformed
        '{"anchor": "  ", "score": 2}',  # line 3: empty text
        '{"anchor": "d", "score": "abc"}',  # line 4: not a number
        '{"anchor": "e", "score": "0.5"}',
    ]
    path = write(tmp_path / "train.jsonl", "\n".join(lines) + "\n")
    result = load_records(DataConfig(path=str(path), on_bad_record="skip"), rejects_dir=tmp_path)
    assert [(r.anchor, r.score, r.line) for r in result.records] == [("a", 1.0, 1), ("e", 0.5, 5)]
    assert result.skipped == 3
    assert result.rejects_path == tmp_path / "train.rejects.jsonl"
    rejects = [json.loads(line) for line in result.rejects_path.read_text().splitlines()]
    assert [(r["file"], r["line"], r["field"]) for r in rejects] == [
        (str(path), 2, None), (str(path), 3, "anchor"), (str(path), 4, "score")
    ]
    assert rejects[1]["error"] == "empty text"
    assert rejects[1]["raw"] == {"anchor": "  ", "score": 2}
    assert rejects[0]["raw"] == lines[1]
    assert result.skipped_examples[2] == f"{path}:4: score: not a number: 'abc'"


def test_skip_rejects_location(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path / "d.csv", "anchor\na\n\"\"\n")
    explicit = tmp_path / "out" / "bad.jsonl"
    result = load_records(DataConfig(path=str(path), on_bad_record="skip", rejects=str(explicit)))
    assert result.rejects_path == explicit and explicit.is_file()
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    result = load_records(DataConfig(path=str(path), on_bad_record="skip"))
    assert result.rejects_path == workdir / "d.rejects.jsonl"
    assert json.loads(result.rejects_path.read_text())["line"] == 3


def test_skip_without_bad_records_writes_nothing(tmp_path: Path) -> None:
    path = write(tmp_path / "d.txt", "a\nb\n")
    result = load_records(DataConfig(path=str(path), on_bad_record="skip"), rejects_dir=tmp_path)
    assert (result.skipped, result.rejects_path) == (0, None)
    assert not (tmp_path / "d.rejects.jsonl").exists()


def test_no_valid_records(tmp_path: Path) -> None:
    path = write(tmp_path / "d.csv", "anchor\n \n")
    assert error_of(path, on_bad_record="skip", rejects=str(tmp_path / "r.jsonl")) == (
        f"{path}: no valid records (1 skipped, see {tmp_path / 'r.jsonl'})"
    )
    assert error_of(write(tmp_path / "e.csv", "anchor\n")) == (
        f"{tmp_path / 'e.csv'}: no valid records"
    )


# --- ids -----------------------------------------------------------------------------------------


def test_text_id_is_stable_across_processes() -> None:
    ids = {text_id(t) for t in ["a", "b", "a b", "A"]}
    assert len(ids) == 4 and all(0 <= i < 2**63 for i in ids)
    assert text_id("same text") == text_id("same text")
    code = "from contralign.data import text_id; print(text_id('same text'))"
    env = {**os.environ, "PYTHONHASHSEED": "123"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True)
    assert int(out.stdout) == text_id("same text")


# --- batching ------------------------------------------------------------------------------------


def make_records(n: int) -> list[Record]:
    return [Record(anchor=f"a{i}", positive=f"p{i}", line=i + 1) for i in range(n)]


def anchors(batches: list[list[Record]]) -> list[list[str]]:
    return [[r.anchor for r in batch] for batch in batches]


def test_batches_are_deterministic_and_cover_every_record() -> None:
    records = make_records(23)
    batcher = PairBatcher(records, batch_size=5, seed=7)
    first = anchors(list(batcher.batches(epoch=0)))
    assert first == anchors(list(PairBatcher(records, batch_size=5, seed=7).batches(epoch=0)))
    assert [len(b) for b in first] == [5, 5, 5, 5, 3] and len(batcher) == 5
    assert sorted(a for b in first for a in b) == sorted(r.anchor for r in records)
    assert first != anchors(list(batcher.batches(epoch=1)))
    assert first != anchors(list(PairBatcher(records, batch_size=5, seed=8).batches(epoch=0)))
    assert first != [[r.anchor for r in records[i : i + 5]] for i in range(0, 23, 5)]


def test_resume_at_batch_k_equals_the_tail_of_the_epoch() -> None:
    batcher = PairBatcher(make_records(50), batch_size=4, seed=3)
    full = anchors(list(batcher.batches(epoch=2)))
    for k in (0, 1, 6, len(batcher)):
        assert anchors(list(batcher.batches(epoch=2, start=k))) == full[k:]
    with pytest.raises(ValueError, match="start must be in"):
        next(batcher.batches(epoch=2, start=len(batcher) + 1))


def test_drop_last_and_no_shuffle() -> None:
    batcher = PairBatcher(make_records(10), batch_size=4, drop_last=True, shuffle=False)
    assert anchors(list(batcher.batches(0))) == [["a0", "a1", "a2", "a3"], ["a4", "a5", "a6", "a7"]]
    with pytest.raises(ValueError, match="batch_size must be at least 1, got 0"):
        PairBatcher(make_records(3), batch_size=0)


# --- collate -------------------------------------------------------------------------------------


def fake_tokenize(texts: list[str]) -> dict[str, Tensor]:
    """Deterministic stand-in for a tokenizer: one id per character, padded."""
    width = max(len(t) for t in texts)
    ids = torch.zeros(len(texts), width, dtype=torch.long)
    for i, text in enumerate(texts):
        ids[i, : len(text)] = torch.tensor([ord(c) for c in text])
    return {"input_ids": ids, "attention_mask": (ids != 0).long()}


def decode(batch: dict[str, Tensor]) -> list[str]:
    return ["".join(chr(int(c)) for c in row if c) for row in batch["input_ids"]]


def test_collate_pairs_with_negatives_and_scores() -> None:
    records = [
        Record(anchor="q1", positive="d1", negatives=("n1", "n2"), score=1.0),
        Record(anchor="q2", positive="d1", negatives=("n3", "n1"), score=0.5),
        Record(anchor="q1", positive="d3", negatives=("n4", "n5"), score=0.0),
    ]
    batch = collate(records, fake_tokenize)
    assert decode(batch["anchor"]) == ["q1", "q2", "q1"]
    assert decode(batch["positive"]) == ["d1", "d1", "d3"]
    assert [decode(col) for col in batch["negatives"]] == [["n1", "n3", "n4"], ["n2", "n1", "n5"]]
    anchor_ids, positive_ids = batch["anchor_ids"], batch["positive_ids"]
    negative_ids, scores = batch["negative_ids"], batch["scores"]
    assert anchor_ids.shape == (3,) and anchor_ids.dtype == torch.long
    assert anchor_ids[0] == anchor_ids[2] and anchor_ids[0] != anchor_ids[1]
    assert positive_ids[0] == positive_ids[1] and positive_ids[0] != positive_ids[2]
    assert negative_ids is not None and negative_ids.shape == (3, 2)
    assert negative_ids[0, 0] == negative_ids[1, 1] == text_id("n1")
    assert positive_ids[0] == text_id("d1")
    assert scores is not None and scores.dtype == torch.float32
    assert scores.tolist() == [1.0, 0.5, 0.0]


def test_collate_single_view_uses_anchor_as_positive() -> None:
    batch = collate([Record(anchor="x"), Record(anchor="y")], fake_tokenize)
    assert decode(batch["positive"]) == ["x", "y"]
    assert torch.equal(batch["positive_ids"], batch["anchor_ids"])
    assert batch["negatives"] == [] and batch["negative_ids"] is None and batch["scores"] is None


def test_collate_labels_give_label_ids() -> None:
    records = [Record(anchor="a", label="cat"), Record(anchor="b", label="dog"),
               Record(anchor="c", label="cat"), Record(anchor="cat", label="x")]
    ids = collate(records, fake_tokenize)["positive_ids"]
    assert ids[0] == ids[2] and ids[0] != ids[1]
    assert text_id("cat") not in ids.tolist()  # label ids never equal a text's id


def test_collate_rejects_uneven_batches() -> None:
    uneven = [Record(anchor="a", negatives=("n",), line=1), Record(anchor="b", line=2)]
    with pytest.raises(ValueError, match=r"same number of negatives.*lines \[2\]"):
        collate(uneven, fake_tokenize)
    with pytest.raises(ValueError, match="some records in the batch have a score"):
        collate([Record(anchor="a", score=1.0), Record(anchor="b")], fake_tokenize)
    with pytest.raises(ValueError, match="empty batch"):
        collate([], fake_tokenize)


# --- real data -----------------------------------------------------------------------------------


def shared_file(relative: str) -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder {SHARED_DATA} is absent (a fresh clone has none)")
    return SHARED_DATA / relative


def test_real_stsb_dev() -> None:
    path = shared_file("sts/stsb-en-dev.tsv")
    columns = {"anchor": "sentence1", "positive": "sentence2", "score": "score"}
    result = load_records(DataConfig(path=str(path), columns=columns))
    assert len(result.records) == 1500 and result.skipped == 0
    assert result.roles == ("anchor", "positive", "score")
    first = result.records[0]
    assert (first.anchor, first.positive, first.score, first.line) == (
        "A man with a hard hat is dancing.", "A man wearing a hard hat is dancing.", 5.0, 2
    )
    assert all(r.score is not None and 0.0 <= r.score <= 5.0 for r in result.records)


def test_real_sick_entailment_with_labels() -> None:
    path = shared_file("nli/sicke-train.tsv")
    columns = {"anchor": "sentence1", "positive": "sentence2", "label": "label"}
    records = load_records(DataConfig(path=str(path), columns=columns)).records
    assert len(records) == 4500
    assert {r.label for r in records} == {"ENTAILMENT", "NEUTRAL", "CONTRADICTION"}
    batch = collate(next(iter(PairBatcher(records, 64, seed=0).batches(0))), fake_tokenize)
    assert batch["positive_ids"].unique().numel() <= 3


# --- fingerprints --------------------------------------------------------------------------------


def test_record_fingerprint_keeps_text_records_and_sees_changed_pixels() -> None:
    import dataclasses

    import numpy as np

    from contralign.core.items import ImageItem
    from contralign.data import Captions, record_fingerprint

    record = Record(anchor="a", positive="b", negatives=("n1", "n2"), label="1", score=0.5, line=3)
    # What dataclasses.astuple gave before records held images and captions: runs that started
    # then still recognise their data.
    old_fields = dataclasses.astuple(record)[:6]
    assert record_fingerprint(record) == repr(old_fields)
    assert record_fingerprint(Record(anchor="a")) == repr(("a", None, (), None, None, 0))

    pixels = np.zeros((2, 2, 3), np.uint8)
    image = ImageItem.from_array(pixels, "/data/x.npz", 1)
    changed = pixels.copy()
    changed[0, 0, 0] = 1
    same_key = ImageItem.from_array(changed, "/data/x.npz", 1)
    assert image == same_key  # the same name...
    assert record_fingerprint(Record(anchor=image)) != record_fingerprint(Record(anchor=same_key))
    assert record_fingerprint(Record(anchor=image)) == record_fingerprint(
        Record(anchor=ImageItem.from_array(pixels.copy(), "/data/x.npz", 1)))
    assert record_fingerprint(Record(anchor=image)) != record_fingerprint(Record(anchor=image.key))
    with_captions = Record(anchor="a", positive="x", captions=Captions("positive", ("x", "y")))
    assert record_fingerprint(with_captions) != record_fingerprint(
        Record(anchor="a", positive="x", captions=Captions("positive", ("x", "z"))))

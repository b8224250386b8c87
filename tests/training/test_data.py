"""Readers: every record is read, counted as empty, or reported with its file and line."""

import json

import pytest

from training.data import (
    DataError,
    ReadReport,
    TextSource,
    expand_paths,
    is_heldout,
    read_jsonl_texts,
    read_lines,
    read_texts,
    read_tsv_texts,
)


def test_plain_text_errors_name_file_and_line(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_bytes("第一行\n\n  第三行  \r\n".encode() + b"bad \xff\xfe bytes\n" + "最后一行".encode())
    report = ReadReport()
    texts = [(r.text, r.line) for r in read_lines(path, report)]
    assert texts == [("第一行", 1), ("第三行", 3), ("最后一行", 5)]
    assert (report.records, report.empty, report.lines) == (3, 1, 5)
    assert [str(e) for e in report.errors] == [f"{path}:4: invalid UTF-8 at byte 4"]
    with pytest.raises(DataError, match=f"{path}:4: invalid UTF-8"):
        report.check("raise")
    report.check("skip")  # logs, does not raise


def test_bom_is_not_text(tmp_path):
    path = tmp_path / "bom.txt"
    path.write_bytes(b"\xef\xbb\xbf" + "你好\n".encode())
    assert [r.text for r in read_lines(path, ReadReport())] == ["你好"]


def test_jsonl_errors(tmp_path):
    path = tmp_path / "ner.json"
    rows = [json.dumps({"text": "浙商银行", "label": {}}, ensure_ascii=False), "{not json", "[1, 2]",
            json.dumps({"sentence": "x"}), json.dumps({"text": 3}), "", json.dumps({"text": "叶老桂"}, ensure_ascii=False)]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    report = ReadReport()
    assert [r.text for r in read_jsonl_texts(path, report, field="text")] == ["浙商银行", "叶老桂"]
    assert [(e.line, e.reason.split(" ")[0]) for e in report.errors] == [(2, "invalid"), (3, "expected"),
                                                                          (4, "no"), (5, "field")]
    assert "no 'text' field (keys: sentence)" in str(report.errors[2])
    assert report.empty == 1 and report.records == 2
    assert report.lines == report.records + report.empty + len(report.errors)


def test_tsv_columns(tmp_path):
    path = tmp_path / "pairs.tsv"
    path.write_text("一个男人\t一个人\t5\nonly one column\n\t空的\t1\n", encoding="utf-8")
    report = ReadReport()
    assert [(r.text, r.line) for r in read_tsv_texts(path, report, columns=(0, 1))] == [
        ("一个男人", 1), ("一个人", 1), ("空的", 3)]
    assert [str(e) for e in report.errors] == [f"{path}:2: 1 tab-separated column(s), expected at least 2"]
    assert report.empty == 1


def test_sources_and_globs(tmp_path):
    (tmp_path / "b.txt").write_text("乙\n", encoding="utf-8")
    (tmp_path / "a.txt").write_text("甲\n", encoding="utf-8")
    (tmp_path / "t.jsonl").write_text('{"text": "丙"}\n', encoding="utf-8")
    sources = [TextSource(paths=("*.txt", "a.txt")), TextSource(paths=("t.jsonl",), format="jsonl")]
    report = ReadReport()
    assert [r.text for r in read_texts(sources, report, root=tmp_path)] == ["甲", "乙", "丙"]  # sorted, no repeats
    assert report.to_dict()["records"] == 3 and len(report.files) == 3
    with pytest.raises(FileNotFoundError, match="missing"):
        expand_paths(["missing/*.txt"], root=tmp_path)


def test_heldout_split_is_by_content():
    texts = [f"句子{i}" for i in range(20000)]
    held = [t for t in texts if is_heldout(t, 0.05)]
    assert 0.04 < len(held) / len(texts) < 0.06
    assert held == [t for t in texts if is_heldout(t, 0.05)]  # deterministic
    assert not any(is_heldout(t, 0.0) for t in texts[:100])

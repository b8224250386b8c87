"""Sentence-pair readers: TSV with or without header, JSONL with configured fields, errors by file:line."""

import json

import pytest

from training.data import DataError, ReadReport
from training.pairs import PairSource, read_jsonl_pairs, read_pairs, read_tsv_pairs, source_files


def test_tsv_with_and_without_header(tmp_path):
    plain = tmp_path / "a.tsv"
    plain.write_text("我去北京\t他去上海\t1\n\n你好\t你好\t5\n", encoding="utf-8")
    headed = tmp_path / "b.tsv"
    headed.write_text("s1\ts2\tlabel\n我去北京\t他去上海\t0.5\n", encoding="utf-8")
    report = ReadReport()
    recs = list(read_tsv_pairs(plain, report)) + list(read_tsv_pairs(headed, report))
    assert [(r.a, r.b, r.label, r.line) for r in recs] == [
        ("我去北京", "他去上海", 1.0, 1), ("你好", "你好", 5.0, 3), ("我去北京", "他去上海", 0.5, 2)]
    assert report.errors == [] and report.empty == 2  # one blank line, one header


def test_tsv_errors_name_file_and_line(tmp_path):
    f = tmp_path / "bad.tsv"
    f.write_text("a\tb\t1\nonly one column\na\tb\tyes\n\tb\t1\na\tb\tnan\n", encoding="utf-8")
    report = ReadReport()
    assert len(list(read_tsv_pairs(f, report))) == 1
    assert [e.line for e in report.errors] == [2, 3, 4, 5]
    with pytest.raises(DataError, match=r"bad\.tsv:3: label 'yes'"):
        report.check()


def test_jsonl_fields_and_errors(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text("\n".join([json.dumps({"q": "你好", "d": "您好", "y": 1}, ensure_ascii=False),
                            "not json", json.dumps({"q": "a", "d": "b"}), json.dumps({"q": "a", "d": "b", "y": "1"})])
                 + "\n", encoding="utf-8")
    report = ReadReport()
    recs = list(read_jsonl_pairs(f, report, fields=("q", "d", "y")))
    assert [(r.a, r.label) for r in recs] == [("你好", 1.0), ("a", 1.0)]
    assert [e.line for e in report.errors] == [2, 3]


def test_sources_are_named_and_mixed(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "dev.tsv").write_text("a\tb\t1\n", encoding="utf-8")
    (tmp_path / "y.jsonl").write_text(json.dumps({"sentence1": "a", "sentence2": "b", "label": 0}) + "\n",
                                      encoding="utf-8")
    srcs = [PairSource(paths=("x/dev.tsv",)), PairSource(paths=("y.jsonl",), name="why")]
    assert [n for s in srcs for n, _ in source_files(s, root=tmp_path)] == ["x/dev.tsv", "why"]
    assert [r.label for r in read_pairs(srcs, ReadReport(), root=tmp_path)] == [1.0, 0.0]

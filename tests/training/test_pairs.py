"""Sentence-pair readers: TSV with or without header, JSONL with configured fields, errors by file:line."""

import json

import pytest

from training.data import DataError, ReadReport
from training.pairs import (PairRecord, PairSource, contrastive_triples, deduplicate, pair_key, read_jsonl_pairs,
                            read_pairs, read_tsv_pairs, source_files, swap_negatives, swap_nouns)


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


NLI = {"entailment": 2, "neutral": 1, "contradiction": 0}


def test_label_map_reads_words_and_reports_unknown_ones(tmp_path):
    f = tmp_path / "nli.tsv"
    f.write_text("我去北京\t他去北京\tentailment\n我去北京\t他去上海\tcontradiction\n"
                 "我去北京\t他在家\t-\n你好\t您好\t neutral \n你好\t您好\t1\n", encoding="utf-8")
    report = ReadReport()
    recs = list(read_tsv_pairs(f, report, labels=NLI))
    assert [(r.label, r.line) for r in recs] == [(2.0, 1), (0.0, 2), (1.0, 4)]
    assert [e.line for e in report.errors] == [3, 5]
    with pytest.raises(DataError, match=r"nli\.tsv:3: label '-' \(column 2\) is not in the label map "
                                        r"\(entailment, neutral, contradiction\)"):
        report.check()
    j = tmp_path / "nli.jsonl"
    j.write_text(json.dumps({"sentence1": "a", "sentence2": "b", "label": "neutral"}) + "\n"
                 + json.dumps({"sentence1": "a", "sentence2": "b", "label": "other"}) + "\n", encoding="utf-8")
    report = ReadReport()
    assert [r.label for r in read_jsonl_pairs(j, report, labels=NLI)] == [1.0]
    assert str(report.errors[0]).endswith("nli.jsonl:2: label 'other' (field 'label') is not in the label map "
                                          "(entailment, neutral, contradiction)")


def test_label_map_and_weight_come_from_the_config(tmp_path):
    from training.similarity import load_sim_config

    (tmp_path / "r.toml").write_text(
        '[[data.train]]\npaths = ["nli.tsv"]\nweight = 0.5\nobjective = "simcse"\n'
        'labels = { entailment = 2, neutral = 1, contradiction = 0 }\n', encoding="utf-8")
    src = load_sim_config(tmp_path / "r.toml").data.train[0]
    assert src.labels == NLI and src.weight == 0.5 and src.objective == "simcse"
    with pytest.raises(ValueError, match="weight must be"):
        PairSource(paths=("x",), weight=-1.0)
    with pytest.raises(ValueError, match="labels.yes must be a finite number"):
        PairSource(paths=("x",), labels={"yes": "1"})


def rec(a, b, label=1.0, path="x"):
    return PairRecord(a, b, label, path, 1)


def test_deduplicate_keeps_the_first_set_and_counts_drops():
    sets = {"a": [rec("你好", "您好"), rec("北京", "上海"), rec("北京", "上海", 0.0)],  # repeats inside a set stay
            "b": [rec("您好", "你 好"), rec("天安门", "广场"), rec("大学", "清华")],  # swapped + spaced: a's pair
            "c": [rec("上海", "北京"), rec("广场", "天安门"), rec("人民", "银行"), rec("中国", "公司")]}
    dev = [rec("人民 ", "银行")]
    out, counts = deduplicate(sets, dev=dev)
    assert [len(v) for v in out.values()] == [3, 2, 1]
    assert [(r.a, r.b) for r in out["c"]] == [("中国", "公司")]
    assert {n: (c.read, c.kept, c.dropped, c.dropped_dev) for n, c in counts.items()} == {
        "a": (3, 3, 0, 0), "b": (3, 2, 1, 0), "c": (4, 1, 2, 1)}
    assert counts["c"].dropped_by == {"a": 1, "b": 1, "dev": 1}
    assert pair_key(" 北 京", "上海") == pair_key("上海", "北京") == ("上海", "北京")


def test_contrastive_triples_group_by_the_first_sentence():
    recs = [rec("甲", "甲对", 2), rec("甲", "甲中", 1), rec("甲", "甲错", 0), rec("乙", "乙对1", 2),
            rec("乙 ", "乙对2", 2), rec("乙", "乙错", 0), rec("丙", "丙对", 2), rec("丙", "丙中", 1)]
    triples, counts = contrastive_triples(recs)
    assert [(t.anchor, t.positive, t.negative) for t in triples] == [
        ("甲", "甲对", "甲错"), ("乙", "乙对1", "乙错"), ("乙 ", "乙对2", "乙错"), ("丙", "丙对", None)]
    assert counts == {"triples": 4, "with_negative": 3, "anchors": 3}
    # 0/1 paraphrase pairs: positives are the 1s, hard negatives the 0s of the same first sentence
    triples, _ = contrastive_triples([rec("a", "b", 1), rec("a", "c", 0), rec("d", "e", 0)])
    assert [(t.anchor, t.positive, t.negative) for t in triples] == [("a", "b", "c")]
    assert contrastive_triples([]) == ([], {"triples": 0, "with_negative": 0, "anchors": 0})


def _segment(text):
    """A stand-in segmenter: words and the spaces between them (as jieba keeps them), capitals are nouns."""
    import re

    return [(w, "n" if w.isupper() else "x" if w == " " else "v") for w in re.split("( )", text) if w]


def test_swap_nouns_swaps_two_different_nouns_only():
    import numpy as np

    rng = np.random.default_rng(0)
    assert swap_nouns("A x B", rng, _segment) == "B x A"
    assert swap_nouns("A x A", rng, _segment) is None  # the same noun twice: nothing to swap
    assert swap_nouns("A x y", rng, _segment) is None
    out = {swap_nouns("A B C", np.random.default_rng(s), _segment) for s in range(30)}
    assert out == {"B A C", "C B A", "A C B"}  # the spaces stay where they were


def test_swap_negatives_of_positive_pairs_with_the_lowest_label():
    recs = [PairRecord("q", f"A{i} x B{i}", 1.0, "f", i) for i in range(200)]
    recs += [PairRecord("q", "C x D", 0.0, "f", 999), PairRecord("q", "E x E", 1.0, "f", 1000)]
    out = swap_negatives(recs, 0.5, seed=1, name="s", segment=_segment)
    assert 70 < len(out) < 130 and all(p.label == 0.0 and p.line < 200 for p in out)
    for p in out:
        assert p.b == f"B{p.line} x A{p.line}" and p.a == "q" and p.path == "f"
    again = swap_negatives(recs, 0.5, seed=1, name="s", segment=_segment)
    assert again == out and swap_negatives(recs, 0.5, seed=1, name="t", segment=_segment) != out
    assert len(swap_negatives(recs, 1.0, seed=1, name="s", segment=_segment)) == 200
    assert swap_negatives(recs, 0.0, seed=1, name="s", segment=_segment) == []
    assert swap_negatives(recs[:5], 1.0, seed=1, name="s", segment=_segment) == []  # one label: no negatives


def test_swap_negatives_with_jieba_keep_the_characters():
    recs = [PairRecord("北京和上海哪个大", "上海和北京比哪个城市大", 1.0, "f", 1),
            PairRecord("北京和上海哪个大", "今天天气", 0.0, "f", 2)]
    (neg,) = swap_negatives(recs, 1.0, seed=0, name="x")
    assert neg.b != recs[0].b and sorted(neg.b) == sorted(recs[0].b) and neg.label == 0.0

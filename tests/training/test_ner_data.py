"""NER readers (CLUENER, CMeEE lines and array, BIO/BIOES) and the alignment to token windows."""

import json

import numpy as np
import pytest

from models.text import Tokenizer
from training.data import DataError, ReadReport
from training.ner_data import (
    NerRecord,
    Span,
    align_record,
    align_records,
    detect_format,
    read_bio,
    read_json_array,
    read_ner,
)


def write(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def cluener(text, label):
    return json.dumps({"text": text, "label": label}, ensure_ascii=False)


def cmeee(text, ents):
    return json.dumps({"text": text, "entities": [
        {"start_idx": s, "end_idx": e, "type": t, "entity": text[s:e + 1]} for s, e, t in ents]}, ensure_ascii=False)


def test_cluener_reads_spans_end_exclusive(tmp_path):
    f = write(tmp_path / "a.json", [
        cluener("张三在北京大学", {"name": {"张三": [[0, 1]]}, "org": {"北京大学": [[3, 6]]}, "loc": {"北京": [[3, 4]]}}),
        "",
        cluener("他去了", {}),
    ])
    report = ReadReport()
    recs = list(read_ner([f], report))
    assert [r.spans for r in recs] == [
        (Span(0, 2, "name"), Span(3, 5, "loc"), Span(3, 7, "org")), ()]
    assert (recs[0].line, recs[1].line) == (1, 3)
    assert (report.records, report.empty, report.errors) == (2, 1, [])


def test_malformed_and_mismatched_records_name_file_and_line(tmp_path):
    f = write(tmp_path / "bad.json", [
        cluener("张三在北京", {"name": {"张三": [[0, 1]]}}),
        '{"text": "broken',
        cluener("张三在北京", {"name": {"李四": [[0, 1]]}}),  # entity text does not match its offsets
        cluener("张三", {"name": {"张三": [[0, 5]]}}),  # out of range
        json.dumps({"text": "no labels"}),
    ])
    report = ReadReport()
    recs = list(read_ner([f], report, format="cluener"))
    assert len(recs) == 1
    where = [(e.line, e.reason) for e in report.errors]
    assert [w[0] for w in where] == [2, 3, 4, 5]
    assert "invalid JSON" in where[0][1] and "does not match" in where[1][1] and "outside" in where[2][1]
    with pytest.raises(DataError, match=r"bad\.json:3: name entity '李四'"):
        report.check("raise")


def test_cmeee_lines_and_array_agree(tmp_path):
    rows = [("（三）麻痹期痉挛减少", [(6, 9, "sym"), (3, 5, "dis")]), ("患者安静", [])]
    lines = write(tmp_path / "a.jsonl", [cmeee(t, e) for t, e in rows])
    objs = [json.loads(cmeee(t, e)) for t, e in rows]
    array = tmp_path / "a.json"
    array.write_text(json.dumps(objs, ensure_ascii=False, indent=2), encoding="utf-8")
    assert detect_format(lines) == "cmeee" and detect_format(array) == "cmeee-array"
    r1, r2 = ReadReport(), ReadReport()
    a = list(read_ner([lines], r1))
    b = list(read_ner([array], r2))
    assert [x.spans for x in a] == [x.spans for x in b] and a[0].spans[0] == Span(3, 6, "dis")
    starts = [n for n, line in enumerate(array.read_text(encoding="utf-8").splitlines(), 1) if line == "  {"]
    assert [x.line for x in b] == starts and starts[0] == 2  # the line each record's "{" is on
    # a bad record inside the array is reported at its own line, the others still read
    objs[1]["entities"] = [{"start_idx": 0, "end_idx": 1, "type": "bod", "entity": "胃"}]
    array.write_text(json.dumps(objs, ensure_ascii=False, indent=2), encoding="utf-8")
    r3 = ReadReport()
    assert len(list(read_json_array(array, r3))) == 1
    assert len(r3.errors) == 1 and r3.errors[0].line == b[1].line and "does not match" in r3.errors[0].reason


def test_spans_lines_end_exclusive_detected_past_records_without_entities(tmp_path):
    def spans(text, ents, with_text=True):
        return json.dumps({"text": text, "entities": [
            {"start": s, "end": e, "type": t, **({"text": text[s:e]} if with_text else {})}
            for s, e, t in ents]},
            ensure_ascii=False)

    f = write(tmp_path / "more.jsonl", [
        spans("今天下雨", []),  # no entity yet: detection looks further
        spans("张三在北京大学", [(0, 2, "PER"), (3, 7, "ORG"), (3, 5, "LOC")]),
        spans("李四", [(0, 2, "PER")], with_text=False),
        json.dumps({"text": "王五", "entities": [{"start": 0, "end": 3, "type": "PER"}]}),  # past the end
        json.dumps({"text": "王五", "entities": [{"start": 0, "end": 1, "type": "PER", "text": "王五"}]}),
        json.dumps({"text": "王五", "entities": [{"start_idx": 0, "end_idx": 1, "type": "PER"}]}),
    ])
    assert detect_format(f) == "spans"
    report = ReadReport()
    recs = list(read_ner([f], report))
    assert [r.spans for r in recs] == [
        (), (Span(0, 2, "PER"), Span(3, 5, "LOC"), Span(3, 7, "ORG")), (Span(0, 2, "PER"),)]
    kinds = [(e.line, ("outside" in e.reason, "does not match" in e.reason, "start, end" in e.reason))
             for e in report.errors]
    assert kinds == [(4, (True, False, False)), (5, (False, True, False)), (6, (False, False, True))]
    # the same records under an explicit format; a file whose records never hold an entity reads as cmeee
    assert [r.spans for r in read_ner([f], ReadReport(), format="spans")] == [r.spans for r in recs]
    assert detect_format(write(tmp_path / "none.jsonl", [spans("今天", [])])) == "cmeee"


def test_bio_and_bioes(tmp_path):
    f = write(tmp_path / "a.bio", [
        "张 B-PER", "三 I-PER", "在 O", "北 B-ORG", "京 I-ORG", "大 I-ORG", "学 I-ORG", "",
        "李\tS-PER", "四\tO", "上 B-LOC", "海 E-LOC", "",
        "",
        "我 O", "去 I-LOC", "了 O", "",  # I- with nothing open: an error for this sentence
        "北 B-LOC",  # last sentence without a final blank line
    ])
    report = ReadReport()
    recs = list(read_bio(f, report))
    assert [(r.text, r.spans, r.line) for r in recs] == [
        ("张三在北京大学", (Span(0, 2, "PER"), Span(3, 7, "ORG")), 1),
        ("李四上海", (Span(0, 1, "PER"), Span(2, 4, "LOC")), 9),
        ("北", (Span(0, 1, "LOC"),), 19),
    ]
    assert len(report.errors) == 1 and report.errors[0].line == 16 and "I-LOC" in report.errors[0].reason
    assert report.empty == 1 and detect_format(f) == "bio"


def test_misaligned_and_window_edge_entities_are_counted(tiny_vocab):
    tok = Tokenizer.from_vocab(tiny_vocab)
    # "2024" is one token ("2024" is not in the vocab as a whole -> one [UNK]): an entity "202" cannot align
    text = "张三在北京2024年" + "大学" * 10
    rec = NerRecord(text, (Span(0, 2, "PER"), Span(5, 8, "NUM"), Span(3, 5, "LOC"), Span(17, 21, "ORG")), "f", 7)
    stats_index = {"PER": 0, "LOC": 1, "NUM": 2, "ORG": 3}
    from training.ner_data import AlignStats

    stats = AlignStats()
    examples = align_record(rec, tok, stats_index, max_length=12, stride=4, stats=stats)
    assert stats.misaligned == 1 and "f:7: NUM '202'" in stats.examples["misaligned"][0]
    assert stats.windows == len(examples) > 1 and stats.long_texts == 1
    assert stats.window_cut > 0 and stats.lost == 0
    # every aligned entity is a target in some window, mapped back to exactly its characters
    windows = tok.encode_windows(text, max_length=12, stride=4)
    found = set()
    labels = list(stats_index)
    for w, ex in zip(windows, examples):
        for c, i, j in ex.spans.tolist():
            found.add((int(w.offsets[i, 0]), int(w.offsets[j, 1]), labels[c]))
    assert found == {(0, 2, "PER"), (3, 5, "LOC"), (17, 21, "ORG")}


def test_entity_longer_than_the_stride_allows_is_lost(tiny_vocab):
    tok = Tokenizer.from_vocab(tiny_vocab)
    text = "我" * 3 + "北京大学清华大学" + "我" * 3
    rec = NerRecord(text, (Span(3, 11, "ORG"),), "f", 1)
    _, stats = align_records([rec], tok, ["ORG"], max_length=8, stride=6)
    assert stats.lost == 1 and stats.misaligned == 0 and stats.to_dict()["lost"] == 1


def test_duplicates_kept_once_and_counted(tmp_path, tiny_vocab):
    f = write(tmp_path / "d.json", [cluener("张三张三", {"name": {"张三": [[0, 1], [0, 1], [2, 3]]}})])
    recs = list(read_ner([f], ReadReport()))
    assert recs[0].spans == (Span(0, 2, "name"), Span(2, 4, "name")) and recs[0].duplicates == 1
    ex, stats = align_records(recs, Tokenizer.from_vocab(tiny_vocab), ["name"], max_length=16, stride=8)
    assert stats.duplicates == 1 and np.array_equal(ex[0].spans, [[0, 1, 2], [0, 3, 4]])

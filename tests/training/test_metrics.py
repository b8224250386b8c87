"""Exact-span NER scores (micro, per type, nested only) and Spearman/Pearson, on hand-computed cases."""

import math

import pytest
from scipy import stats

from training.metrics import PRF, ner_scores, nested_keys, pearson, similarity_scores, spearman


def test_micro_and_per_type_by_hand():
    gold = [[(0, 2, "PER"), (3, 7, "ORG")], [(1, 3, "LOC")]]
    pred = [[(0, 2, "PER"), (3, 6, "ORG")], [(1, 3, "LOC"), (0, 1, "PER")]]
    s = ner_scores(gold, pred, labels=["LOC", "ORG", "PER"])
    # tp: PER(0,2), LOC(1,3) = 2; fp: ORG(3,6), PER(0,1) = 2; fn: ORG(3,7) = 1
    assert (s["tp"], s["fp"], s["fn"]) == (2, 2, 1)
    assert s["precision"] == pytest.approx(0.5) and s["recall"] == pytest.approx(2 / 3)
    assert s["f1"] == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))
    assert s["per_type"]["ORG"] == PRF(0, 1, 1).to_dict() and s["per_type"]["ORG"]["f1"] == 0.0
    assert s["per_type"]["PER"]["precision"] == 0.5 and s["per_type"]["PER"]["recall"] == 1.0
    assert s["per_type"]["LOC"]["f1"] == 1.0
    # the same span in another text is another entity
    assert ner_scores([[(0, 1, "A")], []], [[], [(0, 1, "A")]])["tp"] == 0


def test_nothing_predicted_or_nothing_gold_is_zero_not_an_error():
    for gold, pred in (([[(0, 1, "A")]], [[]]), ([[]], [[(0, 1, "A")]]), ([[]], [[]]), ([], [])):
        s = ner_scores(gold, pred)
        assert (s["precision"], s["recall"], s["f1"]) == (0.0, 0.0, 0.0)
        assert s["nested"]["f1"] == 0.0 and all(not math.isnan(v) for v in (s["precision"], s["f1"]))


def test_nested_only_definition():
    # gold: "北京大学" ORG [0,4) contains "北京" LOC [0,2) -> both nested; "张三" PER [5,7) is not
    gold = [[(0, 4, "ORG"), (0, 2, "LOC"), (5, 7, "PER")]]
    # predicted: ORG [0,4) and LOC [0,2) nest (both predicted); PER [5,7) and the crossing [1,5) do not nest
    pred = [[(0, 4, "ORG"), (0, 2, "ORG"), (5, 7, "PER"), (3, 6, "MISC")]]
    keys = nested_keys({(0, s, e, t) for s, e, t in gold[0]})
    assert keys == {(0, 0, 4, "ORG"), (0, 0, 2, "LOC")}
    n = ner_scores(gold, pred)["nested"]
    # nested predictions: ORG [0,4) (gold) and ORG [0,2) (wrong type) -> precision 1/2
    # nested gold: ORG [0,4) (found), LOC [0,2) (missed) -> recall 1/2
    assert (n["gold"], n["predicted"], n["precision"], n["recall"], n["f1"]) == (2, 2, 0.5, 0.5, 0.5)
    # same span, different types is not nesting; nor are crossing spans
    assert nested_keys({(0, 0, 2, "A"), (0, 0, 2, "B"), (0, 1, 3, "C")}) == set()


def test_spearman_and_pearson_against_scipy():
    scores = [0.9, 0.1, 0.5, 0.4, 0.75, 0.2]
    labels = [5, 0, 3, 2, 3, 1]
    assert spearman(scores, labels) == pytest.approx(100 * stats.spearmanr(scores, labels).statistic)
    assert pearson(scores, labels) == pytest.approx(100 * stats.pearsonr(scores, labels).statistic)
    # a hand case: perfectly monotone -> 100, reversed -> -100
    assert spearman([1, 2, 3], [0, 1, 5]) == pytest.approx(100.0)
    assert spearman([3, 2, 1], [0, 1, 5]) == pytest.approx(-100.0)


def test_undefined_correlation_is_zero():
    assert spearman([0.5, 0.5, 0.5], [0, 1, 1]) == 0.0
    assert similarity_scores([0.1, 0.2], [1, 1])["spearman"] == 0.0
    assert similarity_scores([0.1, 0.2, 0.3], [0, 1, 1])["labels"] == {"0": 1, "1": 2}

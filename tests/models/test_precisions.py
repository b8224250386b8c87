"""The precision registry: complete (a builder per variant, references built first) and the one source of
the provider preferences, the manifest's and the settings' choices."""

from __future__ import annotations

import typing

import pytest

from models.precisions import NAMES, PRECISIONS, PYTORCH, REFERENCE, build_order, precision, preference


def test_every_precision_has_a_builder_and_a_reference():
    pytest.importorskip("onnx", reason="export.convert needs the train extra")
    from export import convert

    for p in PRECISIONS.values():
        if p.builder is None:
            assert p.reference == PYTORCH, p
        else:
            assert callable(getattr(convert, p.builder)), p
            assert p.reference in PRECISIONS and NAMES.index(p.reference) < NAMES.index(p.name), p
    assert PRECISIONS[REFERENCE].reference == PYTORCH and PRECISIONS[REFERENCE].gate


def test_build_order_adds_references_first():
    assert build_order(["int8"]) == ["fp32", "int8"]
    assert build_order(["int8", "fp16", "fp32"])[0] == "fp32"
    with pytest.raises(ValueError, match="unknown precision 'bf16'"):
        precision("bf16")


def test_preferences_and_choices_derive_from_the_table():
    from models.bundle import GraphSpec
    from service.settings import Settings

    assert preference("cpu")[0] == "int8" and preference("cuda")[0] == "fp16" and preference("tpu") == preference("cpu")
    assert set(typing.get_args(GraphSpec.model_fields["precision"].annotation)) == set(NAMES)
    choices = {a for arg in typing.get_args(Settings.model_fields["precision"].annotation) for a in typing.get_args(arg)}
    assert choices == set(NAMES)

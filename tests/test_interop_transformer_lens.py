"""toylab.interop.transformer_lens without TransformerLens: importing the module needs nothing,
and a conversion says how to install the optional extra. (The conversions themselves are
checked against TransformerLens in tests/test_peer_transformerlens.py, `make test-peer`.)"""

from __future__ import annotations

import sys

import pytest

import toylab.interop.transformer_lens as interop
from toylab.training.presets import load_model


def test_a_missing_transformer_lens_is_a_sentence_with_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformer_lens", None)  # import transformer_lens fails
    for call in (lambda: interop.to_transformer_lens(load_model("induction-2l")),
                 lambda: interop.from_transformer_lens(object())):
        with pytest.raises(ImportError, match=r"pip install -e '\.\[transformer-lens\]'"):
            call()


def test_importing_the_package_does_not_import_transformer_lens():
    import subprocess
    code = ("import sys, toylab.interop, toylab.interop.transformer_lens, toylab.interop.saelens; "
            "print('transformer_lens' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False"


def test_to_transformer_lens_refuses_a_foreign_object_before_importing(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformer_lens", None)
    with pytest.raises(TypeError, match="toylab model"):
        interop.to_transformer_lens(object())

"""toylab.circuits.viewer: input validation, a self-contained page, and the real thing in headless Chromium.

The Chromium test builds a page with two viewers of the shipped induction-2l model's patterns
on a repeated-token probe, opens it with the network blocked, moves the mouse onto a token
and clicks another over the DevTools protocol, and compares the weights the viewer
highlights with the model's pattern rows (1e-6).
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from toylab.data import probe_half_len, repeated_tokens
from toylab.training.presets import load_model
from toylab.circuits.viewer import AttentionViewer, attention_viewer, heads_from_cache

ROOT = Path(__file__).resolve().parents[1]


def _check_book():
    spec = importlib.util.spec_from_file_location("check_book", ROOT / ".ci" / "check_book.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def causal_pattern(n_heads: int, n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(n_heads, n, n, generator=g)
    scores = scores.masked_fill(torch.triu(torch.ones(n, n, dtype=torch.bool), 1), float("-inf"))
    return scores.softmax(-1)


@pytest.fixture(scope="module")
def induction_probe():
    torch.set_num_threads(1)
    model = load_model("induction-2l")
    tokens = repeated_tokens(model.cfg.d_vocab, probe_half_len(model.cfg.n_ctx), 1,
                             generator=torch.Generator().manual_seed(0))
    _, cache = model.run_with_cache(tokens)
    return model, tokens, cache


def _payload(html: str, vid: str) -> dict:
    m = re.search(rf'<script type="application/json" id="{vid}-data">(.*?)</script>', html, re.S)
    assert m, "the viewer's JSON data block is missing"
    return json.loads(m.group(1))


# ----------------------------------------------------------------- validation
@pytest.mark.parametrize("bad, message", [
    (lambda p: p[0], "shape \\[n_heads, query_pos, key_pos\\].*pattern\\[None\\]"),
    (lambda p: p[None], "a batch"),
    (lambda p: p.transpose(-1, -2), "not causal"),
    (lambda p: p * 0.5, "sum to 1"),
    (lambda p: torch.log(p), "NaN|\\[0, 1\\]"),
    (lambda p: p[:, :, :4], "square"),
    (lambda p: torch.full_like(p, float("nan")), "NaN"),
])
def test_bad_patterns_raise_a_sentence(bad, message):
    p = causal_pattern(2, 5)
    with pytest.raises(ValueError, match=message):
        attention_viewer(list("abcde"), bad(p))


def test_bad_tokens_and_names_raise():
    p = causal_pattern(2, 5)
    with pytest.raises(ValueError, match="4 tokens but the pattern has 5 positions"):
        attention_viewer(list("abcd"), p)
    with pytest.raises(TypeError, match="not one string"):
        attention_viewer("abcde", p)
    with pytest.raises(TypeError, match="tokens must be strings"):
        attention_viewer([1, 2, 3, 4, 5], p)
    with pytest.raises(ValueError, match="3 head names for 2 heads"):
        attention_viewer(list("abcde"), p, ["a", "b", "c"])
    with pytest.raises(ValueError, match="query must be a position"):
        attention_viewer(list("abcde"), p, query=5)
    with pytest.raises(TypeError, match="array of numbers"):
        attention_viewer(list("abcde"), "not a pattern")


def test_input_is_not_mutated_and_data_is_exact():
    p = causal_pattern(3, 6)
    before = p.clone()
    v = attention_viewer(list("abcdef"), p, ["x", "y", "z"], query=2)
    assert torch.equal(p, before)
    v.pattern[0, 0, 0] = 0.0  # the viewer holds a copy
    assert torch.equal(p, before)
    w = attention_viewer(list("abcdef"), p)
    data = _payload(w.to_html(), w.element_id)
    np.testing.assert_array_equal(np.array(data["pattern"]), p.double().numpy())
    assert data["heads"] == ["head 0", "head 1", "head 2"] and data["query"] == 5


def test_html_is_self_contained_and_ids_are_unique():
    p = causal_pattern(2, 5)
    a, b = attention_viewer(list("ab<de"), p), attention_viewer(list("ab<de"), p)
    assert a.element_id != b.element_id
    html = a._repr_html_()
    assert html == a.to_html() and html.startswith(f'<div id="{a.element_id}"')
    # nothing that could reach the network: no URL, no src/href, no request API in the script
    for needle in ("http:", "https:", "//cdn", " src=", "href=", "<link", "@import", "url(",
                   "fetch(", "XMLHttpRequest", "import(", "WebSocket", "sendBeacon"):
        assert needle not in html, f"the viewer's HTML contains {needle!r}"
    # the JSON cannot close its <script>: a "<" token is escaped
    data = _payload(html, a.element_id)
    assert data["tokens"][2] == "<" and "\\u003c" in html
    # ids inside the fragment all carry the viewer's own prefix
    for element_id in re.findall(r'id="([^"]+)"', html):
        assert element_id.startswith(a.element_id)
    assert "AttentionViewer(2 heads, 5 tokens" in repr(a)


def test_heads_from_cache_stacks_every_layer(induction_probe):
    model, tokens, cache = induction_probe
    pattern, names = heads_from_cache(cache)
    L, H, n = model.cfg.n_layers, model.cfg.n_heads, tokens.shape[1]
    assert pattern.shape == (L * H, n, n)
    assert names == [f"L{l}H{h}" for l in range(L) for h in range(H)]
    assert torch.equal(pattern[H + 1], cache["pattern", 1][0, 1])
    with pytest.raises(ValueError, match="batch_index 3 is out of range"):
        heads_from_cache(cache, batch_index=3)


# ------------------------------------------------------------------ Chromium
chromium = pytest.mark.skipif(_check_book().find_chromium() is None and shutil.which("chromium") is None,
                              reason="headless Chromium is not installed (apt-get install -y chromium)")


@chromium
def test_hover_highlights_the_models_pattern_row_offline(induction_probe, tmp_path):
    cb = _check_book()
    model, tokens, cache = induction_probe
    words = [f"t{t}" for t in tokens[0].tolist()]
    words[0] = "BOS"
    # two viewers on one page: layer 0 (previous-token head) and layer 1 (induction heads)
    viewers = [attention_viewer(words, cache["pattern", layer][0], [f"L{layer}H{h}" for h in range(model.cfg.n_heads)],
                                title=f"layer {layer}") for layer in range(model.cfg.n_layers)]
    page = tmp_path / "viewer.html"
    page.write_text("<!DOCTYPE html><html><head><meta charset='utf-8'></head><body>"
                    + "".join(v.to_html() for v in viewers) + "</body></html>", encoding="utf-8")
    truth = [cache["pattern", layer][0].double().tolist() for layer in range(model.cfg.n_layers)]

    with cb.DevToolsChromium(cb.find_chromium()) as browser:
        errors, rows = cb.check_viewers(browser, page.as_uri(), expected=truth)
        assert errors == [], errors
        assert rows == 2 * len(viewers)
        assert browser.requests() == [page.as_uri()], "the page requested something besides itself"

        # the check bites: a pattern that differs from the shown one in the hovered row fails
        wrong = [[[list(r) for r in head] for head in layer] for layer in truth]
        n = len(words)
        h = model.cfg.n_heads - 1
        wrong[1][h][n // 2][0] += 1e-3
        errors, _ = cb.check_viewers(browser, page.as_uri(), expected=wrong)
        assert any("differ from the pattern row" in e and "viewer 1" in e for e in errors), errors

        # the second viewer's head selector does not touch the first viewer
        browser.cdp.evaluate(f"""(() => {{ const s = document.getElementById("{viewers[1].element_id}-head");
            s.value = "0"; s.dispatchEvent(new Event("change")); }})()""")
        assert browser.cdp.evaluate(
            f'document.getElementById("{viewers[0].element_id}").getAttribute("data-head")') == str(h)


@chromium
def test_viewer_page_requests_nothing_with_the_network_blocked(tmp_path):
    cb = _check_book()
    v = attention_viewer(list("abcdefgh"), causal_pattern(2, 8), ["A", "B"])
    assert isinstance(v, AttentionViewer)
    v.save(tmp_path / "one.html")
    with cb.DevToolsChromium(cb.find_chromium()) as browser:
        errors, rows = cb.check_viewers(browser, (tmp_path / "one.html").as_uri())
        assert errors == [] and rows == 2
        assert browser.requests() == [(tmp_path / "one.html").as_uri()]
        # the no-JavaScript note is gone once the script ran
        assert browser.cdp.evaluate("document.querySelectorAll('.tlv-nojs').length") == 0


def test_output_is_reproducible_across_fresh_processes():
    """nbval compares a re-executed notebook's text/html with the stored one: no random ids."""
    import subprocess
    import sys

    code = ("import torch; from toylab.circuits.viewer import attention_viewer; "
            "g = torch.Generator().manual_seed(1); s = torch.randn(2, 4, 4, generator=g); "
            "s = s.masked_fill(torch.ones(4, 4, dtype=torch.bool).triu(1), float('-inf')); "
            "a = attention_viewer(list('abcd'), s.softmax(-1)); b = attention_viewer(list('abcd'), s.softmax(-1)); "
            "print(a.to_html()); print(b.to_html())")
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
            for _ in range(2)]
    assert runs[0] == runs[1]
    ids = re.findall(r'<div id="(tlv-[^"]+)"', runs[0])
    assert len(ids) == 2 and ids[0] != ids[1], ids

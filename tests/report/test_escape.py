"""Escaping by context and the pages' Content-Security-Policy, without a browser: the stdlib
HTML parser reads back what the helpers and the report wrote."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import re
from html.parser import HTMLParser

import pytest

from poptune.records import FailureRecord
from poptune.report import render_html
from poptune.report._escape import element_id, policy, source_hash, text
from poptune.report._html import CSS, HIGHLIGHT_JS, REPORT_POLICY
from poptune.testing import XSS_PAYLOADS, synthetic_report_model


class Elements(HTMLParser):
    """Every start tag with its attributes, and the text between tags."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(markup: str) -> Elements:
    parser = Elements()
    parser.feed(markup)
    parser.close()
    return parser


@pytest.mark.parametrize("payload", XSS_PAYLOADS)
def test_text_keeps_a_string_one_text_and_one_attribute_value(payload):
    escaped = text(payload)
    assert not set(escaped) & set("<>\"'")
    page = parse(f"<p title=\"{escaped}\" class='{escaped}'>{escaped}</p>")
    assert page.tags == [("p", {"title": payload, "class": payload})]
    assert "".join(page.text) == payload  # shown as typed, entities included


def test_text_of_a_value_that_is_not_a_string():
    assert text(0.5) == "0.5" and text(None) == "None"


def test_element_ids_are_our_tokens_and_numbers_never_names():
    assert element_id("scores") == "scores"
    assert element_id("hparam", 3) == "hparam-3"
    for kind in ('k"><svg/onload=alert(1)>', "lr_rate", "Hparam", "a b", ""):
        with pytest.raises(ValueError, match="number the element"):
            element_id(kind)


def test_source_hash_is_the_base64_sha256_of_the_utf8_text():
    assert source_hash("") == "'sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU='"
    digest = base64.b64encode(hashlib.sha256("é".encode()).digest()).decode()
    assert source_hash("é") == f"'sha256-{digest}'"


def test_policy_allows_only_what_it_names():
    strict = policy("'nonce-abc'", "'sha256-x'")
    directives = dict(d.split(" ", 1) for d in strict.split("; "))
    assert directives == {
        "default-src": "'none'",
        "script-src": "'nonce-abc'",
        "style-src": "'sha256-x'",
        "base-uri": "'none'",
        "form-action": "'none'",
    }
    wider = policy("'nonce-abc'", "'sha256-x'", images=True, connect=True)
    assert "img-src data:" in wider and "connect-src 'self'" in wider


def test_the_reports_policy_names_its_own_script_and_style():
    assert source_hash(HIGHLIGHT_JS) in REPORT_POLICY and source_hash(CSS) in REPORT_POLICY
    assert "unsafe" not in REPORT_POLICY and "http" not in REPORT_POLICY
    page = render_html(synthetic_report_model(2, 3))
    scripts = re.findall(r"<script>(.*?)</script>", page, re.S)
    styles = re.findall(r"<style>(.*?)</style>", page, re.S)
    assert scripts == [HIGHLIGHT_JS] and styles == [CSS]  # exactly what the hashes cover
    assert "style=" not in page  # no inline style attribute: the policy would block it


ALLOWED = {
    "html", "head", "meta", "title", "style", "body", "main", "h1", "h2", "p", "span", "div",
    "b", "section", "details", "summary", "pre", "table", "thead", "tbody", "tr", "th", "td",
    "script", "svg", "line", "text", "polyline", "path", "circle",
}  # fmt: skip


def test_a_report_of_payloads_in_every_field_has_only_its_own_markup():
    model = synthetic_report_model(3, 4)
    names = list(XSS_PAYLOADS[:4])
    intervals = [
        dataclasses.replace(i, hparams={n: XSS_PAYLOADS[(i.step + k) % 5] for k, n in
                                        enumerate(names)})
        for i in model.intervals
    ]  # fmt: skip
    failure = FailureRecord(0, 2, XSS_PAYLOADS[0], XSS_PAYLOADS[2] + XSS_PAYLOADS[3], 0.0)
    hostile = dataclasses.replace(
        model,
        name=XSS_PAYLOADS[0],
        metric=XSS_PAYLOADS[1],
        status=XSS_PAYLOADS[4],
        error=XSS_PAYLOADS[5],
        hparam_names=names,
        log_scale=set(),
        intervals=intervals,
        failures=[failure],
    )
    page = parse(render_html(hostile))
    assert {tag for tag, _ in page.tags} <= ALLOWED
    for tag, attributes in page.tags:
        assert not [a for a in attributes if a.startswith("on")], (tag, attributes)
        if "id" in attributes:
            assert re.fullmatch(r"[a-z][a-z0-9-]*", attributes["id"] or ""), attributes
        if tag == "meta":
            assert attributes.get("http-equiv") in (None, "Content-Security-Policy")
    assert [tag for tag, _ in page.tags].count("script") == 1
    shown = "".join(page.text)
    for payload in XSS_PAYLOADS[:6]:
        assert payload in shown

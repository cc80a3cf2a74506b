"""What the runner sees: untrusted text can neither start a workflow command nor break the summary,
outputs cannot be forged, and the token is masked and scrubbed everywhere."""

from __future__ import annotations

import contextlib
import io
import os
import re
import string

from hypothesis import given, settings
from hypothesis import strategies as st
from support import parse_outputs

from fleet import runner

NASTY = st.text(
    alphabet=st.sampled_from(list(":#[]|<>&`*_\\\r\n\t\x00\x1b\u2028%~!()") + list("abc ")), max_size=60
) | st.text(max_size=60)


@given(NASTY)
def test_plain_text_is_one_inert_line(text):
    line = runner.plain(text)
    assert "\n" not in line and "\r" not in line
    assert "::" not in line and "##[" not in line
    assert not re.search(r"[\x00-\x1f\x7f\u2028\u2029\x85]", line)


@contextlib.contextmanager
def under_a_runner():
    before = os.environ.get("GITHUB_ACTIONS")
    os.environ["GITHUB_ACTIONS"] = "true"
    try:
        yield
    finally:
        if before is None:
            del os.environ["GITHUB_ACTIONS"]
        else:
            os.environ["GITHUB_ACTIONS"] = before


@given(NASTY)
def test_a_warning_is_exactly_one_command_whatever_its_text(text):
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), under_a_runner():
        runner.warning(runner.plain(text))
        runner.log("reason: " + runner.plain(text))
    lines = buf.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("::warning::") and lines[0].count("::") == 2
    assert not lines[1].startswith("::") and "::" not in lines[1]


@given(NASTY)
def test_markdown_cells_cannot_break_the_table_or_inject_markup(text):
    cell = runner.md(text)
    row = f"| `acme` | unhealthy | {cell} |"
    unescaped_pipes = len(re.findall(r"(?<!\\)(?:\\\\)*\|", row))
    assert unescaped_pipes == 4  # the row still has exactly three cells
    assert "<" not in cell and ">" not in cell and "\n" not in cell
    for mark in "`*_[]~":
        assert re.search(r"(?<!\\)(?:\\\\)*" + re.escape(mark), cell) is None


@settings(max_examples=200)
@given(st.dictionaries(st.sampled_from(["ok", "stragglers", "report-path"]), NASTY, min_size=1))
def test_outputs_round_trip_and_cannot_forge_another_output(tmp_path_factory, values):
    path = tmp_path_factory.mktemp("out") / "github_output"
    os.environ["GITHUB_OUTPUT"] = str(path)
    try:
        runner.set_outputs(values)
    finally:
        del os.environ["GITHUB_OUTPUT"]
    assert parse_outputs(path.read_bytes().decode()) == values


@given(st.text(alphabet=string.ascii_letters + string.digits, min_size=8, max_size=40), NASTY, NASTY)
def test_the_token_is_scrubbed_from_every_emitted_text(token, before, after):
    runner.register_secret(token)
    text = before + token + after
    assert token not in runner.plain(text)
    assert token not in runner.md(text)
    assert token not in runner.scrub(text)


def test_mask_is_printed_only_under_a_runner(capsys, monkeypatch):
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    runner.register_secret("first-secret-line\nsecond-secret-line")
    out = capsys.readouterr().out
    assert "::add-mask::first-secret-line" in out and "::add-mask::second-secret-line" in out
    monkeypatch.delenv("GITHUB_ACTIONS")
    runner.register_secret("plain-terminal-secret")
    assert capsys.readouterr().out == ""
    runner.log("the token is plain-terminal-secret")
    assert capsys.readouterr().out == "the token is ***\n"


def test_outside_a_runner_the_console_is_plain_text(capsys, monkeypatch):
    monkeypatch.delenv("GITHUB_ACTIONS", raising=False)
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    untrusted = "100% sure: a::b <img> *x*"
    runner.warning("tenant acme: " + runner.plain(untrusted))
    runner.write_summary(
        "## Fleet\n\n" + runner.md(untrusted) + "\n\n<details><summary>Tenants (2)</summary>\n\n| `a` |\n\n</details>"
    )
    out = capsys.readouterr().out
    assert "::warning::tenant acme: 100% sure: a::b <img> *x*" in out  # no %25, no :\:
    assert "100% sure: a::b <img> *x*" in out.splitlines()[3]  # no &lt;, no \*
    assert "<details>" not in out and "</details>" not in out and "Tenants (2):" in out
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    runner.warning("tenant acme: " + runner.plain(untrusted))
    assert (
        capsys.readouterr().out == "::warning::tenant acme: 100%25 sure: a:\\:b <img> *x*\n"
    )  # unchanged under a runner

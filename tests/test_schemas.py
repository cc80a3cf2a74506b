"""The contract's schemas accept what the contract allows and reject the rest, with errors that name
the field and the offending value."""

from __future__ import annotations

import json

import pytest

import schemas
from fleet import contract
from fleet.contract import ContractError

GOOD_RESULT = {
    "slug": "acme", "phase": "canary", "ssm_status": "Success", "ssm_exit_code": 0,
    "healthz_ok": True, "verified_on_target": True, "error": None,
}  # fmt: skip


def dry_run(*slugs):
    """A dry run's answer as the real control plane gives it: bare rows."""
    return {"ok": True, "results": [{"slug": s, "phase": "batch-1", "ssm_status": "DryRun"} for s in slugs]}


def fleet_of(answer):
    """The fleet from an enumeration, as the control-plane client gets it: the schema first, then the rest."""
    return contract.enumerated(contract.validate("redeploy-response", answer, "fleet enumeration (dry run) rejected"))


def test_a_dry_run_with_no_rows_is_nothing_to_roll_out():
    with pytest.raises(ContractError, match="lists no tenants"):
        contract.enumerated({"ok": True, "results": []})


def test_dry_run_rows_and_free_form_phases_are_accepted():
    for phase in ("canary", "batch-1", "batch-12", "redeploy", None):
        contract.validate("redeploy-response", {"ok": True, "results": [{"slug": "acme", "phase": phase}]}, "x")
    assert contract.enumerated(dry_run("acme", "birch")) == ["acme", "birch"]


@pytest.mark.parametrize("name", schemas.NAMES)
def test_every_schema_is_valid_2020_12(name):
    doc = schemas.load(name)
    assert doc["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    contract._validator(name).check_schema(doc)


@pytest.mark.parametrize("slug", ["acme", "reno-stars", "a", "0", "a1-b2", "x" * 63])
def test_valid_slugs(slug):
    assert contract.is_slug(slug)
    assert contract.enumerated(dry_run(slug)) == [slug]


@pytest.mark.parametrize(
    "slug",
    ["evil.example.com/x", "Reno", "a--", "-a", "a-", "acme\n", "\nacme", "x" * 64, "a b", "ácme", "a_b", 7],
)
def test_invalid_slugs_are_rejected_by_schema_and_code_alike(slug):
    assert not contract.is_slug(slug)
    with pytest.raises(ContractError) as err:
        fleet_of(dry_run("ok", slug))
    message = str(err.value)
    assert "results[1].slug" in message
    assert "\n" not in message  # the offending value is escaped
    assert contract.show(slug) in message


def test_a_double_dash_inside_is_a_valid_dns_label_but_a_trailing_one_is_not():
    assert contract.is_slug("a--b") and not contract.is_slug("a--")


def test_an_enumeration_row_with_a_missing_null_or_empty_slug_names_no_tenant_and_is_left_out():
    answer = dry_run("acme", "birch")
    answer["results"][1:1] = [{"phase": "batch-1"}, {"slug": None, "plan": "pro"}, {"slug": ""}]
    assert fleet_of(answer) == ["acme", "birch"]
    assert contract.unnamed(answer["results"]) == [
        'results[1] (slug missing; its other fields: {"phase": "batch-1"})',
        'results[2] (slug null; its other fields: {"plan": "pro"})',
        "results[3] (slug ''; its other fields: {})",
    ]
    with pytest.raises(ContractError, match="lists no tenants"):
        fleet_of({"ok": True, "results": [{"slug": None}, {}]})


def test_duplicate_slugs_are_rejected():
    with pytest.raises(ContractError, match="duplicate slug 'acme'"):
        contract.enumerated(dry_run("acme", "birch", "acme"))


def test_extra_fields_are_allowed_everywhere():
    contract.enumerated({"ok": True, "results": [{"slug": "acme", "phase": "canary", "plan": "pro"}], "next": None})
    contract.validate(
        "redeploy-response",
        {"ok": True, "results": [GOOD_RESULT | {"region": "eu"}], "took_ms": 3},
        "answer",
    )
    contract.validate("buildinfo", {"git_sha": "ABCDEF0", "built_at": "today"}, "buildinfo")


def test_optional_result_fields_may_be_missing_or_null():
    minimal = {"slug": "acme", "verified_on_target": False}
    nulls = {**minimal, "phase": None, "ssm_status": None, "ssm_exit_code": None, "healthz_ok": None, "error": None}
    doc = {
        "ok": False,
        "error": "canary failed",
        "results": [minimal, nulls | {"slug": "birch"}],
        "stragglers": ["acme"],
    }
    assert contract.validate("redeploy-response", doc, "answer") is doc


@pytest.mark.parametrize(
    ("doc", "field", "why"),
    [
        ({"ok": "yes", "results": []}, "ok", "must be of type boolean"),
        ({"ok": True, "results": {}}, "results", "must be of type array"),
        ({"ok": True, "results": [GOOD_RESULT | {"verified_on_target": "true"}]}, "results[0].verified_on_target",
         "must be of type boolean"),
        ({"ok": True, "results": [GOOD_RESULT | {"ssm_exit_code": "0"}]}, "results[0].ssm_exit_code",
         "must be of type"),
        ({"ok": True, "results": [GOOD_RESULT | {"phase": 3}]}, "results[0].phase", "must be of type"),
        ({"ok": True, "results": [], "stragglers": ["Reno"]}, "stragglers[0]", "not a valid slug"),
        ({"results": []}, "(top level)", "missing required field 'ok'"),
    ],
)  # fmt: skip
def test_rejected_redeploy_answers_name_the_field(doc, field, why):
    with pytest.raises(ContractError) as err:
        contract.validate("redeploy-response", doc, "redeploy answer rejected")
    assert str(err.value).startswith(f"redeploy answer rejected: {field} ")
    assert why in str(err.value)


@pytest.mark.parametrize(
    "body",
    [
        {"target_tag": "v1", "confirm": True, "only_slugs": []},
        {"target_tag": "v1", "confirm": True, "slugs": ["acme"]},
        {"target_tag": "v1", "confirm": False},
        {"target_tag": "v1"},
        {"target_tag": "", "confirm": True},
        {"canary_slug": "acme", "confirm": True},
        {"target_tag": "v1", "confirm": True, "batch_size": 0},
        {"target_tag": "v1", "confirm": True, "soak_seconds": -1},
        {"target_tag": "v1", "confirm": True, "max_stragglers": 1.5},
        {"target_tag": "v1", "confirm": True, "dry_run": "false"},
        {"target_tag": "v1", "confirm": True, "canary_slug": "Acme"},
        {"target_tag": "v1", "confirm": True, "only_slugs": ["acme", "evil.example.com/x"]},
        {"target_tag": "v1", "confirm": True, "only_slugs": ["acme", "acme"]},
    ],
)
def test_redeploy_requests_that_break_the_contract_are_not_sent(body):
    with pytest.raises(ContractError):
        contract.validate("redeploy-request", body, "redeploy request not sent")


def test_a_full_redeploy_request_is_accepted():
    body = {
        "target_tag": "sha-0a1b2c3", "canary_slug": "", "soak_seconds": 0, "batch_size": 3, "dry_run": False,
        "max_stragglers": 0, "confirm": True, "only_slugs": ["acme"],
    }  # fmt: skip
    contract.validate("redeploy-request", body, "request")


@pytest.mark.parametrize("doc", [{}, {"git_sha": 1234567}, {"git_sha": ""}, {"git_sha": "abcdef0\n"}])
def test_bad_buildinfo(doc):
    with pytest.raises(ContractError):
        contract.validate("buildinfo", doc, "buildinfo")


def test_long_offending_values_are_truncated():
    with pytest.raises(ContractError) as err:
        fleet_of(dry_run("Z" * 500))
    assert len(str(err.value)) < 200 and "..." in str(err.value)


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b'{"ok": true, "ok": false}', "duplicate key 'ok'"),
        (b'{"n": NaN}', "non-standard JSON constant NaN"),
        (b'{"n": -Infinity}', "non-standard JSON constant -Infinity"),
        (b"<html><body>502</body></html>", "body is not JSON"),
        (b"\xff\xfe", "not UTF-8"),
    ],
)
def test_strict_json(body, why):
    with pytest.raises(ContractError, match=why):
        contract.parse_json(body, "answer")


def test_report_schema_accepts_a_minimal_failure_report():
    contract.validate("report", {"schema_version": 1, "ok": False, "message": "cp-url is required"}, "report")
    with pytest.raises(ContractError):
        contract.validate("report", {"schema_version": 1, "ok": True, "stragglers": []}, "report")
    json.dumps(schemas.load("report"))


@pytest.mark.parametrize("sha", ["dev", "xyz1234", "abc", "ABCDEF0123"])
def test_a_build_that_is_no_hex_sha_is_still_a_build(sha):
    # The real tenants serve "dev" when no sha was baked in at build time: another build, so stale.
    contract.validate("buildinfo", {"git_sha": sha}, "buildinfo")

"""The contract's data rules: slugs, strict JSON, and schema enforcement with clear errors."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from functools import cache
from typing import TYPE_CHECKING, Any

import schemas
from fleet import runner

if TYPE_CHECKING:  # imported when the first validator is built: a step that validates nothing never pays for it
    import jsonschema
    from referencing import Registry

# A DNS label, matched with fullmatch: '$' under re.match would accept a trailing newline.
SLUG = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")

SHOW_LIMIT = 80


class ContractError(ValueError):
    """Something that breaks the contract. The message is one line and safe to print. The checks here
    raise it as it is; where the text came from decides which of the two below it becomes."""


class BadInput(ContractError):
    """The step's own input breaks the contract: exit 2, and nothing has moved."""


class BadAnswer(ContractError):
    """A peer's answer (the control plane's, the forge's, a tenant's) breaks the contract: exit 1."""


class PeerFailed(Exception):
    """A call to a peer that failed (the control plane's client raises its own kind): exit 1. Here, so a
    step can tell it apart without importing the client."""


def show(value: Any, limit: int = SHOW_LIMIT) -> str:
    """A value as a short, escaped, single-line literal for error messages."""
    text = repr(value) if isinstance(value, str) else json.dumps(value, default=repr)
    text = runner.scrub(text)  # before truncating, so no prefix of a secret survives
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    # repr() already escapes control characters; json.dumps too, except inside repr fallbacks.
    return text.replace("\r", "\\r").replace("\n", "\\n")


def is_slug(value: Any) -> bool:
    return isinstance(value, str) and SLUG.fullmatch(value) is not None


def check_slug(value: Any, what: str) -> str:
    if not is_slug(value):
        raise ContractError(f"{what}: invalid slug {show(value)} (must be a DNS label: a-z, 0-9, '-')")
    return str(value)


def parse_slug_list(text: str, what: str) -> list[str]:
    """Slugs separated by commas, newlines or spaces; each checked, duplicates refused."""
    items = [s for s in re.split(r"[,\s]+", text.strip()) if s]
    seen: set[str] = set()
    for item in items:
        check_slug(item, what)
        if item in seen:
            raise ContractError(f"{what}: slug {show(item)} is named twice")
        seen.add(item)
    return items


def narrow(fleet: list[str], wanted: list[str], what: str = "slugs") -> list[str]:
    """The fleet limited to `wanted`, in fleet order; a name the fleet does not list is an error."""
    known = set(fleet)
    unknown = [s for s in wanted if s not in known]
    if unknown:
        raise ContractError(f"{what} names tenants that are not in the control plane's fleet: {', '.join(unknown)}")
    keep = set(wanted)
    return [s for s in fleet if s in keep]


def unique_slugs(slugs: Iterable[str], what: str) -> list[str]:
    out: list[str] = []
    seen: set[str] = set()
    for slug in slugs:
        if slug in seen:
            raise ContractError(f"{what}: duplicate slug {show(slug)}")
        seen.add(slug)
        out.append(slug)
    return out


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    for key, value in pairs:
        if key in doc:
            raise ContractError(f"duplicate key {show(key)}")
        doc[key] = value
    return doc


def _no_constants(name: str) -> Any:
    raise ContractError(f"non-standard JSON constant {name}")


def _finite(text: str) -> float:
    number = float(text)
    if math.isinf(number):  # 1e400: json would read it as inf, which no strict JSON writer can write back
        raise ContractError(f"number {text[:40]} is out of range")
    return number


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:  # past Python's limit on the digits of an int
        raise ContractError(f"number {text[:40]}... has too many digits") from None


# Far deeper than any answer in the contract (a row's field is 3 levels down); every later walk of the
# document (the schema, the scrubbing, the report's writer) recurses once per level.
MAX_DEPTH = 64


def _well_formed(document: Any) -> None:
    """Refuse what json.loads accepts but nothing after it can take: nesting deeper than MAX_DEPTH, and
    a lone UTF-16 surrogate in any string, keys included. Walked with a stack, so it never recurses."""
    stack: list[tuple[Any, tuple[Any, ...]]] = [(document, ())]
    while stack:
        value, path = stack.pop()
        if isinstance(value, str):
            if runner.LONE_SURROGATE.search(value):
                raise ContractError(f"{_where(path)} holds a lone UTF-16 surrogate: {show(value, 40)}")
            continue
        if not isinstance(value, dict | list):
            continue
        if len(path) >= MAX_DEPTH:
            raise ContractError(f"nested deeper than {MAX_DEPTH} levels, under {_where(path[:3])}")
        if isinstance(value, dict):
            for key, item in value.items():
                if runner.LONE_SURROGATE.search(key):
                    raise ContractError(f"a key under {_where(path)} holds a lone UTF-16 surrogate: {show(key, 40)}")
                stack.append((item, (*path, key)))
        else:
            stack.extend((item, (*path, index)) for index, item in enumerate(value))


def parse_json(body: bytes | str, what: str) -> Any:
    """Strict JSON: no NaN/Infinity, no number out of range, no duplicate keys, no lone surrogates, no
    nesting deeper than MAX_DEPTH. Errors name `what` and the cause."""
    try:
        text = body.decode("utf-8") if isinstance(body, bytes) else body
    except UnicodeDecodeError:
        raise ContractError(f"{what}: body is not UTF-8") from None
    try:
        document = json.loads(
            text,
            object_pairs_hook=_no_duplicate_keys,
            parse_constant=_no_constants,
            parse_float=_finite,
            parse_int=_integer,
        )
        _well_formed(document)
        return document
    except ContractError as exc:
        raise ContractError(f"{what}: {exc}") from None
    except RecursionError:
        raise ContractError(f"{what}: JSON nested deeper than {MAX_DEPTH} levels") from None
    except ValueError:
        raise ContractError(f"{what}: body is not JSON: {show(text.strip(), 60)}") from None


@cache
def _registry() -> Registry:
    from referencing import Registry, Resource

    resources = [(n + ".schema.json", Resource.from_contents(schemas.load(n))) for n in schemas.NAMES]
    return Registry().with_resources(resources)


@cache
def _validator(name: str) -> jsonschema.protocols.Validator:
    """The validator of `schemas/<name>.schema.json`, built when first needed and kept."""
    import jsonschema

    schema = schemas.load(name)
    cls = jsonschema.validators.validator_for(schema)
    return cls(schema, registry=_registry())


def _where(path: Iterable[Any]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _reason(error: jsonschema.ValidationError) -> str:
    if isinstance(error.schema, dict) and error.schema.get("title") == "slug":
        return "is not a valid slug (must be a DNS label: a-z, 0-9, '-')"
    if error.validator == "required":
        missing = error.message.split(" is a required property")[0]
        return f"is missing required field {missing}"
    if error.validator == "type":
        return f"must be of type {error.validator_value}"
    if error.validator == "additionalProperties":
        return "has a field that is not allowed"
    return f"fails {error.validator} {show(error.validator_value, 40)}"


def validate(name: str, document: Any, what: str) -> Any:
    """Enforce `schemas/<name>.schema.json`; the error names the field and the offending value."""
    validator = _validator(name)
    import jsonschema.exceptions  # imported by _validator already

    error = jsonschema.exceptions.best_match(validator.iter_errors(document))
    if error is None:
        return document
    field = _where(error.absolute_path)
    value = "" if error.validator == "required" else f": {show(error.instance)}"
    raise ContractError(f"{what}: {field} {_reason(error)}{value}")


def unnamed(rows: list[dict[str, Any]]) -> list[str]:
    """The rows of an answer that name no tenant (a slug missing, null or empty), each as `results[i]`,
    how its slug was given and its other fields, for a message."""
    told = []
    for i, row in enumerate(rows):
        if row.get("slug"):
            continue
        given = "missing" if "slug" not in row else show(row["slug"])
        rest = {key: value for key, value in row.items() if key != "slug"}
        told.append(f"results[{i}] (slug {given}; its other fields: {show(rest, 160)})")
    return told


def enumerated(answer: dict[str, Any], what: str = "fleet enumeration (dry run) rejected") -> list[str]:
    """The fleet from an unscoped dry run's answer, already valid against its schema (the control-plane
    client checked it): its rows' slugs in order, none twice. A row without a slug names no tenant and
    is left out (`unnamed` tells which); no tenant at all is an error: nothing to roll out."""
    slugs = unique_slugs((row["slug"] for row in answer["results"] if row.get("slug")), what)
    if not slugs:
        raise ContractError(f"{what}: it lists no tenants, so there is nothing to roll out")
    return slugs

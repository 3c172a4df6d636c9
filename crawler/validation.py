"""Item validation and the unique item key of a crawl definition.

Two optional sections of a definition (checked by :func:`crawler.definition.validate`):

- ``validation``: ``{"required": [field, ...], "rules": [{field, type, pattern, min_length,
  max_length, min, max}, ...], "schema": {JSON Schema} | null}``;
- ``unique_key``: a list of field names whose values make an item unique within a run.

:func:`check_validation` and :func:`check_unique_key` validate those sections for the definition
validator; :class:`ItemValidator` checks scraped items against them (the dashboard's ingest calls
it, so invalid items are stored with their errors and counted).

A JSON Schema is user input run on every item: it is limited in size and depth, checked against
its meta-schema (``check_schema``), may not reference anything outside itself (no network), and
every regular expression in it (``pattern``, ``patternProperties``) runs on RE2 (linear time)
instead of Python's backtracking ``re``.
"""

from __future__ import annotations

import functools
import hashlib
import json
from typing import Any, Iterable

from jsonschema import Draft202012Validator, ValidationError, validators
from jsonschema.exceptions import SchemaError
from referencing import Registry

from .patterns import PatternError, compile_pattern, search_any

MAX_RULES = 100
MAX_KEY_FIELDS = 5
MAX_SCHEMA_BYTES = 32 * 1024
MAX_SCHEMA_DEPTH = 20
# Errors kept per invalid item (the rest are summed up in one line).
MAX_ITEM_ERRORS = 10
RULE_TYPES = ("string", "number", "integer", "boolean", "list")
RULE_KEYS = ("field", "type", "pattern", "min_length", "max_length", "min", "max")
# Keywords refused in a schema: they would run Python's ``re`` on scraped strings.
REFUSED_KEYWORDS = {"unevaluatedProperties": "is not supported (use additionalProperties)"}


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _empty(value: Any) -> bool:
    return value is None or value == "" or value == [] or value == {}


# -- JSON Schema on RE2 ----------------------------------------------------------------------------


@functools.lru_cache(maxsize=512)
def _compiled(pattern: str):
    return compile_pattern(pattern)


def _re2_search(pattern: str, text: str) -> bool:
    try:
        return search_any([_compiled(pattern)], text)
    except PatternError:
        return False  # refused when the definition was validated; never raise while checking items


def _pattern(validator, pattern, instance, schema):
    if validator.is_type(instance, "string") and not _re2_search(pattern, instance):
        yield ValidationError(f"{instance[:100]!r} does not match {pattern!r}")


def _pattern_properties(validator, pattern_properties, instance, schema):
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in pattern_properties.items():
        for name, value in instance.items():
            if _re2_search(pattern, name):
                yield from validator.descend(value, subschema, path=name, schema_path=pattern)


def _additional_properties(validator, additional, instance, schema):
    if not validator.is_type(instance, "object"):
        return
    declared = schema.get("properties", {})
    patterns = list(schema.get("patternProperties", {}))
    extras = sorted(name for name in instance
                    if name not in declared and not any(_re2_search(p, name) for p in patterns))
    if validator.is_type(additional, "object"):
        for name in extras:
            yield from validator.descend(instance[name], additional, path=name)
    elif not additional and extras:
        yield ValidationError(f"Additional properties are not allowed ({', '.join(map(repr, extras[:10]))})")


# Draft 2020-12 with every regular expression on RE2.
RE2Validator = validators.extend(Draft202012Validator, {
    "pattern": _pattern,
    "patternProperties": _pattern_properties,
    "additionalProperties": _additional_properties,
})


class _TooDeep(Exception):
    pass


def _walk(node: Any, depth: int = 0):
    """Every (depth, key, value) of a JSON document; _TooDeep past MAX_SCHEMA_DEPTH levels."""
    if depth > MAX_SCHEMA_DEPTH:
        raise _TooDeep
    if isinstance(node, dict):
        for key, value in node.items():
            yield depth, key, value
            yield from _walk(value, depth + 1)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value, depth + 1)


def schema_problems(schema: Any) -> list[str]:
    """Why ``schema`` cannot be used (empty list: it can)."""
    if not isinstance(schema, dict):
        return ["Must be a JSON Schema object."]
    deep = [f"The schema is nested more than {MAX_SCHEMA_DEPTH} levels deep."]
    try:
        entries = list(_walk(schema))  # depth first: json.dumps of a very deep document would recurse
        size = len(json.dumps(schema, ensure_ascii=False).encode())
    except (_TooDeep, RecursionError):
        return deep
    except (TypeError, ValueError):
        return ["The schema must be plain JSON."]
    if size > MAX_SCHEMA_BYTES:
        return [f"The schema is {size} bytes long; at most {MAX_SCHEMA_BYTES} are allowed."]
    problems = []
    for _depth, key, value in entries:
        if key in REFUSED_KEYWORDS:
            problems.append(f"{key} {REFUSED_KEYWORDS[key]}.")
        elif key in ("$ref", "$dynamicRef") and (not isinstance(value, str) or not value.startswith("#")):
            problems.append(f"{key} {str(value)[:100]!r}: only references inside the schema (starting with #) "
                            "are allowed; nothing is fetched.")
        elif key == "$schema" and value not in (None, Draft202012Validator.META_SCHEMA["$id"]):
            problems.append(f"$schema must be {Draft202012Validator.META_SCHEMA['$id']} (JSON Schema 2020-12) "
                            "or left out.")
        elif key == "pattern" and isinstance(value, str):
            problems.extend(_pattern_problem(value))
        elif key == "patternProperties" and isinstance(value, dict):
            for pattern in value:
                problems.extend(_pattern_problem(pattern))
    if problems:
        return problems
    try:
        RE2Validator.check_schema(schema)
    except SchemaError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "(top level)"
        return [f"Not a valid JSON Schema at {where}: {exc.message[:300]}"]
    except (RecursionError, ValueError, TypeError) as exc:
        return [f"Not a valid JSON Schema: {str(exc)[:300]}"]
    return []


def _pattern_problem(pattern: str) -> list[str]:
    try:
        compile_pattern(pattern)
    except PatternError as exc:
        return [f"pattern {pattern[:100]!r}: {exc}"]
    return []


# -- the definition's sections -----------------------------------------------------------------


def check_validation(value: Any, fields: Iterable[str] | None, add) -> dict:
    """The normalized ``validation`` section; ``add(path, message)`` records each problem.

    ``fields`` are the names the definition extracts (``url`` is always there), or None when
    they are unknown (a custom spider): then a rule may name any field.
    """
    out = {"required": [], "rules": [], "schema": None}
    if value is None:
        return out
    if not isinstance(value, dict):
        add("validation", "Must be an object {required, rules, schema}.")
        return out
    for extra in sorted(set(value) - {"required", "rules", "schema"}):
        add(f"validation.{extra}", "Unknown field (expected required, rules, schema).")
    known = None if fields is None else set(fields) | {"url"}

    def field_name(name: Any, path: str) -> str | None:
        if not isinstance(name, str) or not name.strip():
            add(path, "Must be a field name.")
            return None
        name = name.strip()
        if len(name) > 64:
            add(path, "At most 64 characters.")
            return None
        if known is not None and name not in known:
            add(path, f"Field {name!r} is not extracted by this definition (fields: {', '.join(sorted(known))}).")
            return None
        return name

    required = value.get("required") or []
    if not isinstance(required, list) or len(required) > MAX_RULES:
        add("validation.required", f"Must be a list of at most {MAX_RULES} field names.")
    else:
        for i, name in enumerate(required):
            checked = field_name(name, f"validation.required.{i}")
            if checked and checked not in out["required"]:
                out["required"].append(checked)

    rules = value.get("rules") or []
    if not isinstance(rules, list) or len(rules) > MAX_RULES:
        add("validation.rules", f"Must be a list of at most {MAX_RULES} rules.")
        rules = []
    for i, rule in enumerate(rules):
        path = f"validation.rules.{i}"
        if not isinstance(rule, dict):
            add(path, "Must be an object {field, type, pattern, min_length, max_length, min, max}.")
            continue
        for extra in sorted(set(rule) - set(RULE_KEYS)):
            add(f"{path}.{extra}", f"Unknown field (expected one of: {', '.join(RULE_KEYS)}).")
        checked = {"field": field_name(rule.get("field"), f"{path}.field")}
        kind = rule.get("type") or ""
        if kind and kind not in RULE_TYPES:
            add(f"{path}.type", f"Must be one of: {', '.join(RULE_TYPES)}.")
        elif kind:
            checked["type"] = kind
        pattern = rule.get("pattern") or ""
        if pattern:
            try:
                compile_pattern(pattern)
                checked["pattern"] = pattern
            except PatternError as exc:
                add(f"{path}.pattern", str(exc))
        for key in ("min_length", "max_length"):
            if rule.get(key) is not None:
                if not isinstance(rule[key], int) or isinstance(rule[key], bool) or not 0 <= rule[key] <= 10**9:
                    add(f"{path}.{key}", "Must be a whole number from 0.")
                else:
                    checked[key] = rule[key]
        for key in ("min", "max"):
            if rule.get(key) is not None:
                if not _is_number(rule[key]) or rule[key] != rule[key] or abs(rule[key]) == float("inf"):
                    add(f"{path}.{key}", "Must be a number.")
                else:
                    checked[key] = rule[key]
        if len(checked) == 1 and all(rule.get(key) in (None, "") for key in RULE_KEYS if key != "field"):
            add(path, "A rule needs at least one of: type, pattern, min_length, max_length, min, max.")
        if checked["field"]:
            out["rules"].append(checked)

    schema = value.get("schema")
    if schema not in (None, {}):
        problems = schema_problems(schema)
        for problem in problems:
            add("validation.schema", problem)
        if not problems:
            out["schema"] = schema
    return out


def check_unique_key(value: Any, fields: Iterable[str] | None, add) -> list[str]:
    """The normalized ``unique_key``: a list of at most MAX_KEY_FIELDS field names."""
    if value in (None, "", []):
        return []
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",")]
    if not isinstance(value, list) or len(value) > MAX_KEY_FIELDS:
        add("unique_key", f"Must be a list of 1 to {MAX_KEY_FIELDS} field names.")
        return []
    known = None if fields is None else set(fields) | {"url"}
    out = []
    for i, name in enumerate(value):
        if not isinstance(name, str) or not name.strip() or len(name.strip()) > 64:
            add(f"unique_key.{i}", "Must be a field name.")
        elif known is not None and name.strip() not in known:
            add(f"unique_key.{i}", f"Field {name.strip()!r} is not extracted by this definition "
                                   f"(fields: {', '.join(sorted(known))}).")
        elif name.strip() not in out:
            out.append(name.strip())
    return out


# -- checking items ----------------------------------------------------------------------------


class ItemValidator:
    """Checks items against a definition's ``validation``; :meth:`errors` lists what is wrong."""

    def __init__(self, validation: dict | None):
        validation = validation or {}
        self.required = list(validation.get("required") or [])
        self.rules = [(rule, compile_pattern(rule["pattern"]) if rule.get("pattern") else None)
                      for rule in validation.get("rules") or []]
        schema = validation.get("schema")
        self.schema = RE2Validator(schema, registry=Registry()) if schema else None

    @property
    def active(self) -> bool:
        return bool(self.required or self.rules or self.schema)

    def errors(self, data: dict) -> list[str]:
        if not isinstance(data, dict):
            return ["The item is not an object."]
        found = [f"{name}: required" for name in self.required if _empty(data.get(name))]
        for rule, regex in self.rules:
            value = data.get(rule["field"])
            if not _empty(value):
                found.extend(_rule_errors(rule, regex, value))
        if self.schema is not None:
            try:
                for error in self.schema.iter_errors(data):
                    where = "/".join(str(p) for p in error.absolute_path) or "(item)"
                    found.append(f"{where}: {error.message[:300]}")
                    if len(found) > MAX_ITEM_ERRORS:
                        break
            except Exception as exc:  # an unresolvable $ref, a recursion: reported, never raised
                found.append(f"schema: {str(exc)[:200]}")
        if len(found) > MAX_ITEM_ERRORS:
            found = found[:MAX_ITEM_ERRORS] + ["… and more"]
        return found


def _rule_errors(rule: dict, regex, value: Any) -> list[str]:
    name, errors = rule["field"], []
    kind = rule.get("type")
    number = _as_number(value, integer=kind == "integer")
    if kind == "string" and not isinstance(value, str):
        errors.append(f"{name}: must be a string")
    elif kind == "list" and not isinstance(value, list):
        errors.append(f"{name}: must be a list")
    elif kind == "boolean" and not isinstance(value, bool) and str(value).lower() not in ("true", "false"):
        errors.append(f"{name}: must be true or false")
    elif kind in ("number", "integer") and number is None:
        errors.append(f"{name}: must be {'a whole number' if kind == 'integer' else 'a number'}")
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    if regex is not None and not search_any([regex], text):
        errors.append(f"{name}: does not match {rule['pattern']!r}")
    length = len(value) if isinstance(value, (str, list)) else len(text)
    if rule.get("min_length") is not None and length < rule["min_length"]:
        errors.append(f"{name}: shorter than {rule['min_length']}")
    if rule.get("max_length") is not None and length > rule["max_length"]:
        errors.append(f"{name}: longer than {rule['max_length']}")
    if rule.get("min") is not None or rule.get("max") is not None:
        number = number if number is not None else _as_number(value)
        if number is None:
            errors.append(f"{name}: not a number")
        elif rule.get("min") is not None and number < rule["min"]:
            errors.append(f"{name}: {number} is below {rule['min']}")
        elif rule.get("max") is not None and number > rule["max"]:
            errors.append(f"{name}: {number} is above {rule['max']}")
    return errors


def _as_number(value: Any, integer: bool = False):
    """A number, or a string holding one (scraped values are text), else None."""
    if _is_number(value):
        return value if not integer or float(value).is_integer() else None
    if isinstance(value, str) and len(value) <= 100:
        text = value.strip().replace(",", "")
        try:
            return int(text) if integer else float(text)
        except ValueError:
            return None
    return None


def unique_key(data: dict, fields: list[str]) -> str | None:
    """The unique key of an item (a SHA-256 of its key fields' values), or None when every key
    field is empty (such an item is kept as it is)."""
    if not fields or not isinstance(data, dict):
        return None
    values = [data.get(name) for name in fields]
    if all(_empty(v) for v in values):
        return None
    return hashlib.sha256(json.dumps(values, ensure_ascii=False, sort_keys=True).encode()).hexdigest()


def key_values(data: dict, fields: list[str]) -> dict:
    return {name: data.get(name) for name in fields} if isinstance(data, dict) else {}

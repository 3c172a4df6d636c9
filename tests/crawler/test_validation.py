"""Item validation and unique keys in the crawl definition: rules, JSON Schemas (hostile ones
included) and what the one validator says about them."""

import time

import pytest

from crawler.definition import DefinitionError, validate
from crawler.validation import MAX_SCHEMA_BYTES, ItemValidator, unique_key

BASE = {"name": "shop", "start_urls": ["http://shop.example/"],
        "item": {"fields": [{"name": "sku", "selector": ".sku::text"}, {"name": "price", "selector": ".price::text"}]}}


def errors_of(**extra):
    with pytest.raises(DefinitionError) as caught:
        validate({**BASE, **extra})
    return caught.value.errors


def checked(**extra):
    return validate({**BASE, **extra})


def test_rules_and_unique_key_are_normalized_and_frozen_in_the_definition():
    d = checked(validation={"required": ["sku"], "rules": [{"field": "price", "type": "number", "min": 0}]},
                unique_key="sku")
    assert d["validation"] == {"required": ["sku"], "rules": [{"field": "price", "type": "number", "min": 0}],
                               "schema": None}
    assert d["unique_key"] == ["sku"]
    assert checked()["validation"] == {"required": [], "rules": [], "schema": None}


def test_a_rule_or_key_on_a_field_the_definition_does_not_extract_is_refused_by_name():
    errors = errors_of(validation={"required": ["upc"], "rules": [{"field": "colour", "max_length": 3}]},
                       unique_key=["ean"])
    assert "upc" in errors["validation.required.0"][0]
    assert "colour" in errors["validation.rules.0.field"][0]
    assert "ean" in errors["unique_key.0"][0]


def test_a_custom_spider_may_validate_any_field():
    d = validate({"name": "s", "start_urls": ["http://a.example/"], "spider": "books",
                  "validation": {"required": ["anything"]}, "unique_key": ["upc"]}, spiders=["books"])
    assert d["validation"]["required"] == ["anything"] and d["unique_key"] == ["upc"]


def test_bad_rule_values_name_their_field():
    errors = errors_of(validation={"rules": [{"field": "price", "type": "money", "pattern": "(?=x)", "min": "0",
                                              "max_length": -1, "colour": 1}, {"field": "sku"}]})
    assert set(errors) >= {"validation.rules.0.type", "validation.rules.0.pattern", "validation.rules.0.min",
                           "validation.rules.0.max_length", "validation.rules.0.colour", "validation.rules.1"}



def test_a_rule_with_only_a_bad_type_names_the_type_not_a_missing_rule():
    errors = errors_of(validation={"rules": [{"field": "price", "type": "money"}]})
    assert set(errors) == {"validation.rules.0.type"} and "number" in errors["validation.rules.0.type"][0]


@pytest.mark.parametrize("schema, words", [
    ({"type": 12}, "Not a valid JSON Schema"),
    ({"properties": {"sku": {"pattern": "(?<=a)b"}}}, "lookahead"),
    ({"patternProperties": {"(a)\\1": {}}}, "backreferences"),
    ({"$ref": "https://schemas.example/item.json"}, "only references inside the schema"),
    ({"properties": {"sku": {"$ref": "file:///etc/passwd"}}}, "only references inside the schema"),
    ({"$schema": "http://json-schema.org/draft-04/schema#"}, "2020-12"),
    ({"unevaluatedProperties": False}, "not supported"),
    ({"description": "x" * (MAX_SCHEMA_BYTES + 1)}, "bytes long"),
    ("not an object", "JSON Schema object"),
])
def test_hostile_or_broken_json_schemas_are_refused_with_a_reason(schema, words):
    errors = errors_of(validation={"schema": schema})
    assert any(words in message for message in errors["validation.schema"]), errors


@pytest.mark.parametrize("levels", [60, 5000])
def test_a_deeply_nested_schema_is_refused(levels):
    schema = {}
    for _ in range(levels):
        schema = {"properties": {"a": schema}}
    errors = errors_of(validation={"schema": {"allOf": [[[schema]]]} if levels > 100 else schema})
    assert "nested" in errors["validation.schema"][0]


def test_schema_patterns_run_on_re2_not_pythons_backtracking_re():
    # (a+)+$ against "aaaa…!" takes Python's re far beyond any test timeout; RE2 is linear.
    evil = "(a+)+$"
    d = checked(validation={"schema": {"type": "object", "properties": {"sku": {"pattern": evil}},
                                       "patternProperties": {evil: {"type": "string"}},
                                       "additionalProperties": {"type": "string"}}})
    validator = ItemValidator(d["validation"])
    started = time.monotonic()
    errors = validator.errors({"sku": "a" * 5000 + "!", "a" * 5000 + "!": 1})
    assert time.monotonic() - started < 5
    assert any("does not match" in e for e in errors)
    assert any("is not of type" in e for e in errors)  # the odd key fell to additionalProperties


def test_internal_references_work_and_nothing_is_fetched():
    d = checked(validation={"schema": {"$defs": {"code": {"type": "string", "pattern": "^[0-9]+$"}},
                                       "properties": {"sku": {"$ref": "#/$defs/code"}}}})
    validator = ItemValidator(d["validation"])
    assert validator.errors({"sku": "123"}) == []
    assert validator.errors({"sku": "12a"})


def test_rules_mark_what_is_wrong_with_an_item():
    d = checked(validation={"required": ["sku"], "rules": [
        {"field": "price", "type": "number", "min": 1, "max": 100},
        {"field": "sku", "pattern": "^[0-9]+$", "min_length": 3, "max_length": 5}]})
    validator = ItemValidator(d["validation"])
    assert validator.errors({"sku": "1234", "price": "12.50"}) == []
    assert validator.errors({"price": "12"}) == ["sku: required"]
    assert validator.errors({"sku": "12", "price": "0.5"}) == ["price: 0.5 is below 1", "sku: shorter than 3"]
    assert validator.errors({"sku": "12x4", "price": "cheap"})[0] == "price: must be a number"


def test_unique_key_is_a_hash_of_the_key_fields_and_none_when_they_are_empty():
    assert unique_key({"sku": "1", "t": "a"}, ["sku"]) == unique_key({"sku": "1", "t": "b"}, ["sku"])
    assert unique_key({"sku": "1"}, ["sku"]) != unique_key({"sku": "2"}, ["sku"])
    assert unique_key({"sku": ""}, ["sku"]) is None
    assert unique_key({"sku": "1"}, []) is None


def test_a_reference_to_nowhere_marks_the_item_instead_of_failing_the_ingest():
    d = checked(validation={"schema": {"$id": "http://127.0.0.1:1/item", "properties": {"sku": {"$ref": "#/nope"}}}})
    errors = ItemValidator(d["validation"]).errors({"sku": "1"})
    assert len(errors) == 1 and errors[0].startswith("schema:") and "nope" in errors[0]

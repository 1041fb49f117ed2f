"""A job-submission form built from a kind's parameter schema (the same one the API checks)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass


@dataclass
class ParamField:
    name: str
    type: str  # number, integer, boolean, string, enum
    label: str
    help: str
    value: object
    required: bool
    minimum: float | None = None
    maximum: float | None = None
    choices: list | None = None
    items: str = "string"  # the type of an array's items


def _shape(prop: dict) -> dict:
    """An optional field's schema is "anyOf: [its type, null]": the form shows its type."""
    options = [option for option in prop.get("anyOf", []) if option.get("type") != "null"]
    return {**prop, **options[0]} if len(options) == 1 else prop


def _shown(value) -> object:
    """What the input shows: nothing for no value, a list as comma-separated items, an object
    as JSON."""
    if value is None:
        return ""
    if isinstance(value, list):
        return ", ".join(str(item) for item in value)
    if isinstance(value, dict):
        return json.dumps(value)
    return value


def fields_for(schema: dict, values: dict | None = None) -> list[ParamField]:
    values = values or {}
    required = set(schema.get("required", []))
    fields = []
    for name, raw_prop in schema.get("properties", {}).items():
        prop = _shape(raw_prop)
        kind = "enum" if "enum" in prop else prop.get("type", "string")
        value = values.get(name, raw_prop.get("default", prop.get("default", "")))
        fields.append(ParamField(
            name=name, type=kind, label=raw_prop.get("title", name),
            help=raw_prop.get("description", ""), value=value if kind == "boolean" else
            _shown(value), required=name in required, minimum=prop.get("minimum"),
            maximum=prop.get("maximum"), choices=prop.get("enum"),
            items=(prop.get("items") or {}).get("type", "string"),
        ))
    return fields


def _number(raw: str, integer: bool) -> tuple[object, str | None]:
    try:
        number = float(raw)
    except ValueError:
        number = math.nan
    if not math.isfinite(number):
        return None, "must be a number"
    if integer:
        if not number.is_integer():
            return None, "must be a whole number"
        return int(number), None
    return number, None


def params_from_post(schema: dict, post) -> tuple[dict, dict[str, list[str]]]:
    """Turn the form's strings into typed JSON values; the service checks the rest."""
    params, errors = {}, {}
    for field in fields_for(schema):
        raw = post.get(f"param-{field.name}", "").strip()
        if field.type == "boolean":
            params[field.name] = raw in {"on", "true", "1"}
            continue
        if raw == "" and not field.required:
            continue
        if field.type in {"number", "integer"}:
            value, error = _number(raw, field.type == "integer")
        elif field.type == "array" and raw.startswith("["):  # a JSON list, commas and all
            try:
                value, error = json.loads(raw), None
            except ValueError:
                value, error = None, "must be a JSON list, or items separated by commas"
        elif field.type == "array":
            value, error = [], None
            for item in (part.strip() for part in raw.split(",") if part.strip()):
                if field.items in {"number", "integer"}:
                    item, error = _number(item, field.items == "integer")
                    if error:
                        error = f"each item {error}"
                        break
                value.append(item)
        elif field.type == "object":
            try:
                value, error = json.loads(raw), None
            except ValueError:
                value, error = None, "must be a JSON object"
        else:
            value, error = raw, None
        if error:
            errors[field.name] = [error]
        else:
            params[field.name] = value
    return params, errors

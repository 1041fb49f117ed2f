"""A job-submission form built from a kind's parameter schema (the same one the API checks)."""

from __future__ import annotations

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


def fields_for(schema: dict, values: dict | None = None) -> list[ParamField]:
    values = values or {}
    required = set(schema.get("required", []))
    fields = []
    for name, prop in schema.get("properties", {}).items():
        kind = "enum" if "enum" in prop else prop.get("type", "string")
        fields.append(ParamField(
            name=name, type=kind, label=prop.get("title", name), help=prop.get("description", ""),
            value=values.get(name, prop.get("default", "")), required=name in required,
            minimum=prop.get("minimum"), maximum=prop.get("maximum"),
            choices=prop.get("enum"),
        ))
    return fields


def params_from_post(schema: dict, post) -> tuple[dict, dict[str, list[str]]]:
    """Turn the form's strings into typed JSON values; the service checks the rest."""
    params, errors = {}, {}
    for field in fields_for(schema):
        raw = post.get(f"param-{field.name}", "")
        if field.type == "boolean":
            params[field.name] = raw in {"on", "true", "1"}
            continue
        if raw == "" and not field.required:
            continue
        if field.type in {"number", "integer"}:
            try:
                number = float(raw)
            except ValueError:
                number = math.nan
            if not math.isfinite(number):
                errors[field.name] = ["must be a number"]
                continue
            if field.type == "integer":
                if not number.is_integer():
                    errors[field.name] = ["must be a whole number"]
                    continue
                number = int(number)
            params[field.name] = number
        else:
            params[field.name] = raw
    return params, errors

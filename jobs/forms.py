"""A job-submission form built from a kind's parameter schema (the same one the API checks)."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass

from workers import data

# A field that applies to one target only says so first ("Parquet: the folder ...") or last
# ("... (warehouse)."): the form hides it while the other target is picked.
_FOR_TARGET = re.compile(r"^(parquet|warehouse):|\((parquet|warehouse)\)\.?$", re.I)
# Words a label writes in capitals, and name endings that are units.
_UPPER = {"sql", "id", "url", "csv", "json", "gpu", "gpus", "cpu", "cpus", "l2"}
_UNITS = {"s": "s", "mb": "MB", "gb": "GB", "ms": "ms"}
MULTILINE_AT = 10_000  # strings that may be this long (SQL, scripts) get a text area


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
    multiline: bool = False
    target: str = ""  # the one target this field applies to, if any


def label_for(name: str, title: str | None) -> str:
    """A label for people: "timeout_s" is "Timeout (s)", "sql" is "SQL"; a title the kind
    wrote itself (not the one made from the name) is kept."""
    if title and title != name.replace("_", " ").title():
        return title
    words = name.split("_")
    unit = _UNITS.get(words[-1]) if len(words) > 1 else None
    if unit:
        words = words[:-1]
    text = " ".join(word.upper() if word in _UPPER else word for word in words)
    text = text[:1].upper() + text[1:]
    return f"{text} ({unit})" if unit else text


def _configured(choice) -> bool:
    """False for a choice this portal is not set up for (the warehouse with no WAREHOUSE_URL)."""
    if choice != "warehouse":
        return True
    try:
        return data.warehouse_url() is not None
    except ValueError:
        return False


def _default(prop: dict, raw_prop: dict):
    default = raw_prop.get("default", prop.get("default", ""))
    choices = prop.get("enum") or []
    if default in choices and not _configured(default):
        # A form whose defaults cannot run is a trap: the first choice that can is offered.
        return next((choice for choice in choices if _configured(choice)), default)
    return default


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
    has_target = "target" in schema.get("properties", {})
    fields = []
    for name, raw_prop in schema.get("properties", {}).items():
        prop = _shape(raw_prop)
        kind = "enum" if "enum" in prop else prop.get("type", "string")
        value = values.get(name, _default(prop, raw_prop))
        help_text = raw_prop.get("description", "")
        only = _FOR_TARGET.search(help_text.strip()) if has_target else None
        fields.append(ParamField(
            name=name, type=kind, label=label_for(name, raw_prop.get("title")),
            help=help_text, value=value if kind == "boolean" else
            _shown(value), required=name in required, minimum=prop.get("minimum"),
            maximum=prop.get("maximum"), choices=prop.get("enum"),
            items=(prop.get("items") or {}).get("type", "string"),
            multiline=kind == "object" or (kind == "string" and
                                           prop.get("maxLength", 0) >= MULTILINE_AT),
            target=(only.group(1) or only.group(2)).lower() if only else "",
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

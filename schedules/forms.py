"""The schedule form's strings turned into the values the service checks."""

from __future__ import annotations

import json

TRUE = {"on", "true", "1"}


def data_from_post(post) -> tuple[dict, dict[str, list[str]]]:
    """The fields of a posted schedule form, and the messages of those that do not parse (the
    params as a JSON object, the priority as a whole number); the service checks the rest."""
    errors: dict[str, list[str]] = {}
    data = {"name": post.get("name", ""), "team": post.get("team", ""),
            "cron": post.get("cron", ""), "kind": post.get("kind", ""),
            "enabled": post.get("enabled", "") in TRUE}
    raw = post.get("params", "").strip() or "{}"
    try:
        params = json.loads(raw)
    except ValueError as exc:
        errors["params"] = [f"must be JSON: {exc}"]
    else:
        if isinstance(params, dict):
            data["params"] = params
        else:
            errors["params"] = ["must be a JSON object, like {\"seconds\": 5}"]
    raw = post.get("priority", "").strip() or "0"
    try:
        data["priority"] = int(raw)
    except ValueError:
        errors["priority"] = ["must be a whole number"]
    return data, errors


def flat_errors(errors: dict) -> dict[str, list[str]]:
    """Service errors by form field: a parameter's messages go to the params box, named."""
    flat: dict[str, list[str]] = {}
    for field, messages in errors.items():
        if isinstance(messages, dict):
            flat.setdefault(field, []).extend(
                f"{name}: {'; '.join(map(str, inner))}" for name, inner in messages.items())
        else:
            flat.setdefault(field, []).extend(map(str, messages))
    return flat

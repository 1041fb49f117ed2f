"""JSON request bodies. PostgreSQL can store no NUL character (in text or in JSON), so a body
that holds one is refused with 400, naming where, before any view reads it. So is one nested
deeper than MAX_DEPTH arrays and objects: no job or schedule needs more, and what reads it
after (the checks, the database driver) would recurse as deep.

Both walks go by an explicit stack, not by recursion, so no body makes them run out of stack."""

from rest_framework import parsers
from rest_framework.exceptions import ValidationError

NUL = "must not contain NUL characters"
MAX_DEPTH = 64
TOO_DEEP = f"nested too deeply: at most {MAX_DEPTH} levels of arrays and objects"


def too_deep(value, limit: int = MAX_DEPTH) -> bool:
    """Are arrays and objects nested more than `limit` levels deep in the value?"""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children
                     if isinstance(child, dict | list))
    return False


def holds_nul(value) -> bool:
    """Is there a NUL character in a string, or an object's key, anywhere in the value?"""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return True
        elif isinstance(item, dict):
            if any("\x00" in key for key in item):
                return True
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def nul_errors(value):
    """Errors shaped like the value where it holds a NUL character, or None: per key in an
    object (and in the objects in it), per item in a top-level list (a batch), one message for
    a string or a nested list."""
    if isinstance(value, str):
        return [NUL] if "\x00" in value else None
    if isinstance(value, list):
        errors = [_item_errors(item) for item in value]
        if all(error is None for error in errors):
            return None
        return [error or {} for error in errors]
    return _item_errors(value)


def _item_errors(value):
    """The errors of a value inside the top level: an object's per key, [NUL] for a string or
    list that holds one, None for one that does not."""
    if not isinstance(value, dict):
        return [NUL] if holds_nul(value) else None
    root: dict = {}
    made = []  # (parent errors, key, own errors), parents before the objects in them
    stack = [(value, root)]
    while stack:
        item, errors = stack.pop()
        for key, inner in item.items():
            if "\x00" in key:
                errors[key] = [NUL]
            elif isinstance(inner, dict):
                errors[key] = {}
                made.append((errors, key, errors[key]))
                stack.append((inner, errors[key]))
            elif holds_nul(inner):
                errors[key] = [NUL]
    for parent, key, errors in reversed(made):  # the innermost first: drop the empty ones
        if not errors:
            del parent[key]
    return root or None


class JSONParser(parsers.JSONParser):
    def parse(self, stream, media_type=None, parser_context=None):
        try:
            data = super().parse(stream, media_type, parser_context)
        except RecursionError:  # the decoder's own limit, near a thousand levels
            raise ValidationError({"non_field_errors": [TOO_DEEP]}) from None
        if too_deep(data):
            raise ValidationError({"non_field_errors": [TOO_DEEP]})
        errors = nul_errors(data)
        if errors is not None:
            raise ValidationError({"non_field_errors": errors} if isinstance(data, str)
                                  else errors)
        return data

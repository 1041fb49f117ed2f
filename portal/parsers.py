"""JSON request bodies. PostgreSQL can store no NUL character (in text or in JSON), so a body
that holds one is refused with 400, naming where, before any view reads it."""

from rest_framework import parsers
from rest_framework.exceptions import ValidationError

NUL = "must not contain NUL characters"


def nul_errors(value, *, top: bool = True):
    """Errors shaped like the value where it holds a NUL character, or None: per key in an
    object, per item in a top-level list (a batch), one message for a nested list."""
    if isinstance(value, str):
        return [NUL] if "\x00" in value else None
    if isinstance(value, dict):
        errors = {}
        for key, item in value.items():
            error = [NUL] if "\x00" in key else nul_errors(item, top=False)
            if error is not None:
                errors[key] = error
        return errors or None
    if isinstance(value, list):
        errors = [nul_errors(item, top=False) for item in value]
        if all(error is None for error in errors):
            return None
        return [error or {} for error in errors] if top else [NUL]
    return None


class JSONParser(parsers.JSONParser):
    def parse(self, stream, media_type=None, parser_context=None):
        data = super().parse(stream, media_type, parser_context)
        errors = nul_errors(data)
        if errors is not None:
            raise ValidationError({"non_field_errors": errors} if isinstance(data, str)
                                  else errors)
        return data

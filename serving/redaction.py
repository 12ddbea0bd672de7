"""Redaction of texts before they reach the escalation log.

``log.redact`` in the serving config names the hook: ``default`` masks card-number-like digit
runs and e-mail addresses, ``none`` logs texts as they came, and ``package.module:function``
imports any ``str -> str`` function.

>>> mask_card_numbers_and_emails("card 4111 1111 1111 1111, mail ann.lee@example.org")
'card [CARD], mail [EMAIL]'
"""

from __future__ import annotations

import importlib
import re
from typing import Callable

Redact = Callable[[str], str]

# 13 to 19 digits, optionally grouped by single spaces or dashes: the lengths of payment card numbers
CARD_NUMBER = re.compile(r"(?<!\d)\d(?:[ -]?\d){12,18}(?!\d)")
EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")


def mask_card_numbers_and_emails(text: str) -> str:
    """Replace card-number-like digit runs with ``[CARD]`` and e-mail addresses with ``[EMAIL]``."""
    if "@" in text:  # the e-mail pattern backtracks at every word: three times the cost of the whole mask without it
        text = EMAIL.sub("[EMAIL]", text)
    return CARD_NUMBER.sub("[CARD]", text)


class RedactionError(ValueError):
    """A ``log.redact`` setting that names no usable hook."""


def load_redactor(spec: str) -> Redact | None:
    """The hook ``spec`` names (``default``, ``none`` or ``module:function``); None for ``none``."""
    if spec == "default":
        return mask_card_numbers_and_emails
    if spec == "none":
        return None
    module_name, _, function_name = spec.partition(":")
    if not module_name or not function_name:
        raise RedactionError(f"log.redact: expected 'default', 'none' or 'module:function'; got {spec!r}")
    try:
        hook = getattr(importlib.import_module(module_name), function_name)
    except (ImportError, AttributeError) as err:
        raise RedactionError(f"log.redact: cannot import {spec!r}: {err}") from err
    if not callable(hook):
        raise RedactionError(f"log.redact: {spec!r} is not callable")
    return hook

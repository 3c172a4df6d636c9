"""User regular expressions, compiled and run with RE2 (linear time, whatever the input).

Every pattern a user writes (``follow.allow``, ``follow.deny``, ``item.url_pattern``) goes
through :func:`compile_pattern`, in the validator and in the worker alike, so what validates is
exactly what runs. Python's ``re`` backtracks: ``(a+)+$`` against a 40-character ``aaaa…!`` link
would block a worker's reactor for days. RE2 has no backreferences and no lookaround; such
patterns are refused with RE2's own message.

Matching semantics (unchanged from the ``re`` days): a pattern is *searched* anywhere in the
absolute URL, as Scrapy's ``LinkExtractor(allow=, deny=)`` and ``re.search`` do; anchor it with
``^`` or ``$`` to match the whole URL. Differences from ``re`` worth knowing: ``\\d``, ``\\w`` and
``\\s`` match ASCII only, and ``\\Z`` is spelled ``\\z``.
"""

from __future__ import annotations

import re2

__all__ = ["MAX_PATTERN_LENGTH", "PatternError", "compile_pattern", "search_any"]

MAX_PATTERN_LENGTH = 2000
# Memory RE2 may use to compile one pattern: enough for any sane URL pattern, and it refuses
# ones like ``(x{1000}){1000}`` instead of building a giant automaton.
MAX_PROGRAM_MEMORY = 8 << 20


class PatternError(ValueError):
    """A pattern RE2 cannot run; the message is for the user."""


def _options() -> re2.Options:
    options = re2.Options()
    options.log_errors = False  # RE2 would print every refused pattern on the process's stderr
    options.max_mem = MAX_PROGRAM_MEMORY
    return options


def compile_pattern(pattern: str):
    """Compile ``pattern`` with RE2, or raise :class:`PatternError` saying why it cannot run."""
    if not isinstance(pattern, str):
        raise PatternError("Must be a string (a regular expression).")
    if len(pattern) > MAX_PATTERN_LENGTH:
        raise PatternError(f"At most {MAX_PATTERN_LENGTH} characters.")
    try:
        return re2.compile(pattern, _options())
    except UnicodeEncodeError:
        raise PatternError("Invalid regular expression: it contains a lone surrogate (not text).") from None
    except re2.error as exc:
        reason = exc.args[0] if exc.args else "invalid pattern"
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", "replace")
        lookaround = "perl operator" in reason  # (?= (?! (?<= (?<!
        backreference = "escape sequence: \\" in reason and reason.rstrip()[-1:].isdigit()  # \1
        hint = ""
        if lookaround or backreference:
            hint = " (lookahead, lookbehind and backreferences are not supported: patterns run on RE2)"
        elif reason.endswith("\\Z"):
            hint = " (RE2 writes the end of the text as \\z)"
        raise PatternError(f"Invalid regular expression: {reason}{hint}.") from None


def search_any(regexes, text: str) -> bool:
    """True if any compiled pattern is found anywhere in ``text``."""
    try:
        text.encode("utf-8")  # RE2 matches UTF-8: a lone surrogate would raise in search()
    except UnicodeEncodeError:
        text = text.encode("utf-8", "replace").decode("utf-8")
    return any(r.search(text) is not None for r in regexes)

"""The one notion of bad input. `rankstudy` reports an InputError as a short message naming the
field or option at fault (exit 2), and any other exception as a bug in rankstudy, with its
traceback (exit 1): a ValueError from an internal check or a library is never the user's.

No imports, so that any module can raise it without a dependency."""


class InputError(ValueError):
    """Bad input: a spec field, a data or model file, a path, a command-line option; the message
    starts with the field or option. A ValueError, for callers that catch those."""

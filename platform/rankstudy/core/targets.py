"""Which linear modules `adapters.target_modules` adapts, matched by name as PEFT does: the
same rule for attaching adapters to a model and for checking a spec against a model's config
(no torch)."""

from __future__ import annotations

import re
from collections.abc import Sequence

from rankstudy.core.errors import InputError

Targets = str | Sequence[str]


def _matcher(target_modules: Targets):
    """A string is a regex matched against the full module name; a list holds names that match
    a module name exactly or as its dotted suffix."""
    if isinstance(target_modules, str):
        try:
            pattern = re.compile(target_modules)
        except re.error as e:
            raise InputError(f"target_modules: invalid regex {target_modules!r}: {e}") from e
        return lambda name: pattern.fullmatch(name) is not None
    names = list(target_modules)
    if not names:
        raise InputError("target_modules: empty; name at least one linear module")
    return lambda name: any(name == t or name.endswith("." + t) for t in names)


def match_targets(linear_names: Sequence[str], target_modules: Targets) -> list[str]:
    """The names among a model's linear modules that target_modules adapt, in model order; an
    error names a target that matches nothing, and lists the names the model has."""
    matches = _matcher(target_modules)
    matched = [n for n in linear_names if matches(n)]
    leaves = sorted({n.rsplit(".", 1)[-1] for n in linear_names})
    hint = f"the model's linear modules are named: {', '.join(leaves)}"
    if isinstance(target_modules, str):
        if not matched:
            raise InputError(
                f"target_modules: regex {target_modules!r} matches no linear module; {hint}"
            )
        return matched
    for t in target_modules:
        if not any(n == t or n.endswith("." + t) for n in matched):
            raise InputError(f"target_modules: {t!r} matches no linear module; {hint}")
    return matched

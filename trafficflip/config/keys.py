"""Where a key belongs in the schema: the keys known at a place (for "did you mean"), and
which settings take a mapping or a list (JSON when they come from the environment)."""

from __future__ import annotations

import difflib
import types
from collections.abc import Sequence
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel


def did_you_mean(key: str, known: Sequence[str]) -> str:
    """`` (did you mean `health`?)`` for a near miss, else nothing."""
    close = difflib.get_close_matches(key, sorted(set(known)), n=1, cutoff=0.6)
    return f" (did you mean `{close[0]}`?)" if close else ""


def known_keys(model: type[BaseModel], loc: Sequence[int | str]) -> list[str]:
    """The keys a mapping at ``loc`` under ``model`` may hold; empty when not a model."""
    types_here: list[Any] = [model]
    for part in loc:
        types_here = [t for here in types_here for t in _step(here, part)]
    return sorted({key for t in types_here for key in _model_fields(t)})


def _flatten(annotation: Any) -> list[Any]:
    """An annotation's alternatives: ``Annotated`` and ``X | None`` unwrapped."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _flatten(get_args(annotation)[0])
    if origin is Union or origin is types.UnionType:
        return [t for arg in get_args(annotation) for t in _flatten(arg)]
    return [annotation]


def _model_fields(annotation: Any) -> list[str]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return list(annotation.model_fields)
    return []


def _step(annotation: Any, part: int | str) -> list[Any]:
    found = []
    for t in _flatten(annotation):
        origin, args = get_origin(t), get_args(t)
        if isinstance(part, int) and origin is list and args:
            found.extend(_flatten(args[0]))
        elif isinstance(part, str) and origin is dict and len(args) == 2:
            found.extend(_flatten(args[1]))
        elif isinstance(part, str) and part in _model_fields(t):
            found.extend(_flatten(t.model_fields[part].annotation))
        elif isinstance(part, str) and "type" in _model_fields(t):
            # A discriminated union's tag (a check's type) names the member, not a key.
            if part in get_args(t.model_fields["type"].annotation):
                found.append(t)
    return found


def takes_json(model: type[BaseModel], path: Sequence[str]) -> bool:
    """Whether the setting at ``path`` takes a mapping or a list (JSON in the environment)."""
    types_here: list[Any] = [model]
    for part in path:
        types_here = [t for here in types_here for t in _step(here, part)]
    return any(get_origin(t) in (dict, list) or bool(_model_fields(t)) for t in types_here)

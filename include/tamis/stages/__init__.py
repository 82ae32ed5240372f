"""Where stage types come from: a pipeline names each stage's ``type`` as

* a built-in name (``quality``, ``near_dedup``...);
* a name an installed package registers in the entry point group ``tamis.stages``;
* an import path, ``package.module:Class`` (a :class:`tamis.stage.Stage` subclass) or
  ``package.module:function`` (a function from a batch to one reason or None per row).

Modules are imported only when a pipeline uses them, so a pipeline without PII masking
never loads Presidio.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from functools import lru_cache
from importlib.metadata import entry_points
from typing import Any

from tamis.stage import FunctionStage, Stage

ENTRY_POINT_GROUP = "tamis.stages"
BUILT_IN: dict[str, str] = {
    "ingest": "tamis.stages.ingest:Ingest",
    "normalize": "tamis.stages.normalize:Normalize",
    "language": "tamis.stages.language:LanguageFilter",
    "quality": "tamis.stages.quality:QualityFilter",
    "pii": "tamis.stages.pii:PiiMask",
    "exact_dedup": "tamis.stages.exact_dedup:ExactDedup",
    "near_dedup": "tamis.stages.near_dedup:NearDedup",
    "tokenize": "tamis.stages.tokenize:Tokenize",
    "pack": "tamis.stages.pack:Pack",
    "mix": "tamis.stages.mix:Mix",
    "index": "tamis.stages.index:IndexStage",
    "url_filter": "tamis.stages.url_filter:UrlFilter",
    "domain_cap": "tamis.stages.domain_cap:DomainCap",
    "safety": "tamis.stages.safety:ContentSafety",
    "decontaminate": "tamis.stages.decontaminate:Decontaminate",
    "repeated_lines": "tamis.stages.repeated_lines:RepeatedLines",
}


class UnknownStage(ValueError):
    pass


@lru_cache(maxsize=1)
def registered() -> dict[str, str]:
    """Stage names that installed packages register, by entry point."""
    return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}


def known_types() -> list[str]:
    return sorted({*BUILT_IN, *registered()})


def resolve(type_name: str) -> type[Stage] | Callable[..., Any]:
    """The Stage subclass or function a ``type`` names; :class:`UnknownStage` says why not."""
    target = BUILT_IN.get(type_name) or registered().get(type_name)
    if target is None:
        if ":" not in type_name:
            raise UnknownStage(
                f"unknown stage type {type_name!r}: not a built-in ({', '.join(sorted(BUILT_IN))}), "
                f"not registered by an installed package (entry points {ENTRY_POINT_GROUP!r}), "
                "and not an import path 'package.module:Name'"
            )
        target = type_name
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UnknownStage(f"stage type {type_name!r}: cannot import {module_name!r} ({exc})") from None
    obj: Any = module
    for part in attr.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise UnknownStage(f"stage type {type_name!r}: {module_name!r} has no {attr!r}")
    if inspect.isclass(obj):
        if not issubclass(obj, Stage):
            raise UnknownStage(f"stage type {type_name!r}: {target} is a class but not a tamis.stage.Stage")
        return obj
    if callable(obj):
        return obj
    raise UnknownStage(f"stage type {type_name!r}: {target} is neither a Stage subclass nor a function")


def make_stage(type_name: str, name: str, params: dict[str, Any], context: dict[str, Any]) -> Stage:
    """An instance of stage type ``type_name`` called ``name``."""
    target = resolve(type_name)
    if isinstance(target, type):
        return target(params, context=context, name=name)
    return FunctionStage(target, params, context=context, name=name)


def stage_class(type_name: str) -> type[Stage]:
    """The class of a stage type (FunctionStage for a function)."""
    target = resolve(type_name)
    return target if isinstance(target, type) else FunctionStage

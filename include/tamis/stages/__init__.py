"""Stage registry: pipeline configs name stages; modules are imported only when used,
so a pipeline without PII masking never loads Presidio."""

from __future__ import annotations

import importlib

from tamis.stage import Stage

REGISTRY: dict[str, str] = {
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
    "index": "tamis.stages.index:Index",
}


class UnknownStage(KeyError):
    pass


def stage_class(name: str) -> type[Stage]:
    try:
        target = REGISTRY[name]
    except KeyError:
        raise UnknownStage(f"unknown stage {name!r}; known stages: {', '.join(REGISTRY)}") from None
    module, cls = target.split(":")
    return getattr(importlib.import_module(module), cls)

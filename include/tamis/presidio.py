"""Presidio's analyzer and spaCy, imported without the deep-learning stack.

``presidio_analyzer`` imports Transformers, and spaCy (through thinc) PyTorch, as they
load, for Hugging Face NER and GPU models; both guard those imports. tamis runs only
pattern recognizers (and, when a user names one, a spaCy model), so the two are hidden
while Presidio and spaCy load: a PII worker then holds about 80 MB of them instead of
about 400 MB. A process that imported them before keeps them as they are. Import
Presidio and spaCy's word lists from here, before anything else imports spaCy.
"""

from __future__ import annotations

import sys

_HIDDEN = ("transformers", "torch")
_hidden = [name for name in _HIDDEN if name not in sys.modules]
for _name in _hidden:
    sys.modules[_name] = None  # type: ignore[assignment]  # importing it raises ImportError
try:
    from presidio_analyzer import EntityRecognizer, Pattern, PatternRecognizer
    from presidio_analyzer.predefined_recognizers import (
        CreditCardRecognizer,
        EmailRecognizer,
        IbanRecognizer,
        IpRecognizer,
        PhoneRecognizer,
        UsSsnRecognizer,
    )
    from spacy.lang.en.stop_words import STOP_WORDS as ENGLISH_STOP_WORDS
finally:
    for _name in _hidden:
        if sys.modules.get(_name, False) is None:
            del sys.modules[_name]

__all__ = [
    "ENGLISH_STOP_WORDS",
    "CreditCardRecognizer",
    "EmailRecognizer",
    "EntityRecognizer",
    "IbanRecognizer",
    "IpRecognizer",
    "Pattern",
    "PatternRecognizer",
    "PhoneRecognizer",
    "UsSsnRecognizer",
]

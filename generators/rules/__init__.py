"""The rule generator of ``clipneg generate --text rules``: spaCy parses, a versioned lexicon, exact edits."""

from __future__ import annotations

from .generator import ALL_KINDS, SUGARCREPE_KINDS, VERSION, RuleConfig, RuleGenerator
from .lexicon import BUILTIN, Lexicon, LexiconError, load_lexicon

__all__ = ["ALL_KINDS", "BUILTIN", "SUGARCREPE_KINDS", "VERSION", "Lexicon", "LexiconError", "RuleConfig",
           "RuleGenerator", "load_lexicon"]

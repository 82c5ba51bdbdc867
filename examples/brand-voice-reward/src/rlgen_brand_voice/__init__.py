"""rlgen-brand-voice: rewards that keep generated ads in a brand's voice.

``brand.off_vocabulary`` (token-level) penalises the tokens of banned words and, when the
brand has an approved vocabulary, of words off it; ``brand.required_mention``
(sentence-level) rewards completions that name the brand. rlgen finds both through the
entry point ``brand_voice = "rlgen_brand_voice.rewards"``.
"""

from .rewards import OffVocabulary, RequiredMention

__version__ = "0.1.0"

__all__ = ["OffVocabulary", "RequiredMention"]

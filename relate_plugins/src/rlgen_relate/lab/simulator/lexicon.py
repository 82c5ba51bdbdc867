"""The simulated platform's word lists: what its ad review rejects, what users read as hype, what counts as a CTA.

These belong to the simulator (the "world"), not to the reward plugins: the reward model and the risk reward
never import them, so agreement between a policy's rewards and its simulated outcomes is earned, not wired in.
All patterns match on lower-cased text with word boundaries.
"""

from __future__ import annotations

import re

# Review rejects absolute, unverifiable or medical claims outright (as ad platforms' editorial policies do).
REVIEW_REJECT = (
    r"best",
    r"the best",
    r"best[- ]selling",
    r"number one",
    r"no\.?\s?1",
    r"#\s?1",
    r"top\s?1",
    r"guarantee[sd]?",
    r"100\s?%",
    r"100 percent",
    r"cures?",
    r"cured",
    r"miracle",
    r"miraculous",
    r"risk[- ]free",
    r"no risk",
    r"zero risk",
    r"lowest prices?",
    r"cheapest",
    r"unbeatable",
    r"unbeaten",
    r"unmatched",
    r"unrivall?ed",
    r"unparalleled",
    r"perfect",
    r"flawless",
    r"permanent(?:ly)?",
    r"forever",
    r"ultimate",
    r"greatest",
    r"instant results",
    r"overnight results",
    r"clinically proven",
    r"scientifically proven",
    r"no side effects",
    r"completely safe",
    r"totally safe",
    r"free money",
    r"get rich",
    r"lose weight fast",
    r"never fails",
    r"always works",
)

# Hype users discount: it passes review but costs trust (lower CTR and, more, lower CVR).
HYPE = (
    r"amazing",
    r"incredible",
    r"unbelievable",
    r"awesome",
    r"insane",
    r"mind[- ]blowing",
    r"jaw[- ]dropping",
    r"life[- ]changing",
    r"act now",
    r"hurry",
    r"don'?t miss out",
    r"once in a lifetime",
    r"you won'?t believe",
    r"click here",
    r"wow",
)

# A specific call to action: tells the searcher what to do next.
CTA_STRONG = (
    r"book(?: online| now| today| a| your)?",
    r"schedule",
    r"call(?: now| today| us)?",
    r"order(?: now| today| online)?",
    r"shop(?: now| online| today| the)?",
    r"buy(?: now| online)",
    r"get (?:a |your )?(?:free )?(?:quote|estimate|started|pre-?approved|inspection|consultation)",
    r"start (?:your |a )?(?:free )?(?:trial|today|now|application|building)",
    r"sign up",
    r"apply(?: now| today| online)?",
    r"enroll(?: now| today)?",
    r"reserve",
    r"request(?: a| your)? (?:quote|estimate|appointment|consultation|review|info|details|callback|demo|tour)",
    r"claim(?: your)? (?:trial|spot|offer|discount|pass|class)",
    r"try (?:it )?(?:free|now|today)",
    r"compare (?:plans|rates|prices|quotes)",
    r"check (?:your )?(?:rate|rates|availability|prices)",
    r"browse",
    r"see (?:plans|prices|rates|dates|inventory|the menu|menu|availability|today'?s)",
    r"visit (?:us|today|our)",
    r"join (?:now|today|us)",
    r"save your spot",
    r"download",
    r"open an account",
    r"book a demo",
)

# Vague prompts to act that promise nothing specific.
CTA_WEAK = (r"learn more", r"find out more", r"contact us", r"read more", r"discover more", r"more info")

# Query intents and what in an ad answers them (regexes on the ad text).
INTENTS: dict[str, tuple[str, str]] = {
    # intent: (pattern in the query, pattern in the ad that satisfies it)
    "price": (
        r"\b(?:cost|costs|price|prices|pricing|how much|cheap|cheapest|affordable|rates?|deals?|fees?|sale|under \d+)\b",
        r"\$\s?\d|\d\s?%|\bfree\b|/month|/mo\b|per (?:month|hour|session|night)|\bfrom \$|\bsave\b|\boff\b|\bapr\b|\bapy\b",
    ),
    "local": (
        r"\bnear me\b|\bnearby\b|\blocal\b|\bnear\b",
        r"\bnear you\b|\bnearby\b|\blocal(?:ly)?\b|\bin your area\b|\bclose to\b|\blocations?\b|\bneighborhood\b",
    ),
    "urgent": (
        r"\b(?:open now|today|same day|same-day|emergency|24 hour|24/7|fast|tonight|now|asap|this week(?:end)?|weekend|sunday|saturday|last minute)\b",
        r"\b(?:same[- ]day|today|24/7|open (?:now|late|until|7 days|sunday|saturday)|tonight|walk[- ]ins?|this week|weekend|saturday|sunday|next[- ]day|in \d+ (?:minutes|hours))\b",
    ),
    "online": (r"\bonline\b|\bvirtual\b|\bapp\b", r"\bonline\b|\bvirtual\b|\bapp\b|\bfrom home\b|\bany device\b"),
    "free": (r"\bfree\b", r"\bfree\b|\$0\b"),
    "beginner": (r"\bbeginners?\b|\bfirst[- ]time\b|\bnew to\b", r"\bbeginners?\b|\bfirst[- ]time\b|\ball levels\b|\bnew (?:students?|clients?|patients?)\b|\bintro\b"),
}

# Words that carry no topic in a query; intent words are handled through INTENTS, and superlatives a user types
# ("best dentist near me") are not something an ad should repeat.
QUERY_MODIFIERS = frozenset(
    "near me nearby best top cheap cheapest affordable good great how much what when where why which who is are do does "
    "can should to for a an the of in on with and or my i vs versus without under get find need open now today "
    "cost costs price prices pricing rates rate deal deals this that your you it".split()
)

STOPWORDS = frozenset(
    "a an the and or but of to in on at for with from by as is are was were be been it its this that these those "
    "we our us you your they their he she his her i me my not no so if then than too very can will just all any "
    "more most some such only own same other into over after before up down out off about again also per each".split()
)


def compile_alternatives(patterns: tuple[str, ...]) -> re.Pattern[str]:
    """One regex matching any of ``patterns`` as whole words (a phrase never matches inside a longer word)."""
    body = "|".join(f"(?:{p})" for p in sorted(patterns, key=len, reverse=True))
    # '#1' and '100%' start or end with a non-word character, so plain \b would miss them; use look-arounds
    return re.compile(rf"(?<![\w#])(?:{body})(?![\w%])")

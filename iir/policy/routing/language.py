"""Which language a prompt is written in, from its script and its most common short words.

Good enough to route on (and to report), and a few microseconds: no model, no dictionary files.
"""

from __future__ import annotations

import re

_KANA = re.compile(r"[\u3040-\u30ff]")
_HANGUL = re.compile(r"[\uac00-\ud7af]")
_HAN = re.compile(r"[\u4e00-\u9fff]")
_CYRILLIC = re.compile(r"[\u0400-\u04ff]")
_ARABIC = re.compile(r"[\u0600-\u06ff]")
_WORD = re.compile(r"[a-zà-öø-ÿ]+")

_STOPWORD_TEXT: dict[str, str] = {
    "en": "the a an and is are of to in it you what how why this that for with can please my me about",
    "de": "der die das und ist ich nicht ein eine wie was warum bitte mir mit für sie du zu den",
    "fr": "le la les et est je un une des du pour que qui comment pourquoi avec vous ce dans",
    "es": "el la los las y es un una que por para cómo qué con por favor del mi este esta",
    "pt": "o a os as e é um uma que por para como com não do da em meu você isso esta",
    "it": "il lo la gli e è un una che per come con non di mi questo sono",
}
_STOPWORDS = {lang: frozenset(words.split()) for lang, words in _STOPWORD_TEXT.items()}


def detect(text: str) -> str:
    """ISO 639-1 code of ``text`` (lower-cased), or ``und`` when there is nothing to tell by."""
    if not text.isascii():
        if _KANA.search(text):
            return "ja"
        if _HANGUL.search(text):
            return "ko"
        if _HAN.search(text):
            return "zh"
        if _CYRILLIC.search(text):
            return "ru"
        if _ARABIC.search(text):
            return "ar"
    words = set(_WORD.findall(text, 0, 200))
    if not words:
        return "und"
    best, best_hits = "en", 0
    for lang, stop in _STOPWORDS.items():
        hits = len(stop & words)
        if hits > best_hits:
            best, best_hits = lang, hits
    return best

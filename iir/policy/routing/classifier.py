"""The task category of a prompt, from weighted cues in several languages.

Explainable by construction: every point a category scores comes from a named cue (a word, a word
stem, a two-word phrase, a CJK keyword or a structural pattern such as a code fence), and the
decision reports the cues that won. Cost is linear in the (bounded) text the features kept: one
word split, a few dictionary look-ups per word and a handful of regular expressions.

The scan runs in Rust (``iir._native.CueScanner``, built from the tables below once per process:
about 10 us for a 1 KB prompt); the plain-Python scan here is its reference, and the tests hold
the two to identical results.
"""

from __future__ import annotations

import array
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from operator import itemgetter

from iir.policy.routing.features import Features

try:
    from iir import _native
except ImportError:  # pragma: no cover - a source checkout without the built extension
    _native = None  # type: ignore[assignment]

CHAT = "chat"
QA = "qa"
CODING = "coding"
MATH = "math"
REASONING = "reasoning"
CREATIVE = "creative"
SUMMARIZATION = "summarization"
TRANSLATION = "translation"
EXTRACTION = "extraction"

CATEGORIES: tuple[str, ...] = (
    CHAT,
    QA,
    CODING,
    MATH,
    REASONING,
    CREATIVE,
    SUMMARIZATION,
    TRANSLATION,
    EXTRACTION,
)


class ClassifierError(Exception):
    """The classifier could not decide (answered as 503 ``Classifier error: ...``)."""


# --- cue tables ----------------------------------------------------------------------------------
# Each line: ``weight: cue cue cue``. A cue ending in ``*`` is a word stem (matches any word that
# starts with it, at least 4 letters before the star); a cue with ``_`` is a two-word phrase
# (``how_are`` matches "how are"); everything else is a whole word.

_LATIN: dict[str, str] = {
    CHAT: """
        3: hi hello hey hiya howdy yo hallo servus moin bonjour salut coucou hola buenas oi olá ciao
        3: thanks thank danke merci gracias obrigado obrigada grazie bye goodbye tschüss adieu adiós
        3: how_are how's_it what's_up good_morning good_night good_evening guten_morgen guten_tag
        3: wie_geht's wie_gehts ça_va comment_vas qué_tal como_vai tudo_bem buenos_días bom_dia
        3: nice_to who_are are_you
        2: bored chat chatting lol haha weekend mood feeling tired
        1: yourself your_name
    """,
    QA: """
        2: what_is what_are what_was who_was who_is when_did when_was where_is where_are
        2: was_ist wer_war wann_wurde wo_liegt qu'est-ce qui_était où_se quién_fue qué_es dónde_está
        2: o_que quem_foi onde_fica quando_foi capital population history historical definition
        2: define meaning difference_between how_does how_do why_is why_do why_does explain
        2: erkläre erklär explique explica hauptstadt capitale capitalé definición
        1: who what when where why which wer wann warum pourquoi quand quién cuándo porque
        1: invented discovered founded climate planet vitamin disease symptoms
    """,
    CODING: """
        3: python javascript typescript java golang rust c++ c# kotlin swift php ruby bash shell
        3: sql postgres postgresql mysql sqlite regex regexp html css json_schema dockerfile
        3: docker kubernetes kubectl git npm pip react django flask fastapi pandas numpy
        3: function funktion fonction función função method methode class klasse compile compiler
        3: debug debugging bug bugs traceback stacktrace exception segfault nullpointerexception
        3: refactor* implement* algorithm* recursion recursive async await endpoint api
        3: unit_test unit_tests code codes coding programm* programa* programme* script scripts
        3: variable variables array arrays hashmap dictionary linked_list binary_search quicksort
        3: syntax typeerror valueerror keyerror indexerror undefined null pointer loop
        2: query queries database index server client library framework deploy repository
        3: thread threads struct structs mutex deadlock memory_leak
        2: frontend backend microservice lambda process processes
        2: import export boolean integer string strings parse parser cli
    """,
    MATH: """
        4: integral integrate derivative differentiate ableitung intégrale dérivée integrale derivada
        4: equation equations gleichung équation ecuación equação equazione
        2: solve löse résous resuelve resolva risolvi
        3: calculate berechne calcule calcula calcular calcola compute sum factor* polynomial prove
        3: irrational square_root angle angles hexagon polygon perimeter diagonal
        1: product
        3: probability wahrscheinlichkeit probabilité probabilidad probabilidade matrix matrices
        3: eigenvalue* vector vectors prime primes divisible logarithm log sin cos tan sqrt
        3: percent percentage prozent pourcentage porcentaje porcentagem fraction fractions
        3: geometry triangle circle radius area volume hypotenuse theorem lemma algebra calculus
        2: average mean median variance deviation statistics interest compound
        2: multiply multiplied divide divided plus minus times squared cubed
        1: how_much how_many wie_viel combien cuánto quanto
    """,
    REASONING: """
        4: riddle rätsel énigme acertijo enigma charada puzzle logic_puzzle brain_teaser
        3: step_by by_step schritt_für étape_par paso_a passo_a think_through reason_through
        3: trade-offs tradeoffs trade_offs pros_and pros_cons advantages_and disadvantages pros cons prós contras
        3: should_i should_we sollte_ich devrais-je debería dilemma decide decision
        3: compare contrast vergleiche compare* compara* evaluate assess analyze analyse analyze*
        3: implications consequences hypothetical scenario argue argument counterargument
        3: logically deduce deduction infer inference paradox fallacy syllogism
        2: heavier lighter taller shorter older younger faster slower liar liars lies truth scenarios consider
        2: strategy strategic plan prioritize weigh justify because therefore if_all all_are
        2: which_is which_one better worse
    """,
    CREATIVE: """
        4: poem poems poetry haiku sonnet limerick lyrics gedicht poème poema poesía poesia
        4: story stories tale fable fairy geschichte märchen histoire conte cuento historia
        3: write_a write_me schreibe_ein écris écris-moi escribe escreva compose imagine
        3: fiction fictional novel chapter character characters plot villain hero dragon
        3: slogan tagline jingle rap song verse verses rhyme rhymes screenplay dialogue monologue
        4: joke jokes
        3: creative kreativ créatif creativo criativo funny humorous witty whimsical scrivi
        2: once_upon il_était érase_una era_uma es_war toast speech birthday wedding
    """,
    SUMMARIZATION: """
        5: summarize summarise summary summarization zusammenfassen zusammenfassung fasse
        5: résume résumer résumé resume resumir resumen resuma resumo tl;dr tl_dr tldr sintetiza riassumi riassunto
        4: key_points main_points kernaussagen points_clés puntos_clave pontos_principais
        4: condense shorten recap gist overview brief_summary in_short nutshell
        3: bullet_points few_sentences one_sentence one_line one_paragraph abstract takeaways
        1: article text paragraph report meeting transcript notes email passage
    """,
    TRANSLATION: """
        5: translate translation translator übersetze übersetzen übersetzung traduis traduire
        5: traduction traduce traducir traducción traduza traduzir tradução traduci tradurre
        4: into_english into_german into_french into_spanish into_portuguese into_chinese
        4: into_japanese into_italian ins_englische ins_deutsche en_anglais en_français
        4: en_espagnol en_allemand al_inglés al_español al_francés para_o para_inglês
        3: in_english auf_englisch auf_deutsch en_inglés em_inglês in_german in_french in_spanish
        3: in_japanese in_chinese in_portuguese in_italian to_english to_german to_french to_spanish
        3: to_japanese to_chinese to_portuguese to_italian
        2: you_say
        1: english german french spanish portuguese chinese japanese italian
    """,
    EXTRACTION: """
        5: extract extraction extrahiere extrahieren extrais extraire extrae extraer extraia extrair
        4: pull_out list_all find_all identify_all extract_all all_emails
        4: json_object json_format csv_format key-value entities action_items
        2: as_json in_json hashtag hashtags urls
        4: names_of emails phone_numbers email_addresses dates_mentioned fields
        3: parse_the parse_this structured_data table_of named_entities entity invoice_number
        1: json csv yaml table field columns
    """,
}

_CJK: dict[str, str] = {
    CHAT: "3: 你好 您好 嗨 谢谢 早上好 晚上好 再见 こんにちは こんばんは おはよう ありがとう よろしく 元気 最近怎么样 你是谁",
    QA: "2: 什么是 是什么 为什么 谁 哪里 哪个 何ですか とは なぜ どこ 誰 いつ 首都 历史 歴史 解释 説明",
    CODING: "3: 代码 函数 编程 程序 报错 错误 python java javascript sql コード 関数 プログラム バグ エラー 実装 正規表現 算法 アルゴリズム",
    MATH: "4: 方程 积分 导数 计算 求解 概率 方程式 積分 微分 計算 確率 解いて 等于 平方",
    REASONING: "3: 谜题 推理 逻辑 利弊 优缺点 应该 比较 分析 パズル 論理 推論 メリット デメリット 比較 分析 べきか",
    CREATIVE: "4: 写一首 诗 故事 小说 歌词 詩 物語 小説 歌詞 俳句 创作 書いて",
    SUMMARIZATION: "5: 总结 摘要 概括 要约 要約 まとめて まとめ 概要 要点",
    TRANSLATION: "5: 翻译 译成 翻成 翻訳 訳して 英語に 中文 英文 日本語に",
    EXTRACTION: "5: 提取 抽出 抽取 找出所有 列出所有 取り出 json",
}

# Literal markers found with ``in`` (fast, no word boundaries needed): code and notation.
_MARKERS: dict[str, tuple[tuple[str, float, str], ...]] = {
    CODING: (
        ("```", 4.0, "code block"),
        ("def ", 2.0, "code syntax"),
        ("=>", 2.0, "code syntax"),
        ("#include", 4.0, "code syntax"),
        ("console.log", 4.0, "code syntax"),
        ("public static", 4.0, "code syntax"),
        ("();", 3.0, "code syntax"),
        ("traceback (most recent", 4.0, "error output"),
        ("error:", 2.0, "error output"),
    ),
    MATH: (
        ("\\frac", 4.0, "math notation"),
        ("\\int", 4.0, "math notation"),
        ("∫", 4.0, "math notation"),
        ("√", 4.0, "math notation"),
        ("∑", 4.0, "math notation"),
        ("d/dx", 4.0, "math notation"),
    ),
    SUMMARIZATION: (("tl;dr", 5.0, "tl;dr"),),
}
# Each pattern runs only when its gates pass: each gate is a group of literals, one of which must
# be in the text. A regular expression steps through every character, a literal test is a fast
# search: most texts skip most patterns. :data:`_DIGITS` also passes any non-ASCII text, since
# ``\d`` matches other scripts' digits too.
_DIGITS = tuple("0123456789")
_Gates = tuple[tuple[str, ...], ...]
_PATTERNS: tuple[tuple[str, _Gates, re.Pattern[str], float, str], ...] = (
    (
        MATH,
        (_DIGITS,),
        re.compile(r"\d(?:\s*[*/\u00d7\u00f7=]\s*\(?-?\d|\s+[-+]\s+\(?\d|\+\d)|\^\d"),
        4.0,
        "arithmetic",
    ),
    (MATH, (("%",), _DIGITS), re.compile(r"\d\s?%"), 2.0, "percentage"),
    (
        CODING,
        (("(",), ("def ", "fn ", "func")),
        re.compile(r"\b(?:def|function|fn|func) \w+\("),
        3.0,
        "code syntax",
    ),
    (CODING, (("import ",),), re.compile(r"\bimport [\w.]+$", re.M), 3.0, "code syntax"),
    (CODING, ((" from ",),), re.compile(r"\bselect \S.* from "), 3.0, "code syntax"),
    (EXTRACTION, (('"',),), re.compile(r"\{\s*\"\w+\"\s*:"), 2.0, "json template"),
)

_TEXT_WEIGHT = 1.0
_SYSTEM_WEIGHT = 0.5
# Below this best score the request has no clear cue: short small talk or a plain question.
_MIN_SCORE = 2.0
_SECTION_CAP = 9.0
_LEAD_BONUS = 1.5
_END_BONUS = 1.0
_SMALL_TALK_CHARS = 120
_CLAUSE_CHARS = ":\n\u3002\uff1a?\uff1f!"
_CLAUSE_END = re.compile(f"[{re.escape(_CLAUSE_CHARS)}]|\\.\\s")
_SHORT_CHARS = 25


def _parse_tables() -> tuple[
    dict[str, tuple[tuple[str, float], ...]],
    dict[str, tuple[tuple[str, float], ...]],
    tuple[tuple[str, str, float], ...],
]:
    words: dict[str, list[tuple[str, float]]] = {}
    stems: dict[str, list[tuple[str, float]]] = {}
    for cat, spec in _LATIN.items():
        for line in spec.strip().splitlines():
            weight_s, _, cues = line.strip().partition(":")
            weight = float(weight_s)
            for cue in cues.split():
                if cue.count("_") > 1 or (cue.endswith("*") and len(cue) < 5):
                    raise ValueError(f"bad cue {cue!r}: phrases have two words, stems 4+ letters")
                cue = cue.replace("_", " ")
                if cue.endswith("*"):
                    stems.setdefault(cue[:-1], []).append((cat, weight))
                else:
                    words.setdefault(cue, []).append((cat, weight))
    cjk: list[tuple[str, str, float]] = []
    for cat, spec in _CJK.items():
        weight_s, _, cues = spec.partition(":")
        cjk.extend((cue, cat, float(weight_s)) for cue in cues.split())
    return (
        {k: tuple(v) for k, v in words.items()},
        {k: tuple(v) for k, v in stems.items()},
        tuple(cjk),
    )


_WORDS, _STEMS, _CJK_CUES = _parse_tables()
_CJK_WORDS: dict[str, tuple[tuple[str, float], ...]] = {}
for _cue, _cat, _w in _CJK_CUES:
    _CJK_WORDS[_cue] = (*_CJK_WORDS.get(_cue, ()), (_cat, _w))
_CJK_KEYS = tuple(_CJK_WORDS)
_WORD_KEYS = frozenset(k for k in _WORDS if " " not in k)
_PHRASE_KEYS = frozenset(k for k in _WORDS if " " in k)
# Two-word phrases are looked up only after a word that starts one, instead of joining every pair
# of neighbouring words.
_PHRASE_NEXT: dict[str, tuple[tuple[str, str], ...]] = {}
for _phrase in sorted(_PHRASE_KEYS):
    _first, _, _second = _phrase.partition(" ")
    _PHRASE_NEXT[_first] = (*_PHRASE_NEXT.get(_first, ()), (_second, _phrase))
_PHRASE_FIRSTS = frozenset(_PHRASE_NEXT)
# Stems are found from the words: a word's first four letters pick the few stems worth trying.
_STEM_HEADS = frozenset(stem[:4] for stem in _STEMS)
_STEM_LENGTHS = tuple(sorted({len(stem) for stem in _STEMS}, reverse=True))
_TOKEN = re.compile(r"\w[\w'+#\-]*")
# ASCII text is split the same way without the regular expression: bytes outside the token
# alphabet become spaces, and a run is a token once any leading ' + # - is dropped.
_TOKEN_BYTES = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_'+#-")
_TO_SPACES = bytes(c if c in _TOKEN_BYTES else 0x20 for c in range(256))
_NOT_WORD_STARTS = ("'", "+", "#", "-")
_WIDE_RANGES = ((0x3040, 0x30FF), (0x4E00, 0x9FFF))
_WIDE = re.compile("[" + "".join(f"{chr(a)}-{chr(b)}" for a, b in _WIDE_RANGES) + "]")


@dataclass(slots=True, frozen=True)
class Category:
    name: str
    confidence: float  # share of the winner in all points scored, 0..1
    cues: tuple[str, ...]  # the winner's strongest cues, for the human reason

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "confidence": round(self.confidence, 3), "cues": list(self.cues)}


_NO_KEYS: frozenset[str] = frozenset()


def _stems(words: set[str]) -> set[str]:
    found: set[str] = set()
    for word in [w for w in words if w[:4] in _STEM_HEADS]:
        for n in _STEM_LENGTHS:  # longest first: one stem per word
            if n <= len(word) and word[:n] in _STEMS:
                found.add(word[:n])
                break
    return found


def _tokens(text: str) -> list[str]:
    """``_TOKEN.findall(text)``, three to four times faster for ASCII text."""
    if not text.isascii():
        return _TOKEN.findall(text)
    runs = text.encode("ascii").translate(_TO_SPACES).decode("ascii")
    if (
        runs.startswith(_NOT_WORD_STARTS)
        or " '" in runs
        or " +" in runs
        or " #" in runs
        or " -" in runs
    ):
        return [t for t in (r.lstrip("'+#-") for r in runs.split()) if t]
    return runs.split()


def _phrases(tokens: list[str], words: set[str]) -> set[str]:
    """The cue phrases among neighbouring ``tokens`` (``words`` holds at least the tokens): only
    phrases whose two words both occur are looked for, so most texts check none."""
    found: set[str] = set()
    for first in words & _PHRASE_FIRSTS:
        for second, phrase in _PHRASE_NEXT[first]:
            if second in words:
                try:  # ``first`` may be only an elision's end (l'how), not a token
                    i = tokens.index(first)
                    while tokens[i + 1] != second:
                        i = tokens.index(first, i + 1)
                except (IndexError, ValueError):
                    continue
                found.add(phrase)
    return found


def _keys(text: str, start: int, stop: int) -> set[str]:
    """Cue words, phrases and CJK cues in ``text[start:stop]`` (what a bonus is tested against:
    a word that is no cue may be left out)."""
    part = text[start:stop]
    tokens = _tokens(part)
    out = set(tokens)
    if len(tokens) > 1:
        out |= _phrases(tokens, out)
    if not part.isascii():
        out.update(cue for cue in _CJK_KEYS if cue in part)
    return out


def _score_text(
    text: str,
    weight: float,
    total: dict[str, float],
    cues: dict[str, list[tuple[float, str]]],
    lead_end: int = 0,
    end_start: int = -1,
) -> None:
    """Adds the points ``text`` scores, each category capped at :data:`_SECTION_CAP` times the
    weight: a category is as strong as its few strongest cues, so a long text full of one
    topic's words (material) cannot outvote the instruction about what to do with it.

    Word, phrase and CJK cues found before ``lead_end`` (the first clause) or from ``end_start``
    on (the last line) also score a bonus, capped the same way: that is where instructions sit.
    """
    if not text:
        return
    scores = dict.fromkeys(CATEGORIES, 0.0)
    bonus = dict.fromkeys(CATEGORIES, 0.0)
    tokens = _tokens(text)
    words = set(tokens)
    if "'" in text:  # elisions: l'area, d'une, qu'il; keep the whole token too (what's)
        words.update(t.rpartition("'")[2] for t in tokens if "'" in t)
    found = words & _WORD_KEYS
    if len(tokens) > 1:
        found |= _phrases(tokens, words)
    # Sorted: ties between equal cues are then reported the same way every run.
    hits = [(key, _WORDS[key]) for key in sorted(found)]
    if not text.isascii() and _WIDE.search(text):
        hits.extend((cue, _CJK_WORDS[cue]) for cue in _CJK_KEYS if cue in text)
    # Where the hits sit only matters when there are hits.
    lead = _keys(text, 0, lead_end) if lead_end > 0 and hits else _NO_KEYS
    end = _keys(text, end_start, len(text)) if end_start >= 0 and hits else _NO_KEYS
    for key, entries in hits:
        extra = 0.0
        if key in lead:
            extra += _LEAD_BONUS
        if key in end:
            extra += _END_BONUS
        for cat, w in entries:
            scores[cat] += w * weight
            cues[cat].append((w * (weight + extra), key))
            if extra:
                bonus[cat] += w * extra
    for stem in sorted(_stems(words)):
        for cat, w in _STEMS[stem]:
            scores[cat] += w * weight
            cues[cat].append((w * weight, stem + "*"))
    for cat, markers in _MARKERS.items():
        for marker, w, label in markers:
            if marker in text:
                scores[cat] += w * weight
                cues[cat].append((w * weight, label))
    ascii_text = text.isascii()
    for cat, gates, pattern, w, label in _PATTERNS:
        for gate in gates:
            if not (gate is _DIGITS and not ascii_text) and not any(map(text.__contains__, gate)):
                break
        else:
            if pattern.search(text):
                scores[cat] += w * weight
                cues[cat].append((w * weight, label))
    cap = _SECTION_CAP * weight
    for cat in CATEGORIES:
        v, b = scores[cat], bonus[cat]
        if v:
            total[cat] += min(v, cap) + min(b, _SECTION_CAP * (_LEAD_BONUS + _END_BONUS))


_Cues = list[list[tuple[float, str]]]
_INDICES = range(len(CATEGORIES))
_CHAT_AT = CATEGORIES.index(CHAT)
_SUMMARIZATION_AT = CATEGORIES.index(SUMMARIZATION)
_Scan = Callable[[str, str, str], tuple[list[float], _Cues]]


def _scan_reference(head: str, tail: str, system: str) -> tuple[list[float], _Cues]:
    """Scores and cues of a prompt, per category in :data:`CATEGORIES` order: the plain-Python
    scan, the reference the Rust one (:func:`native_scan`) is tested against."""
    text = f"{head}\n{tail}" if tail else head
    # The instruction is the first clause or the last line; the rest is mostly material
    # (an article to summarize, code to translate), so cues there count extra.
    lead_end, end_start = 0, -1
    m = _CLAUSE_END.search(head, 0, 200)
    if m is not None and m.end() < len(head.rstrip()):
        lead_end = m.end()
        last = text.rstrip()
        cut = max(last.rfind("\n"), last.rfind(". "))
        if cut > 0:
            end_start = cut
    scores = dict.fromkeys(CATEGORIES, 0.0)
    cues: dict[str, list[tuple[float, str]]] = {c: [] for c in CATEGORIES}
    _score_text(text, _TEXT_WEIGHT, scores, cues, lead_end, end_start)
    _score_text(system, _SYSTEM_WEIGHT, scores, cues)
    return list(scores.values()), list(cues.values())


def _python_ranges(pattern: str, chars: str) -> list[tuple[int, int]]:
    """The code points ``pattern`` (one character class) matches, as inclusive ranges."""
    out: list[tuple[int, int]] = []
    for m in re.finditer(pattern + "+", chars):
        lo, hi = ord(chars[m.start()]), ord(chars[m.end() - 1])
        if lo < 0xD800 <= hi:  # a run across the surrogates left out of ``chars``
            out += [(lo, 0xD7FF), (0xE000, hi)]
        else:
            out.append((lo, hi))
    return out


def _rust_pattern(pattern: re.Pattern[str], classes: dict[str, str]) -> str:
    r"""``pattern`` in Rust's syntax with Python's own ``\d \w \s`` (code-point ranges), so the
    two engines match the same texts. Only what the patterns above use is translated: ``\b``
    always stands before a word character, and the patterns are only asked whether they match."""
    src, out, i, in_class = pattern.pattern, [], 0, False
    while i < len(src):
        c = src[i]
        if c == "\\" and i + 1 < len(src):
            e = src[i + 1]
            i += 2
            if e in "dws":
                out.append(classes[e] if in_class else f"[{classes[e]}]")
            elif e in "DWS" and not in_class:
                out.append(f"[^{classes[e.lower()]}]")
            elif e == "b" and not in_class:
                out.append(f"(?:\\A|[^{classes['w']}])")
            elif e.isalpha() and e not in "u":
                raise ValueError(f"no Rust translation for \\{e} in {src!r}")
            else:
                out.append("\\" + e)
            continue
        if c == "[" and not in_class:
            in_class = True
        elif c == "]" and in_class:
            in_class = False
        out.append(c)
        i += 1
    flags = "m" if pattern.flags & re.M else ""
    if pattern.flags & (re.S | re.I | re.X):
        raise ValueError(f"no Rust translation for the flags of {src!r}")
    return f"(?{flags}:{''.join(out)})" if flags else "".join(out)


@cache
def native_scan() -> _Scan | None:
    """The Rust cue scan built from the tables above (once: about 0.2 s to list Python's
    character classes), or None without the extension."""
    if _native is None or not hasattr(_native, "CueScanner"):
        return None
    chars = (
        array.array("I", range(0xD800)).tobytes()
        + array.array("I", range(0xE000, 0x110000)).tobytes()
    ).decode("utf-32-le")
    ranges = {k: _python_ranges(f"\\{k}", chars) for k in "dws"}
    classes = {
        k: "".join(f"\\x{{{lo:x}}}-\\x{{{hi:x}}}" for lo, hi in v) for k, v in ranges.items()
    }
    index = {c: i for i, c in enumerate(CATEGORIES)}

    def entries(
        table: dict[str, tuple[tuple[str, float], ...]],
    ) -> list[tuple[str, list[tuple[int, float]]]]:
        return [(k, [(index[c], w) for c, w in v]) for k, v in table.items()]

    scanner = _native.CueScanner(
        len(CATEGORIES),
        entries(_WORDS),
        entries(_STEMS),
        entries(_CJK_WORDS),
        [(m, index[cat], w, label) for cat, ms in _MARKERS.items() for m, w, label in ms],
        [
            (
                _rust_pattern(p, classes),
                [(list(gate), gate is _DIGITS) for gate in gates],
                index[cat],
                w,
                label,
            )
            for cat, gates, p, w, label in _PATTERNS
        ],
        (ranges["w"], list(_WIDE_RANGES), ranges["s"], _CLAUSE_CHARS),
        (_TEXT_WEIGHT, _SYSTEM_WEIGHT, _SECTION_CAP, _LEAD_BONUS, _END_BONUS),
    )

    def scan(head: str, tail: str, system: str) -> tuple[list[float], _Cues]:
        try:
            return scanner.scan_prompt(head, tail, system)
        except UnicodeEncodeError:  # lone surrogates: not UTF-8, the Python scan takes them
            return _scan_reference(head, tail, system)

    return scan


def classify(features: Features) -> Category:
    """The task category of the request whose features are given."""
    return _classify(features, native_scan() or _scan_reference)


def classify_reference(features: Features) -> Category:
    """:func:`classify` with the plain-Python cue scan."""
    return _classify(features, _scan_reference)


def _classify(features: Features, scan: _Scan) -> Category:
    try:
        head = features.head
        scores, cues = scan(head, features.tail, features.system)
        # Small talk is short: greetings and thanks inside a long text are material.
        if features.chars > _SMALL_TALK_CHARS:
            scores[_CHAT_AT] *= 0.3
        # Long material with an instruction to shorten it is the summarization signature.
        if features.chars > 1500 and scores[_SUMMARIZATION_AT] > 0:
            scores[_SUMMARIZATION_AT] += 2.0
            cues[_SUMMARIZATION_AT].append((2.0, "long input"))
        at = max(_INDICES, key=scores.__getitem__)  # the first of equals, in CATEGORIES order
        best, top = CATEGORIES[at], scores[at]
    except Exception as exc:  # a bug here must not become a 500 without a reason
        raise ClassifierError(f"{type(exc).__name__}: {exc}") from exc
    if top < _MIN_SCORE:
        # Weak cues: a question is general Q&A, a short remark small talk.
        stripped = head.strip()
        if stripped.endswith(("?", "\uff1f")):
            name = QA
        elif len(stripped) <= _SHORT_CHARS:
            name = CHAT
        else:
            name = best if top > 0 else QA
        found_cues = _top(cues[CATEGORIES.index(name)])
        return Category(name, 0.5 if found_cues else 0.3, found_cues or ("no clear cue",))
    return Category(best, top / sum(scores), _top(cues[at]))


def _top(found: list[tuple[float, str]]) -> tuple[str, ...]:
    found.sort(key=itemgetter(0), reverse=True)  # stable: equals keep the order found
    return tuple(dict.fromkeys(label for _, label in found))[:3]

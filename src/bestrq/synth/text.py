"""Transcripts for the synthetic corpus: varied sentences and spoken commands.

Sentences draw nouns, verbs and adjectives from wonderwords' lexicon (about 8,000 words)
with Zipf-like frequencies, so frequent words recur as in real speech while the
vocabulary stays large. Verbs appear after modals, so their base form is always
grammatical. Numbers are written as words. Commands follow Fluent Speech Commands and
SLURP: an intent, slots (device, room, object, language, time) and many phrasings.
Every transcript is lower case letters, apostrophes and single spaces.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources

import numpy as np

_ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen "
    "fourteen fifteen sixteen seventeen eighteen nineteen"
).split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()


def number_to_words(n: int) -> str:
    """English words for 0 <= n < 1,000,000 ("three hundred and twelve")."""
    if not 0 <= n < 1_000_000:
        raise ValueError(f"number out of range: {n}")
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    if n < 1000:
        rest = n % 100
        head = _ONES[n // 100] + " hundred"
        return head if rest == 0 else f"{head} and {number_to_words(rest)}"
    rest = n % 1000
    head = number_to_words(n // 1000) + " thousand"
    if rest == 0:
        return head
    return f"{head} and {number_to_words(rest)}" if rest < 100 else f"{head} {number_to_words(rest)}"


def year_to_words(year: int) -> str:
    """Years the way they are said: 1984 -> "nineteen eighty four", 2007 -> "two thousand and seven"."""
    century, rest = divmod(year, 100)
    if 2000 <= year < 2010:
        return number_to_words(year)
    if rest == 0:
        return number_to_words(century) + " hundred"
    tail = number_to_words(rest) if rest >= 10 else "oh " + number_to_words(rest)
    return f"{number_to_words(century)} {tail}"


_WORD = re.compile(r"^[a-z]{2,14}$")


@lru_cache(maxsize=1)
def lexicon() -> dict[str, tuple[str, ...]]:
    """Nouns, verbs and adjectives: plain lower-case words, profanity removed, in a fixed order."""
    assets = resources.files("wonderwords") / "assets"

    def read(name: str) -> list[str]:
        return (assets / name).read_text(encoding="utf-8").split("\n")

    banned = {w.strip().lower() for w in read("profanitylist.txt")}
    out = {}
    for kind, name in (("noun", "nounlist.txt"), ("verb", "verblist.txt"), ("adj", "adjectivelist.txt")):
        words = sorted({w.strip() for w in read(name)} - banned)
        out[kind] = tuple(w for w in words if _WORD.match(w))
    return out


class ZipfPool:
    """Draws words with probability proportional to (rank + 300) ** -0.6, ranks a fixed shuffle.

    The offset keeps the head from swallowing the mass: at one hour of speech the training
    split still holds over 2,000 distinct words, while frequent words recur."""

    def __init__(self, words: tuple[str, ...]) -> None:
        order = np.random.default_rng(1234).permutation(len(words))  # fixed: same ranks in every corpus
        self.words = [words[i] for i in order]
        weights = (np.arange(len(words)) + 300.0) ** -0.6
        self.cdf = np.cumsum(weights / weights.sum())

    def __call__(self, rng: np.random.Generator) -> str:
        return self.words[min(int(np.searchsorted(self.cdf, rng.random())), len(self.words) - 1)]


def _pick(rng: np.random.Generator, options) -> str:
    return options[int(rng.integers(len(options)))]


_SUBJECTS = ("i", "you", "we", "they", "he", "she", "nobody", "everyone", "my friend", "the teacher",
             "our neighbour", "the old man", "a young woman", "the children", "my sister", "his brother")
_MODALS = ("will", "would", "can", "could", "should", "might", "must", "may", "did not", "will not",
           "cannot", "used to", "wanted to", "needed to", "tried to", "decided to", "forgot to", "promised to")
_PREPS = ("in", "on", "under", "behind", "near", "beside", "with", "without", "for", "from", "after",
          "before", "inside", "across", "around", "against", "beyond", "through", "toward")
_CONJ = ("and", "but", "because", "so", "while", "although", "before", "after", "until", "when")
_DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_QWORDS = ("why", "when", "how", "where")


class SentenceGenerator:
    """Random, grammatical, lower-case English sentences of 5 to 25 words."""

    def __init__(self) -> None:
        lex = lexicon()
        self.noun, self.verb, self.adj = ZipfPool(lex["noun"]), ZipfPool(lex["verb"]), ZipfPool(lex["adj"])

    def _np(self, rng: np.random.Generator) -> str:
        """A noun phrase: determiner, optional adjective, noun; sometimes a counted plural."""
        r = rng.random()
        if r < 0.12:
            n = int(rng.choice([rng.integers(2, 20), rng.integers(20, 1000), rng.integers(1000, 100000)]))
            return f"{number_to_words(n)} {plural(self.noun(rng))}"
        adj = self.adj(rng) + " " if rng.random() < 0.7 else ""
        if adj and rng.random() < 0.25:
            adj = f"{self.adj(rng)} {adj}"
        noun = self.noun(rng)
        det = _pick(rng, ("the", "a", "my", "your", "our", "their", "this", "that", "every", "one"))
        if det == "a" and (adj or noun)[0] in "aeiou":
            det = "an"
        return f"{det} {adj}{noun}"

    def _clause(self, rng: np.random.Generator, first: bool = True) -> str:
        kind = rng.random() * (1.0 if first else 0.85)  # questions only open a sentence
        if kind < 0.25:
            s = f"{_pick(rng, _SUBJECTS)} {_pick(rng, _MODALS)} {self.verb(rng)} {self._np(rng)}"
        elif kind < 0.7:
            s = f"{self._np(rng)} {_pick(rng, _MODALS)} {self.verb(rng)} {self._np(rng)}"
        elif kind < 0.85:
            s = f"{self._np(rng)} was {self.adj(rng)}"
        else:
            s = f"{_pick(rng, _QWORDS)} would {_pick(rng, _SUBJECTS)} {self.verb(rng)} {self._np(rng)}"
        r = rng.random()
        if r < 0.4:
            s += f" {_pick(rng, _PREPS)} {self._np(rng)}"
        elif r < 0.5:
            s += f" on {_pick(rng, _DAYS)}"
        elif r < 0.57:
            s += f" in {year_to_words(int(rng.integers(1850, 2030)))}"
        elif r < 0.63:
            s += f" at {number_to_words(int(rng.integers(1, 13)))} o'clock"
        return s

    def __call__(self, rng: np.random.Generator) -> str:
        text = self._clause(rng)
        if rng.random() < 0.4:
            text += f" {_pick(rng, _CONJ)} {self._clause(rng, first=False)}"
        return normalise(text)


def plural(noun: str) -> str:
    if noun.endswith(("s", "x", "z", "ch", "sh")):
        return noun + "es"
    if noun.endswith("y") and noun[-2:-1] not in tuple("aeiou"):
        return noun[:-1] + "ies"
    return noun + "s"


def normalise(text: str) -> str:
    """Lower case, only letters, apostrophes and single spaces."""
    text = re.sub(r"[^a-z' ]+", " ", text.lower())
    return re.sub(r" +", " ", text).strip()


# --- spoken commands -------------------------------------------------------------------

_ROOMS = ("kitchen", "bedroom", "living room", "bathroom", "garage", "office", "hallway", "garden")
_SWITCHABLE = ("lights", "lamp", "heating", "music", "television", "fan", "radio", "coffee machine",
               "washing machine", "air conditioning")
_LEVELS = {"volume": ("louder", "quieter"), "temperature": ("warmer", "cooler"),
           "brightness": ("brighter", "darker"), "heat": ("hotter", "colder")}
_LANGUAGES = ("english", "german", "french", "spanish", "chinese", "korean", "italian", "japanese")
_OBJECTS = ("shoes", "socks", "newspaper", "juice", "keys", "phone", "glasses", "jacket", "umbrella", "book")
_CITIES = ("london", "paris", "berlin", "madrid", "tokyo", "chicago", "sydney", "toronto", "dublin", "boston")
_WHEN = ("today", "tomorrow", "tonight", "this weekend", "on monday", "on friday", "this afternoon")

INTENTS = ("activate", "deactivate", "increase", "decrease", "change_language", "bring",
           "set_alarm", "weather_query")


@dataclass(frozen=True)
class Command:
    text: str
    intent: str
    slots: dict[str, str] = field(default_factory=dict)


def _room_suffix(rng, slots) -> str:
    if rng.random() < 0.6:
        slots["room"] = _pick(rng, _ROOMS)
        return f" in the {slots['room']}"
    return ""


def make_command(rng: np.random.Generator, intent: str | None = None) -> Command:
    """One spoken command: a uniformly drawn intent, random slots, one of several phrasings."""
    intent = intent or _pick(rng, INTENTS)
    slots: dict[str, str] = {}
    if intent in ("activate", "deactivate"):
        dev = slots["device"] = _pick(rng, _SWITCHABLE)
        room = _room_suffix(rng, slots)
        on = "on" if intent == "activate" else "off"
        verb = "start" if intent == "activate" else "stop"
        text = _pick(rng, (
            f"turn {on} the {dev}{room}", f"switch {on} the {dev}{room}", f"please turn the {dev} {on}{room}",
            f"could you switch the {dev}{room} {on}", f"{verb} the {dev}{room}", f"{dev} {on}",
            f"i want the {dev}{room} {on} now", f"can you {verb} the {dev} please",
        ))
    elif intent in ("increase", "decrease"):
        prop = slots["property"] = _pick(rng, tuple(_LEVELS))
        room = _room_suffix(rng, slots)
        up = intent == "increase"
        more = _LEVELS[prop][0 if up else 1]
        text = _pick(rng, (
            f"turn {'up' if up else 'down'} the {prop}{room}", f"{'increase' if up else 'decrease'} the {prop}{room}",
            f"make it {more}{room}", f"{prop} {'up' if up else 'down'}", f"i need it {more} please",
            f"can you {'raise' if up else 'lower'} the {prop}{room}", f"it is {'too low' if up else 'too high'}, change the {prop}",
        ))
    elif intent == "change_language":
        lang = slots["language"] = _pick(rng, _LANGUAGES)
        text = _pick(rng, (
            f"switch the language to {lang}", f"change the language to {lang}", f"use {lang}",
            f"i want to speak {lang}", f"set my language to {lang} please", f"can we talk in {lang}",
        ))
    elif intent == "bring":
        obj = slots["object"] = _pick(rng, _OBJECTS)
        room = ""
        if rng.random() < 0.4:
            slots["room"] = _pick(rng, _ROOMS)
            room = f" from the {slots['room']}"
        text = _pick(rng, (
            f"bring me my {obj}{room}", f"fetch the {obj}{room}", f"could you get my {obj}{room}",
            f"go and get the {obj}{room}", f"i need my {obj}", f"please bring the {obj}{room} to me",
        ))
    elif intent == "set_alarm":
        hour, minute = int(rng.integers(1, 13)), int(rng.choice([0, 15, 30, 45, int(rng.integers(1, 60))]))
        part = _pick(rng, ("in the morning", "in the evening", "at night", "in the afternoon"))
        said = number_to_words(hour) + (" o'clock" if minute == 0 else
                                         (" oh " if minute < 10 else " ") + number_to_words(minute))
        slots["time"] = f"{said} {part}"
        text = _pick(rng, (
            f"set an alarm for {said} {part}", f"wake me up at {said} {part}",
            f"i need an alarm at {said} {part}", f"remind me at {said} {part}",
            f"alarm for {said} {part} please",
        ))
    elif intent == "weather_query":
        city = slots["city"] = _pick(rng, _CITIES)
        when = slots["date"] = _pick(rng, _WHEN)
        text = _pick(rng, (
            f"what is the weather like in {city} {when}", f"will it rain in {city} {when}",
            f"do i need an umbrella {when}", f"how cold will it be in {city} {when}",
            f"tell me the forecast for {city}", f"is it going to be sunny {when}",
        ))
    else:
        raise ValueError(f"unknown intent {intent!r}; expected one of {INTENTS}")
    text = normalise(text)
    # a phrasing may leave a drawn slot unsaid: keep only the slots the words carry
    return Command(text, intent, {k: v for k, v in slots.items() if v in text})

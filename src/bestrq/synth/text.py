"""Transcripts for the synthetic corpus: varied sentences and spoken commands.

Sentences draw nouns, verbs and adjectives from wonderwords' lexicon (about 8,000 words)
with Zipf-like frequencies, so frequent words recur as in real speech while the
vocabulary stays large. Verbs appear after modals, so their base form is always
grammatical. Numbers are written as words. Commands follow Fluent Speech Commands and
SLURP: an intent, slots (device, room, property, object, language, time, city, date) and
many phrasings, with optional openers ("hey") and requests ("could you ... for me").
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

_ROOMS = ("kitchen", "bedroom", "living room", "bathroom", "garage", "office", "hallway", "garden",
          "dining room", "study", "basement", "attic", "nursery", "guest room", "laundry room", "porch",
          "lounge", "spare bedroom", "playroom", "conservatory")
_SWITCHABLE = ("lights", "lamp", "heating", "music", "television", "fan", "radio", "coffee machine",
               "washing machine", "air conditioning", "dishwasher", "kettle", "oven", "heater", "speakers",
               "ceiling light", "desk lamp", "printer", "computer", "projector", "dehumidifier", "sprinklers",
               "night light", "tv", "stereo", "microwave", "vacuum cleaner", "air purifier", "fairy lights",
               "electric blanket")
_LEVELS = {"volume": ("louder", "quieter"), "temperature": ("warmer", "cooler"),
           "brightness": ("brighter", "darker"), "heat": ("hotter", "colder"), "sound": ("louder", "softer"),
           "heating": ("warmer", "colder"), "light": ("brighter", "dimmer"), "fan speed": ("faster", "slower")}
_AMOUNTS = ("a bit", "a little", "a little bit", "a lot", "slightly")
_LANGUAGES = ("english", "german", "french", "spanish", "chinese", "korean", "italian", "japanese",
              "portuguese", "russian", "arabic", "hindi", "dutch", "swedish", "polish", "turkish", "greek",
              "hebrew", "danish", "finnish", "norwegian", "czech", "hungarian", "thai", "vietnamese",
              "indonesian", "ukrainian", "romanian", "irish", "welsh", "mandarin", "cantonese", "bengali",
              "swahili", "tamil", "persian")
_SETTING = ("the language", "the system language", "your language", "my language", "the default language",
            "the display language", "the interface language", "the voice language")
_OBJECTS = ("shoes", "socks", "newspaper", "juice", "keys", "phone", "glasses", "jacket", "umbrella", "book",
            "coat", "hat", "scarf", "gloves", "wallet", "charger", "laptop", "headphones", "water", "coffee",
            "tea", "remote", "blanket", "pillow", "towel", "slippers", "bag", "backpack", "medicine", "letters",
            "magazine", "tablet", "notebook", "sandwich", "milk", "sunglasses")
_PARTS = ("in the morning", "in the evening", "at night", "in the afternoon", "tomorrow morning", "tonight",
          "tomorrow evening")
_CITIES = ("london", "paris", "berlin", "madrid", "tokyo", "chicago", "sydney", "toronto", "dublin", "boston",
           "new york", "los angeles", "san francisco", "seattle", "miami", "denver", "vancouver", "montreal",
           "edinburgh", "manchester", "glasgow", "amsterdam", "vienna", "prague", "rome", "lisbon", "athens",
           "oslo", "stockholm", "helsinki", "moscow", "cairo", "mumbai", "delhi", "beijing", "shanghai",
           "hong kong", "singapore", "melbourne", "auckland", "cape town", "mexico city", "buenos aires")
_WHEN = ("today", "tomorrow", "tonight", "this weekend", "on monday", "on friday", "this afternoon",
         "on tuesday", "on wednesday", "on thursday", "on saturday", "on sunday", "this evening",
         "tomorrow morning", "tomorrow night", "next week", "later today", "this morning", "over the weekend")
# what may surround a command's words ("hey could you turn on the lamp for me")
_OPENERS = ("hey", "okay", "hi", "right", "so", "um", "excuse me", "hey there", "alright", "oh")
_REQUESTS = ("please", "could you", "can you", "would you", "could you please", "can you please",
             "would you please", "will you", "i'd like you to", "i want you to", "go ahead and", "just")
_CLOSERS = ("please", "for me", "for me please", "now", "thanks", "thank you", "if you can",
            "when you get a chance", "if you don't mind", "right away")
_SHORT_CLOSERS = ("please", "thanks", "thank you")  # after a question or a wish

INTENTS = ("activate", "deactivate", "increase", "decrease", "change_language", "bring",
           "set_alarm", "weather_query")


@dataclass(frozen=True)
class Command:
    text: str
    intent: str
    slots: dict[str, str] = field(default_factory=dict)


def _room(rng: np.random.Generator, slots: dict[str, str], p: float = 0.6) -> str:
    """A room, drawn with probability ``p`` (and kept in ``slots``), or ""."""
    if rng.random() < p:
        slots["room"] = _pick(rng, _ROOMS)
        return slots["room"]
    return ""


def _thing(rng: np.random.Generator, det: str, noun: str, room: str) -> str:
    """``the lamp``, ``the lamp in the kitchen`` or ``the kitchen lamp``."""
    if not room:
        return f"{det} {noun}"
    return f"{det} {room} {noun}" if rng.random() < 0.3 else f"{det} {noun} in the {room}"


def _said(rng: np.random.Generator, core: str, imperative: bool) -> str:
    """The core words with an optional opener, request ("could you", for an imperative) and closer."""
    opener = _pick(rng, _OPENERS) if rng.random() < 0.3 else ""
    request = _pick(rng, _REQUESTS) if imperative and rng.random() < 0.5 else ""
    closer = _pick(rng, _CLOSERS if imperative else _SHORT_CLOSERS) if rng.random() < 0.4 else ""
    if ("please" in request and "please" in closer) or (closer.startswith("for me") and " me " in f" {core} "):
        closer = ""  # not "please ... please", nor "bring me my keys for me"
    return " ".join(w for w in (opener, request, core, closer) if w)


def _phrasing(rng: np.random.Generator, imperatives: tuple[str, ...], others: tuple[str, ...]) -> str:
    """One of the phrasings, all equally likely, as said (see _said)."""
    i = int(rng.integers(len(imperatives) + len(others)))
    return _said(rng, imperatives[i] if i < len(imperatives) else others[i - len(imperatives)],
                 i < len(imperatives))


def make_command(rng: np.random.Generator, intent: str | None = None) -> Command:
    """One spoken command: a uniformly drawn intent, random slots, one of many phrasings.

    Each intent has far more than 5,000 distinct transcripts, so that a corpus's held-out
    commands can all differ from its training ones (and from another corpus's): 100,000
    draws of one intent (seed 0) give 50,055 (increase, the fewest) to 71,899 (set_alarm)
    distinct texts, and the most frequent text of an intent is 0.5% of its draws or less.
    """
    intent = intent or _pick(rng, INTENTS)
    slots: dict[str, str] = {}
    if intent in ("activate", "deactivate"):
        on = intent == "activate"
        dev = slots["device"] = _pick(rng, _SWITCHABLE)
        room = _room(rng, slots)
        x = _thing(rng, _pick(rng, ("the", "the", "my", "our")), dev, room)
        state = "on" if on else "off"
        verb = _pick(rng, ("start", "power on", "power up", "fire up") if on else
                     ("stop", "power off", "shut off", "shut down", "kill"))
        text = _phrasing(rng, (
            f"turn {state} {x}", f"switch {state} {x}", f"turn {x} {state}", f"switch {x} {state}", f"{verb} {x}",
            f"get {x} {'going' if on else 'off'}",
        ), (
            f"{dev} {state}", f"{x} {state}", f"i want {x} {state}", f"i'd like {x} {state}",
            f"i need {x} {state} now", f"{x} should be {state}",
        ))
    elif intent in ("increase", "decrease"):
        up = intent == "increase"
        prop = slots["property"] = _pick(rng, tuple(_LEVELS))
        room = _room(rng, slots)
        x = _thing(rng, "the", prop, room)
        in_room = f" in the {room}" if room else ""
        amount = " " + _pick(rng, _AMOUNTS) if rng.random() < 0.35 else ""
        more = _LEVELS[prop][0 if up else 1]
        direction = "up" if up else "down"
        verb = _pick(rng, ("raise", "increase", "boost") if up else ("lower", "decrease", "reduce"))
        text = _phrasing(rng, (
            f"turn {direction} {x}{amount}", f"turn {x} {direction}{amount}", f"{verb} {x}{amount}",
            f"make it{amount} {more}{in_room}", f"bring {x} {direction}{amount}", f"put {x} {direction}{amount}",
        ), (
            f"{prop} {direction}", f"i need it{amount} {more}{in_room}", f"i'd like it{amount} {more}{in_room}",
            f"{x} is {'too low' if up else 'too high'}", f"it is {'too low' if up else 'too high'}, change the {prop}",
        ))
    elif intent == "change_language":
        lang = slots["language"] = _pick(rng, _LANGUAGES)
        setting = _pick(rng, _SETTING)
        later = _pick(rng, ("", "", "", " from now on", " for now", " instead"))
        text = _phrasing(rng, (
            f"switch {setting} to {lang}{later}", f"change {setting} to {lang}{later}",
            f"set {setting} to {lang}{later}", f"use {lang}{later}", f"speak {lang}{later}",
            f"talk to me in {lang}{later}", f"answer in {lang}{later}", f"switch to {lang}{later}",
            f"make {lang} the default language",
        ), (
            f"i want to speak {lang}", f"i'd prefer {lang}", f"can we talk in {lang}", f"let's speak {lang}",
            f"i want {setting} in {lang}",
        ))
    elif intent == "bring":
        obj = slots["object"] = _pick(rng, _OBJECTS)
        room = _room(rng, slots, p=0.4)
        o = f"{_pick(rng, ('my', 'the'))} {obj}"
        where = f" from the {room}" if room else ""
        text = _phrasing(rng, (
            f"bring me {o}{where}", f"fetch {o}{where}", f"get me {o}{where}", f"go and get {o}{where}",
            f"grab {o}{where}", f"bring {o}{where} to me", f"fetch me {o}{where}", f"hand me {o}",
        ), (
            f"i need {o}", f"i want {o}{where}", f"i'd like {o}{where}",
        ))
    elif intent == "set_alarm":
        hour, minute = int(rng.integers(1, 13)), int(rng.choice([0, 15, 30, 45, int(rng.integers(1, 60))]))
        said = number_to_words(hour) + (" o'clock" if minute == 0 else
                                         (" oh " if minute < 10 else " ") + number_to_words(minute))
        t = slots["time"] = f"{said} {_pick(rng, _PARTS)}"
        text = _phrasing(rng, (
            f"set an alarm for {t}", f"set the alarm for {t}", f"set my alarm for {t}", f"wake me up at {t}",
            f"wake me at {t}", f"remind me at {t}", f"make an alarm for {t}", f"schedule an alarm for {t}",
        ), (
            f"i need an alarm at {t}", f"alarm for {t}", f"i want to wake up at {t}", f"i have to get up at {t}",
        ))
    elif intent == "weather_query":
        city = slots["city"] = _pick(rng, _CITIES)
        when = slots["date"] = _pick(rng, _WHEN)
        at = f" in {city}" if rng.random() < 0.8 else ""
        then = f" {when}" if rng.random() < 0.85 else ""
        text = _phrasing(rng, (
            f"tell me the weather{at}{then}", f"give me the forecast{at}{then}", f"check the weather{at}{then}",
            f"look up the weather{at}{then}",
        ), (
            f"what is the weather like{at}{then}", f"what's the weather{at}{then}", f"will it rain{at}{then}",
            f"is it going to rain{at}{then}", f"how cold will it be{at}{then}", f"how hot will it be{at}{then}",
            f"is it going to be sunny{at}{then}", f"will it snow{at}{then}", f"do i need an umbrella{at}{then}",
            f"what's the temperature{at}{then}",
        ))
    else:
        raise ValueError(f"unknown intent {intent!r}; expected one of {INTENTS}")
    text = normalise(text)
    # a phrasing may leave a drawn slot unsaid: keep only the slots the words carry (as whole words)
    return Command(text, intent, {k: v for k, v in slots.items() if f" {v} " in f" {text} "})

"""Plain English sentences for the built-in sample data of the text tasks (made up, not copied)."""

from __future__ import annotations

import random

PEOPLE = ["Maria Lopez", "John Carter", "Aiko Tanaka", "Omar Haddad", "Elena Petrova", "David Okafor",
          "Sofia Rossi", "Lars Nilsson", "Priya Sharma", "Lucas Martin"]
PLACES = ["Lyon", "Nairobi", "Osaka", "Toronto", "Lisbon", "Cairo", "Oslo", "Lima", "Dublin", "Hanoi"]
ORGANISATIONS = ["Acme Corporation", "the Red Cross", "Globex", "the United Nations", "Initech",
                 "the World Bank", "Umbrella Foods", "Northwind Traders"]
_SUBJECTS = ["The old farmer", "A young doctor", "The small village", "Our neighbour", "The river",
             "A quiet student", "The city library", "The train", "An early storm", "The market"]
_VERBS = ["opened", "crossed", "welcomed", "painted", "repaired", "followed", "visited", "carried",
          "watched", "described"]
_OBJECTS = ["the wooden bridge", "a long letter", "the morning crowd", "the northern road",
            "a heavy basket", "the empty station", "the blue house", "several old maps",
            "the summer garden", "a broken clock"]
_ENDINGS = ["before sunrise", "after the rain", "during the festival", "without a word",
            "with great care", "for the first time", "late in the evening", "near the harbour"]


def sentence(rng: random.Random) -> str:
    return f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)} {rng.choice(_ENDINGS)}."


def paragraph(rng: random.Random, sentences: tuple[int, int] = (3, 6)) -> str:
    return " ".join(sentence(rng) for _ in range(rng.randint(*sentences)))

"""The "you vs the machine" game: a deck of galaxy images with known classes, the Galaxy Zoo
decision trees for guided play, and the round log.

A deck is a folder with one sub-folder per class (the Galaxy10 image-folder layout that
`galaxy-edge simulate stamps --format jpg` writes): an image named `example.*` in a class's folder,
or else its first image by name, is the picture on that class's button; the others are rounds.
"""

from __future__ import annotations

import csv
import datetime as dt
import threading
from dataclasses import dataclass
from pathlib import Path

from galaxy_edge.errors import GalaxyEdgeError

DECK_SUFFIXES = (".jpg", ".jpeg", ".png")


@dataclass(frozen=True)
class Card:
    path: Path
    truth: str


@dataclass(frozen=True)
class Deck:
    rounds: tuple[Card, ...]
    examples: dict[str, Path]  # class name -> its button picture


def load_deck(folder: Path, labels: list[str]) -> Deck:
    """The deck in `folder` for a classifier with these labels; unknown class folders and classes
    with fewer than two images are errors naming the folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise GalaxyEdgeError(f"{folder}: deck folder not found")
    rounds: list[Card] = []
    examples: dict[str, Path] = {}
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        if sub.name not in labels:
            raise GalaxyEdgeError(
                f"{sub}: not a class of the classifier (expected folders named {', '.join(labels)})"
            )
        images = sorted(p for p in sub.iterdir() if p.suffix.lower() in DECK_SUFFIXES)
        if len(images) < 2:
            raise GalaxyEdgeError(f"{sub}: needs at least two images (a button picture and a round)")
        example = next((p for p in images if p.stem == "example"), images[0])
        examples[sub.name] = example
        rounds += [Card(path, sub.name) for path in images if path != example]
    if not rounds:
        raise GalaxyEdgeError(f"{folder}: no class folders with images")
    return Deck(tuple(rounds), examples)


# Galaxy Zoo's questions (Willett et al. 2013 for SDSS / GZ2; Walmsley et al. 2022 for DECaLS),
# cut down to the branches that separate the Galaxy10 classes. A node is a question with answers;
# an answer leads to another node (by key) or to a class (a leaf).
DECISION_TREES: dict[str, dict[str, dict]] = {
    "decals": {
        "start": {
            "question": "Is the galaxy simply smooth and rounded, with no sign of a disk or arms?",
            "answers": [
                {"text": "Smooth", "next": "roundness"},
                {"text": "Features or a disk", "next": "odd"},
            ],
        },
        "roundness": {
            "question": "How rounded is it?",
            "answers": [
                {"text": "Completely round", "class": "round_smooth"},
                {"text": "In between", "class": "in_between_round_smooth"},
                {"text": "Cigar-shaped", "class": "cigar_smooth"},
            ],
        },
        "odd": {
            "question": "Is it merging with another galaxy, or messy and disturbed?",
            "answers": [
                {"text": "Merging: two galaxies touching", "class": "merging"},
                {"text": "Disturbed: lopsided or messy", "class": "disturbed"},
                {"text": "Neither", "next": "edge_on"},
            ],
        },
        "edge_on": {
            "question": "Could it be a disk seen edge-on (a thin streak)?",
            "answers": [{"text": "Yes", "next": "bulge"}, {"text": "No", "next": "bar"}],
        },
        "bulge": {
            "question": "Is there a bulge bulging out at its centre?",
            "answers": [
                {"text": "Yes", "class": "edge_on_with_bulge"},
                {"text": "No", "class": "edge_on_no_bulge"},
            ],
        },
        "bar": {
            "question": "Is there a bar (a straight bright band) through its centre?",
            "answers": [{"text": "Yes", "class": "barred_spiral"}, {"text": "No", "next": "winding"}],
        },
        "winding": {
            "question": "How tightly wound are the spiral arms?",
            "answers": [
                {"text": "Tight", "class": "unbarred_tight_spiral"},
                {"text": "Loose", "class": "unbarred_loose_spiral"},
            ],
        },
    },
    "sdss": {
        "start": {
            "question": "Is the galaxy simply smooth and rounded, with no sign of a disk or arms?",
            "answers": [
                {"text": "Smooth", "next": "roundness"},
                {"text": "Features or a disk", "next": "edge_on"},
            ],
        },
        "roundness": {
            "question": "How rounded is it?",
            "answers": [
                {"text": "Completely round", "class": "smooth_round"},
                {"text": "In between", "class": "smooth_in_between"},
                {"text": "Cigar-shaped", "class": "smooth_cigar"},
            ],
        },
        "edge_on": {
            "question": "Could it be a disk seen edge-on (a thin streak)?",
            "answers": [{"text": "Yes", "next": "bulge"}, {"text": "No", "next": "arms"}],
        },
        "bulge": {
            "question": "What shape is the bulge at its centre?",
            "answers": [
                {"text": "Rounded", "class": "edge_on_rounded_bulge"},
                {"text": "Boxy", "class": "edge_on_boxy_bulge"},
                {"text": "No bulge", "class": "edge_on_no_bulge"},
            ],
        },
        "arms": {
            "question": "Is there any sign of spiral arms?",
            "answers": [
                {"text": "Yes", "next": "winding"},
                {"text": "No", "class": "disk_face_on_no_spiral"},
            ],
        },
        "winding": {
            "question": "How tightly wound are the spiral arms?",
            "answers": [
                {"text": "Tight", "class": "tight_spiral"},
                {"text": "Medium", "class": "medium_spiral"},
                {"text": "Loose", "class": "loose_spiral"},
            ],
        },
    },
}


def tree_leaves(tree: dict[str, dict]) -> list[str]:
    """The classes at the leaves reachable from the start, in walking order."""
    leaves: list[str] = []
    stack = ["start"]
    while stack:
        for answer in tree[stack.pop()]["answers"]:
            if "class" in answer:
                leaves.append(answer["class"])
            else:
                stack.append(answer["next"])
    return leaves


def tree_for(labels: list[str]) -> dict[str, dict] | None:
    """The decision tree whose leaves are exactly these classes (None: guided play is off)."""
    for tree in DECISION_TREES.values():
        if sorted(tree_leaves(tree)) == sorted(labels):
            return tree
    return None


ROUND_LOG_FIELDS = ("time", "player", "round", "image", "truth", "mode", "answer", "machine", "confidence")


class RoundLog:
    """rounds.csv in the data folder: every answered round, for the outreach team's tally."""

    def __init__(self, folder: Path) -> None:
        self.path = Path(folder) / "rounds.csv"
        self.lock = threading.Lock()

    def write(self, **row: object) -> None:
        with self.lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            new = not self.path.exists()
            with self.path.open("a", newline="") as handle:
                writer = csv.DictWriter(handle, ROUND_LOG_FIELDS)
                if new:
                    writer.writeheader()
                writer.writerow({"time": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), **row})

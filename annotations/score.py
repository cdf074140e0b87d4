"""Scoring proposed boxes against truth boxes: greedy one-to-one matching, precision, recall.

A proposal matches a truth box when their IoU reaches the threshold, or, with
`centre_match`, when each box contains the other's centre (robust to the different box
conventions of a classical extractor and of the truth). Truth boxes marked difficult can
be matched (a proposal on them is not a false positive) but do not count towards recall.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from annotations.records import Box


@dataclass
class Score:
    true_positives: int = 0
    false_positives: int = 0
    missed: int = 0  # truth boxes, not difficult, with no proposal
    matched_difficult: int = 0

    @property
    def precision(self) -> float:
        found = self.true_positives + self.false_positives + self.matched_difficult
        return (self.true_positives + self.matched_difficult) / found if found else 1.0

    @property
    def recall(self) -> float:
        total = self.true_positives + self.missed
        return self.true_positives / total if total else 1.0

    def __iadd__(self, other: Score) -> Score:
        self.true_positives += other.true_positives
        self.false_positives += other.false_positives
        self.missed += other.missed
        self.matched_difficult += other.matched_difficult
        return self


def _centre_inside(a: Box, b: Box) -> bool:
    cx, cy = (a.xmin + a.xmax) / 2, (a.ymin + a.ymax) / 2
    return b.xmin <= cx <= b.xmax and b.ymin <= cy <= b.ymax


def score_boxes(
    proposals: Sequence[Box], truth: Sequence[Box], iou_threshold: float = 0.5, centre_match: bool = False
) -> Score:
    pairs = []
    for i, p in enumerate(proposals):
        for j, t in enumerate(truth):
            iou = p.iou(t)
            if iou >= iou_threshold or (centre_match and _centre_inside(p, t) and _centre_inside(t, p)):
                pairs.append((iou, i, j))
    pairs.sort(reverse=True)
    used_p: set[int] = set()
    used_t: set[int] = set()
    score = Score()
    for _, i, j in pairs:
        if i in used_p or j in used_t:
            continue
        used_p.add(i)
        used_t.add(j)
        if truth[j].difficult:
            score.matched_difficult += 1
        else:
            score.true_positives += 1
    score.false_positives = len(proposals) - len(used_p)
    score.missed = sum(1 for j, t in enumerate(truth) if j not in used_t and not t.difficult)
    return score

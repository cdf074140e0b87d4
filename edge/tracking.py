"""An IoU tracker: each galaxy gets an id, and its class is voted over the frames it was
classified in, so a static field is not reclassified every frame."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np


def longer_sides(boxes: np.ndarray) -> np.ndarray:
    """(N,) each box's longer side, boxes (N, 4) [x1, y1, x2, y2]."""
    return np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) IoU of x1, y1, x2, y2 boxes."""
    ix = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    iy = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = ix * iy
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def intersection_over_smaller(a: np.ndarray, b: np.ndarray, floor: float = 1e-6) -> np.ndarray:
    """(len(a), len(b)) intersection area of x1, y1, x2, y2 boxes over the smaller box's area (at
    least `floor`)."""
    ix = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    iy = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return ix * iy / np.maximum(np.minimum(area_a[:, None], area_b[None, :]), floor)


@dataclass
class Track:
    track_id: int
    box: np.ndarray
    score: float
    first_frame: int
    last_frame: int
    hits: int = 1
    misses: int = 0
    probability_sum: np.ndarray | None = None
    classifications: int = 0
    last_classified_frame: int = -(10**9)
    box_when_classified: np.ndarray | None = None
    history: list[int] = field(default_factory=list)
    # The detector's label when it is not the one the classifier refines (a star, say): such a
    # track is not classified and keeps this label.
    detector_label: str | None = None
    # Its box is under the classifier's resolution floor on the latest frame: not classified, shown as
    # "unresolved" (edge.chain sets it).
    unresolved: bool = False

    @property
    def probabilities(self) -> np.ndarray | None:
        if self.probability_sum is None or self.classifications == 0:
            return None
        return self.probability_sum / self.classifications

    def add_classification(self, probabilities: np.ndarray, frame_index: int) -> None:
        if self.probability_sum is None:
            self.probability_sum = np.zeros_like(probabilities, dtype=np.float64)
        self.probability_sum += probabilities
        self.classifications += 1
        self.last_classified_frame = frame_index
        self.box_when_classified = self.box.copy()


class IouTracker:
    """Greedy IoU association; tracks end after `max_misses` frames unseen.

    A track is (re)classified when new, every `reclassify_every` frames, or when its box has
    changed a lot since its last classification (IoU below 0.7).
    """

    def __init__(self, iou_threshold: float = 0.3, max_misses: int = 10, reclassify_every: int = 30) -> None:
        self.iou_threshold = iou_threshold
        self.max_misses = max_misses
        self.reclassify_every = reclassify_every
        self.tracks: list[Track] = []
        self.finished: list[Track] = []
        self._next_id = 1

    def update(
        self,
        boxes: np.ndarray,
        scores: np.ndarray,
        frame_index: int,
        detector_labels: Sequence[str | None] | None = None,
    ) -> list[Track]:
        """Associate this frame's boxes with tracks; returns the track of each box, in order.
        detector_labels: each box's Track.detector_label (None: the classified kind)."""
        assigned: list[Track | None] = [None] * len(boxes)
        if self.tracks and len(boxes):
            overlaps = iou_matrix(boxes, np.array([t.box for t in self.tracks]))
            order = np.dstack(np.unravel_index(np.argsort(-overlaps, axis=None), overlaps.shape))[0]
            used_tracks: set[int] = set()
            for det, trk in order:
                if overlaps[det, trk] < self.iou_threshold:
                    break
                if assigned[det] is not None or trk in used_tracks:
                    continue
                track = self.tracks[trk]
                track.box, track.score = boxes[det].copy(), float(scores[det])
                track.last_frame, track.hits, track.misses = frame_index, track.hits + 1, 0
                assigned[det] = track
                used_tracks.add(trk)
        for det, track in enumerate(assigned):
            if track is None:
                track = Track(self._next_id, boxes[det].copy(), float(scores[det]), frame_index, frame_index)
                self._next_id += 1
                self.tracks.append(track)
                assigned[det] = track
        if detector_labels is not None:
            for track, label in zip(assigned, detector_labels, strict=True):
                track.detector_label = label  # type: ignore[union-attr]
        seen = {id(t) for t in assigned}
        alive = []
        for track in self.tracks:
            if id(track) not in seen:
                track.misses += 1
            (alive if track.misses <= self.max_misses else self.finished).append(track)
        self.tracks = alive
        return assigned  # type: ignore[return-value]

    def needs_classification(self, track: Track, frame_index: int) -> bool:
        if track.classifications == 0 or frame_index - track.last_classified_frame >= self.reclassify_every:
            return True
        return float(iou_matrix(track.box[None], track.box_when_classified[None])[0, 0]) < 0.7

    def end_scene(self) -> None:
        """The next frame shows something else (another still image): no track continues."""
        self.finished.extend(self.tracks)
        self.tracks = []

    def all_tracks(self) -> list[Track]:
        return sorted(self.finished + self.tracks, key=lambda t: t.track_id)

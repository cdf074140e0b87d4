"""Galaxy10 class schemes as data: names, real counts, drawing colours, spiral classes.

The class index is the position in the list, matching the `ans` column of astroNN's
Galaxy10 .h5 files. DECaLS is the default scheme; SDSS is supported everywhere.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from galaxy_edge.errors import GalaxyEdgeError

DEFAULT_SCHEME = "decals"
_SCHEMES_FILE = Path(__file__).with_name("galaxy10.json")


@dataclass(frozen=True)
class ClassScheme:
    key: str
    title: str
    image_size: int
    names: tuple[str, ...]
    titles: tuple[str, ...]
    counts: tuple[int, ...]
    colors_rgb: tuple[tuple[int, int, int], ...]
    spiral_classes: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.names)

    @property
    def proportions(self) -> tuple[float, ...]:
        total = sum(self.counts)
        return tuple(c / total for c in self.counts)

    @property
    def spiral_indices(self) -> tuple[int, ...]:
        return tuple(self.names.index(n) for n in self.spiral_classes)

    def index(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            raise GalaxyEdgeError(
                f"unknown class '{name}' for scheme {self.key} (expected one of {', '.join(self.names)})"
            ) from None


def _hex_to_rgb(value: str) -> tuple[int, int, int]:
    value = value.lstrip("#")
    return int(value[0:2], 16), int(value[2:4], 16), int(value[4:6], 16)


@cache
def get_scheme(key: str = DEFAULT_SCHEME) -> ClassScheme:
    """Return the Galaxy10 scheme `decals` or `sdss`."""
    schemes = json.loads(_SCHEMES_FILE.read_text())
    if key not in schemes:
        raise GalaxyEdgeError(f"unknown class scheme '{key}' (expected one of {', '.join(schemes)})")
    raw = schemes[key]
    classes = raw["classes"]
    return ClassScheme(
        key=key,
        title=raw["title"],
        image_size=raw["image_size"],
        names=tuple(c["name"] for c in classes),
        titles=tuple(c["title"] for c in classes),
        counts=tuple(c["count"] for c in classes),
        colors_rgb=tuple(_hex_to_rgb(c["color"]) for c in classes),
        spiral_classes=tuple(raw["spiral_classes"]),
    )


def scheme_keys() -> list[str]:
    return list(json.loads(_SCHEMES_FILE.read_text()))

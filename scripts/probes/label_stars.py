"""Ad hoc probe (docs/detector.md): a copy of a `simulate frames` folder whose labelImg XML
also boxes every star of its truth.csv as `star` (faint ones difficult), images linked, for
`train --detector --labels galaxy,star`.

  python scripts/probes/label_stars.py FRAMES OUT
"""

from __future__ import annotations

import csv
import os
import sys
from collections import defaultdict
from pathlib import Path

from annotations.records import Box
from annotations.voc import read_voc, write_voc


def main() -> None:
    source, target = Path(sys.argv[1]), Path(sys.argv[2])
    target.mkdir(parents=True, exist_ok=True)
    stars = defaultdict(list)
    with (source / "truth.csv").open() as f:
        for row in csv.DictReader(f):
            if row["kind"] == "star":
                stars[row["frame"]].append(row)
    added = 0
    for xml in sorted(source.glob("*.xml")):
        annotation = read_voc(xml)
        for row in stars[xml.stem]:
            x1, y1 = max(0.0, float(row["xmin"])), max(0.0, float(row["ymin"]))
            x2 = min(float(annotation.width), float(row["xmax"]))
            y2 = min(float(annotation.height), float(row["ymax"]))
            if x2 - x1 >= 1 and y2 - y1 >= 1:
                difficult, truncated = row["difficult"] == "1", row["truncated"] == "1"
                annotation.boxes.append(Box("star", x1, y1, x2, y2, difficult=difficult, truncated=truncated))
                added += 1
        write_voc(annotation, target / xml.name)
        image = target / annotation.filename
        if not image.exists():
            os.symlink((source / annotation.filename).resolve(), image)
    print(f"{added} star boxes added to {target}")


if __name__ == "__main__":
    main()

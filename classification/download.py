"""`galaxy-edge data galaxy10`: the official Galaxy10 files for users who are online.

Resumes a partial download with an HTTP Range request, checks the size against the server's
and the SHA-256 against the published one (astroNN's), and fails at once with a clear
message when there is no network.
"""

from __future__ import annotations

import hashlib
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from galaxy_edge.errors import GalaxyEdgeError


@dataclass(frozen=True)
class Galaxy10File:
    url: str
    filename: str
    sha256: str


GALAXY10 = {
    "decals": Galaxy10File(
        "https://zenodo.org/records/10845026/files/Galaxy10_DECals.h5",
        "Galaxy10_DECals.h5",
        "19aefc477c41bb7f77ff07599a6b82a038dc042f889a111b0d4d98bb755c1571",
    ),
    "sdss": Galaxy10File(
        "https://zenodo.org/records/10844811/files/Galaxy10.h5",
        "Galaxy10.h5",
        "969a6b1cefcc36e09fffa86febd2f699a4aa19b837ba0427f01b0bc6ded458af",
    ),
}
BLOCK = 1 << 20


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(BLOCK):
            digest.update(block)
    return digest.hexdigest()


def download_galaxy10(variant: str, out: Path | str, timeout: float = 20.0, progress=None) -> Path:
    """Download (or resume, or just verify) the Galaxy10 file of a variant into out."""
    spec = GALAXY10[variant]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    target = out / spec.filename
    partial = target.with_name(target.name + ".part")
    if target.is_file():
        if sha256_of(target) == spec.sha256:
            return target
        target.rename(partial)  # a corrupt or truncated copy: resume it, then verify again
    start = partial.stat().st_size if partial.exists() else 0
    request = urllib.request.Request(spec.url, headers={"Range": f"bytes={start}-"} if start else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as error:
        if error.code == 416:  # nothing left to fetch
            response = None
        else:
            raise GalaxyEdgeError(f"{spec.url}: download failed (HTTP {error.code} {error.reason})") from None
    except (urllib.error.URLError, TimeoutError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise GalaxyEdgeError(
            f"cannot reach {spec.url} ({reason}): this machine looks offline. Download {spec.filename} "
            f"on a connected machine and copy it to {target}"
        ) from None
    if response is not None:
        with response:
            resumed = response.status == 206
            length = response.headers.get("Content-Length")
            expected = (start if resumed else 0) + int(length) if length else None
            with partial.open("ab" if resumed else "wb") as f:
                while block := response.read(BLOCK):
                    f.write(block)
                    if progress:
                        progress(len(block))
        size = partial.stat().st_size
        if expected is not None and size != expected:
            raise GalaxyEdgeError(
                f"{partial}: got {size} bytes, the server announced {expected}; run again to resume"
            )
    checksum = sha256_of(partial)
    if checksum != spec.sha256:
        partial.unlink()
        raise GalaxyEdgeError(
            f"{spec.filename}: SHA-256 {checksum} does not match the published {spec.sha256}; "
            "the partial file was removed, run again"
        )
    partial.rename(target)
    print(f"verified {target} (SHA-256 {checksum[:12]}...)", file=sys.stderr)
    return target

"""Parsing untrusted XML safely with lxml.

labelImg never writes a DOCTYPE, so any document with one is refused before and after
parsing: that rules out external entities (XXE), external DTDs and entity-expansion
bombs ("billion laughs"). The parser also has entity resolution and network access off,
and files over a size cap are refused unread.
"""

from __future__ import annotations

import re
from pathlib import Path

from lxml import etree

from annotations.records import AnnotationError

MAX_XML_BYTES = 2_000_000  # a labelImg file with thousands of boxes is well under this
_DOCTYPE = re.compile(rb"<!\s*(DOCTYPE|ENTITY)", re.IGNORECASE)


def _hardened_parser() -> etree.XMLParser:
    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
        remove_comments=True,
        remove_pis=True,
    )


def parse_xml_file(path: Path | str, max_bytes: int = MAX_XML_BYTES) -> etree._Element:
    """Parse an XML file and return its root, refusing anything unsafe or malformed."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as error:
        raise AnnotationError(path, f"cannot read annotation file ({error.strerror})") from None
    if size > max_bytes:
        raise AnnotationError(path, f"XML file is {size} bytes, over the {max_bytes}-byte cap; not read")
    data = path.read_bytes()
    return parse_xml_bytes(data, path)


def parse_xml_bytes(data: bytes, path: Path | str = "<bytes>") -> etree._Element:
    if not data.strip():
        raise AnnotationError(path, "empty annotation file")
    if _DOCTYPE.search(data):
        raise AnnotationError(
            path,
            "XML with a DOCTYPE or ENTITY declaration refused (labelImg never writes one; "
            "entities allow XXE and entity-expansion attacks)",
        )
    try:
        root = etree.fromstring(data, _hardened_parser())
    except etree.XMLSyntaxError as error:
        raise AnnotationError(path, f"malformed XML: {error}") from None
    if root is None:
        raise AnnotationError(path, "empty annotation file")
    docinfo = root.getroottree().docinfo
    if docinfo.doctype or docinfo.internalDTD is not None:
        # Reached only for encodings the byte scan cannot see (UTF-16 and the like).
        raise AnnotationError(path, "XML with a DOCTYPE declaration refused")
    return root

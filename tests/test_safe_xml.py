"""Untrusted XML: external entities, entity bombs and oversized files are refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from annotations.check import check_dataset
from annotations.records import AnnotationError
from annotations.safe_xml import parse_xml_file
from annotations.voc import read_voc
from tests.conftest import write_image


def _xxe(secret: Path) -> bytes:
    return f"""<?xml version="1.0"?>
<!DOCTYPE annotation [<!ENTITY leak SYSTEM "file://{secret}">]>
<annotation><folder>x</folder><filename>&leak;</filename>
<size><width>10</width><height>10</height><depth>3</depth></size></annotation>
""".encode()


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<annotation><filename>&lol9;</filename></annotation>
"""


def test_xxe_is_refused_and_nothing_is_read(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-VALUE")
    evil = tmp_path / "evil.xml"
    evil.write_bytes(_xxe(secret))
    with pytest.raises(AnnotationError) as caught:
        read_voc(evil)
    assert "DOCTYPE" in str(caught.value) and str(evil) in str(caught.value)
    assert "TOP-SECRET-VALUE" not in str(caught.value)


def test_xxe_over_the_network_is_refused(tmp_path: Path) -> None:
    evil = tmp_path / "net.xml"
    evil.write_bytes(b'<!DOCTYPE a SYSTEM "http://127.0.0.1:9/evil.dtd"><annotation/>')
    with pytest.raises(AnnotationError, match="DOCTYPE"):
        read_voc(evil)


def test_billion_laughs_is_refused(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.xml"
    bomb.write_bytes(BILLION_LAUGHS)
    with pytest.raises(AnnotationError, match=r"bomb\.xml: XML with a DOCTYPE or ENTITY declaration refused"):
        parse_xml_file(bomb)


def test_utf16_doctype_is_refused_after_parsing(tmp_path: Path) -> None:
    sneaky = tmp_path / "utf16.xml"
    sneaky.write_bytes(
        '<?xml version="1.0" encoding="UTF-16"?><!DOCTYPE a [<!ENTITY x "y">]><annotation/>'.encode("utf-16")
    )
    with pytest.raises(AnnotationError, match="DOCTYPE"):
        parse_xml_file(sneaky)


def test_oversized_file_is_refused_unread(tmp_path: Path) -> None:
    big = tmp_path / "big.xml"
    big.write_bytes(b"<annotation>" + b" " * 3000 + b"</annotation>")
    with pytest.raises(AnnotationError, match="over the 1000-byte cap"):
        parse_xml_file(big, max_bytes=1000)


def test_check_reports_attacks_as_problems(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    write_image(folder / "a.jpg")
    (folder / "a.xml").write_bytes(_xxe(tmp_path / "x"))
    (folder / "b.xml").write_bytes(BILLION_LAUGHS)
    report = check_dataset(folder)
    reasons = {p.path.name: p.reason for p in report.problems}
    assert "DOCTYPE" in reasons["a.xml"] and "DOCTYPE" in reasons["b.xml"]

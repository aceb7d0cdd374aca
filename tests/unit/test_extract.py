"""Extraction from PDF, UTF-8 text and HTML, and the normalization that follows it.

The PDFs are built here, byte by byte, as real PDF files: one with a text layer (the
Gettysburg Address, public domain), one whose only page content is an image, and damaged ones.
"""

from __future__ import annotations

import io
import zlib
from pathlib import Path

import pypdf
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.ingest.pipeline.errors import UnreadableDocument, UnsupportedContent
from services.ingest.pipeline.extract import (
    ExtractedText,
    extract,
    extract_html,
    extract_pdf,
    extract_plain_text,
)
from services.ingest.pipeline.normalize import content_hash, has_readable_text, normalize_text

DATA = Path(__file__).resolve().parent.parent / "data"
SPEECH = (DATA / "gettysburg.txt").read_text(encoding="utf-8")


def build_pdf(
    pages: list[bytes], *, title: str | None = None, image: bool = False, compress: bool = False
) -> bytes:
    """A minimal, valid PDF: one content stream per page (Flate-compressed if `compress`),
    Helvetica, optional 8x8 image."""
    objects: list[bytes] = []

    def add(body: bytes) -> int:
        objects.append(body)
        return len(objects)

    catalog = add(b"")  # filled in below, once the page tree's number is known
    pages_id = add(b"")
    font = add(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    resources = f"/Font << /F1 {font} 0 R >>"
    if image:
        pixels = zlib.compress(bytes((x * 31) % 256 for x in range(64)))
        image_id = add(
            b"<< /Type /XObject /Subtype /Image /Width 8 /Height 8 /ColorSpace /DeviceGray "
            b"/BitsPerComponent 8 /Filter /FlateDecode /Length %d >>\nstream\n%s\nendstream"
            % (len(pixels), pixels)
        )
        resources += f" /XObject << /Im1 {image_id} 0 R >>"
    kids = []
    for content in pages:
        data = zlib.compress(content, 9) if compress else content
        flate = b" /Filter /FlateDecode" if compress else b""
        stream = add(b"<< /Length %d%s >>\nstream\n%s\nendstream" % (len(data), flate, data))
        kids.append(
            add(
                f"<< /Type /Page /Parent {pages_id} 0 R /MediaBox [0 0 612 792] "
                f"/Resources << {resources} >> /Contents {stream} 0 R >>".encode()
            )
        )
    objects[catalog - 1] = f"<< /Type /Catalog /Pages {pages_id} 0 R >>".encode()
    objects[pages_id - 1] = (
        f"<< /Type /Pages /Kids [{' '.join(f'{k} 0 R' for k in kids)}] /Count {len(kids)} >>"
    ).encode()
    info = add(f"<< /Title ({title}) >>".encode()) if title else None

    out = io.BytesIO()
    out.write(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(out.tell())
        out.write(b"%d 0 obj\n%s\nendobj\n" % (number, body))
    xref = out.tell()
    out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1))
    for offset in offsets:
        out.write(b"%010d 00000 n \n" % offset)
    trailer = f"<< /Size {len(objects) + 1} /Root {catalog} 0 R"
    trailer += f" /Info {info} 0 R >>" if info else " >>"
    out.write(f"trailer\n{trailer}\nstartxref\n{xref}\n%%EOF\n".encode())
    return out.getvalue()


def text_page(lines: list[str]) -> bytes:
    def escape(line: str) -> str:
        return line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")

    shown = " T* ".join(f"({escape(line)}) Tj" for line in lines)
    return f"BT /F1 11 Tf 14 TL 50 740 Td {shown} ET".encode("latin-1")


def speech_pdf() -> bytes:
    paragraphs = [p for p in SPEECH.split("\n\n") if p.strip()]
    ascii_paragraphs = [p.replace("—", " - ") for p in paragraphs]
    pages = []
    for paragraph in ascii_paragraphs:
        words, lines, line = paragraph.split(), [], ""
        for word in words:
            if len(line) + len(word) > 90:
                lines.append(line)
                line = ""
            line = f"{line} {word}".strip()
        lines.append(line)
        pages.append(text_page(lines))
    return build_pdf(pages, title="The Gettysburg Address")


# PDF -----------------------------------------------------------------------------------------


def test_pdf_text_layer_and_title_are_extracted() -> None:
    result = extract_pdf(speech_pdf())
    assert result.title == "The Gettysburg Address"
    text = normalize_text(result.text)
    assert "Four score and seven years ago" in text
    assert "shall not perish from the earth." in " ".join(text.split())
    assert text.count("\n\n") >= 4  # one paragraph per page


def test_pdf_is_recognised_by_its_signature_whatever_its_declared_type() -> None:
    pdf = speech_pdf()
    by_name = extract(pdf, filename="speech.pdf")
    by_sniffing = extract(pdf, content_type="application/octet-stream")
    assert by_name == by_sniffing
    assert "Four score" in by_name.text


def test_image_only_pdf_is_rejected_as_having_no_text_layer() -> None:
    pdf = build_pdf([b"q 200 0 0 200 100 400 cm /Im1 Do Q"], image=True)
    (page,) = pypdf.PdfReader(io.BytesIO(pdf)).pages  # a valid PDF, one page
    assert len(page.images) == 1
    with pytest.raises(UnreadableDocument, match="no text layer") as caught:
        extract_pdf(pdf)
    assert "OCR" in caught.value.reason


def test_pdf_with_only_whitespace_text_is_rejected() -> None:
    with pytest.raises(UnreadableDocument, match="no text layer"):
        extract_pdf(build_pdf([text_page(["   ", "-- . --"])]))


@pytest.mark.parametrize(
    "damage",
    [
        lambda pdf: pdf[: len(pdf) // 3],  # truncated: page tree and xref gone
        lambda pdf: b"%PDF-1.4\n" + bytes(range(256)) * 40,  # a header, then noise
        lambda pdf: pdf.replace(b"/Type /Pages", b"/Type /Oops!").replace(b"obj", b"jbo"),
        lambda pdf: b"This is not a PDF at all.",
    ],
    ids=["truncated", "noise", "mangled-objects", "not-a-pdf"],
)
def test_damaged_pdf_is_rejected_with_a_clear_reason(damage) -> None:
    with pytest.raises(UnreadableDocument) as caught:
        extract_pdf(damage(speech_pdf()))
    assert "damaged" in caught.value.reason


def test_declared_pdf_without_signature_is_reported_damaged() -> None:
    with pytest.raises(UnreadableDocument, match="damaged"):
        extract(b"<html>not a pdf</html>", content_type="application/pdf")


def test_password_protected_pdf_is_rejected() -> None:
    writer = pypdf.PdfWriter(clone_from=pypdf.PdfReader(io.BytesIO(speech_pdf())))
    writer.encrypt(user_password="secret", algorithm="AES-128")
    encrypted = io.BytesIO()
    writer.write(encrypted)
    with pytest.raises(UnreadableDocument, match="password-protected"):
        extract_pdf(encrypted.getvalue())


def test_pdf_encrypted_with_an_empty_user_password_is_read() -> None:
    writer = pypdf.PdfWriter(clone_from=pypdf.PdfReader(io.BytesIO(speech_pdf())))
    writer.encrypt(user_password="", owner_password="owner", algorithm="AES-128")
    encrypted = io.BytesIO()
    writer.write(encrypted)
    assert "Four score" in extract_pdf(encrypted.getvalue()).text


# Plain text ----------------------------------------------------------------------------------


def test_utf8_text_file_is_read_and_its_bom_dropped() -> None:
    raw = SPEECH.encode("utf-8")
    assert extract(b"\xef\xbb\xbf" + raw, filename="speech.TXT") == ExtractedText(None, SPEECH)


def test_invalid_utf8_names_the_byte_and_its_position() -> None:
    content = "Liberty and café".encode() + b"\xff more"
    with pytest.raises(UnreadableDocument) as caught:
        extract(content, filename="notes.txt")
    reason = caught.value.reason
    assert "not valid UTF-8" in reason
    assert "0xff" in reason
    assert f"position {len('Liberty and café'.encode())}" in reason
    assert "Save the file as UTF-8" in reason


def test_latin1_file_is_not_silently_misread() -> None:
    with pytest.raises(UnreadableDocument, match="UTF-8"):
        extract("Größe".encode("latin-1"), filename="notes.txt")


def test_utf16_file_is_recognised_and_explained() -> None:
    with pytest.raises(UnreadableDocument, match="UTF-16"):
        extract("hello".encode("utf-16"), filename="notes.txt")


def test_text_without_letters_or_digits_is_rejected() -> None:
    with pytest.raises(UnreadableDocument, match="no readable text"):
        extract_plain_text(b" \n\t ...!!! \xe2\x80\x94 ")


def test_fetched_text_uses_its_declared_charset() -> None:
    result = extract("Größe".encode("latin-1"), content_type="text/plain; charset=ISO-8859-1")
    assert result.text == "Größe"


def test_unknown_charset_is_unsupported() -> None:
    with pytest.raises(UnsupportedContent, match="character set"):
        extract(b"abc", content_type="text/plain; charset=klingon-8")


# HTML ----------------------------------------------------------------------------------------


def test_html_main_text_and_title_without_boilerplate() -> None:
    html = (DATA / "article.html").read_bytes()
    result = extract(html, content_type="text/html; charset=utf-8")
    assert result.title == "The Gettysburg Address | Public Domain Library"
    assert "Four score and seven years ago" in result.text
    assert "Soldiers' National Cemetery" in result.text
    for boilerplate in ("Donate to the library", "newsletter", "UA-TRACKING-ONLY", "Catalogue"):
        assert boilerplate not in result.text
    # Each block is its own paragraph, so a heading never runs into the next sentence.
    assert "The Gettysburg Address\n\nFour score" in result.text


def test_html_og_title_is_preferred() -> None:
    html = (DATA / "article.html").read_text(encoding="utf-8")
    html = html.replace(
        "<head>", '<head><meta property="og:title" content="  Lincoln at\n Gettysburg ">'
    )
    assert extract_html(html).title == "Lincoln at Gettysburg"


def test_html_is_recognised_by_name_and_by_sniffing() -> None:
    html = (DATA / "article.html").read_bytes()
    assert extract(html, filename="page.htm") == extract(html)


def test_page_without_main_text_is_rejected() -> None:
    empty_app = b"<!doctype html><html><head><title>App</title></head><body><div id=root></div>"
    with pytest.raises(UnreadableDocument, match="No readable main text"):
        extract(empty_app + b"<script>render()</script></body></html>", content_type="text/html")


def test_unsupported_content_type_is_named() -> None:
    with pytest.raises(UnsupportedContent) as caught:
        extract(b"PK\x03\x04 zip bytes", content_type="application/zip")
    assert "application/zip" in caught.value.reason
    assert "PDF" in caught.value.reason


def test_unknown_file_without_type_is_unsupported() -> None:
    with pytest.raises(UnsupportedContent, match=r"report\.docx"):
        extract(b"PK\x03\x04", filename="report.docx")


# Normalization -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "normalized"),
    [
        ("cafe\u0301", "café"),  # NFC
        ("a\r\nb\rc\u2028d", "a\nb\nc\nd"),  # every line break is \n
        ("a\x00b\x07c\x1bd\u200be\u00adf\ufeffg", "abcdefg"),  # control and invisible chars
        ("a \t\u00a0 b", "a b"),  # horizontal whitespace collapses
        ("a  \n  b", "a\nb"),  # no spaces around line breaks
        ("a\n\n\n\n\nb", "a\n\nb"),  # at most one blank line
        ("  \n a \n  ", "a"),
        ("\ud800a", "a"),  # lone surrogate
        ("👩\u200d💻", "👩\u200d💻"),  # zero width joiner is meaningful: kept
    ],
)
def test_normalize_text(raw: str, normalized: str) -> None:
    assert normalize_text(raw) == normalized


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=400))
def test_property_normalization_is_idempotent(text: str) -> None:
    once = normalize_text(text)
    assert normalize_text(once) == once
    assert once == once.strip()
    assert "\r" not in once and "\n\n\n" not in once


def test_content_hash_is_sha256_hex_of_the_normalized_text() -> None:
    # sha256(b"Four score"), as printed by `printf 'Four score' | sha256sum`.
    assert content_hash("Four score") == (
        "2b95994a95010ce8da4dd3c2f4f09e461ee1de28b5c028817b17b2d7df052507"
    )
    # The hash does not normalize by itself: callers hash normalized text.
    assert content_hash("\u00e9") != content_hash("e\u0301")
    assert content_hash(normalize_text(" Four  score \r\n")) == content_hash("Four score")
    assert content_hash("Four score") != content_hash("Four score.")


@pytest.mark.parametrize(
    ("text", "readable"),
    [("", False), ("  \n", False), ("...!?—", False), ("😀", False), ("a", True), ("٣", True),
     ("東", True)],
)  # fmt: skip
def test_has_readable_text(text: str, readable: bool) -> None:
    assert has_readable_text(text) is readable

"""Text extraction from the document formats the pipeline accepts: PDF, UTF-8 text and HTML.

Each extractor turns bytes into `ExtractedText(title, text)` or raises a domain error whose
reason tells the user what to fix (damaged or password-protected PDF, scanned PDF without a
text layer, text that is not UTF-8, a page without main text). The output is not yet
normalized: `normalize.normalize_text` runs next. This module never logs document content.
"""

from __future__ import annotations

import codecs
import io
import re
from dataclasses import dataclass

import pypdf
import trafilatura
from pypdf.errors import FileNotDecryptedError, LimitReachedError, PdfReadError
from trafilatura.utils import load_html

from services.ingest.pipeline.errors import UnreadableDocument, UnsupportedContent
from services.ingest.pipeline.normalize import has_readable_text

PDF_MEDIA_TYPES = frozenset({"application/pdf", "application/x-pdf"})
TEXT_MEDIA_TYPES = frozenset({"text/plain", "text/markdown"})
HTML_MEDIA_TYPES = frozenset({"text/html", "application/xhtml+xml"})
_EXTENSIONS = {".pdf": "pdf", ".txt": "text", ".html": "html", ".htm": "html"}
_PDF_MAGIC = b"%PDF-"
# Leading comments are skipped possessively: with a plain `(<!--.*?-->\s*)*`, a run of
# comments not followed by an HTML tag could be split into comments in exponentially many
# ways, each tried in turn (a few dozen comments took minutes).
_HTML_SNIFF = re.compile(
    rb"^\s*+(?:<!--.*?-->\s*+)*+<(?:!doctype\s++html|html|head|body)[\s>]", re.I | re.S
)
_SPACES = re.compile(r"\s+")
# How much decompressed page content (drawing instructions, read in pure Python) a PDF may hold:
# a floor, plus a multiple of the file's size. Content streams compress a few times over; a
# stream that expands a thousandfold (a "compression bomb": megabytes of zeros or of one
# repeated operator) is refused after decompression, before anything is parsed, instead of
# taking minutes per page.
PDF_CONTENT_FLOOR = 4 * 1024 * 1024
PDF_CONTENT_EXPANSION = 20
_PDF_TOO_LARGE = (
    "The PDF expands to far more data than its size suggests (a compression bomb, or pages "
    "too complex to read). Export it again from the application that made it, or upload its "
    "text as a .txt file."
)


@dataclass(frozen=True, slots=True)
class ExtractedText:
    """A document's title (None when the document names none) and its raw text."""

    title: str | None
    text: str


def extract(
    content: bytes, *, content_type: str | None = None, filename: str | None = None
) -> ExtractedText:
    """Extract text from `content`, choosing the format from its bytes, type and name.

    The PDF signature wins over any declared type (servers often send PDFs as
    application/octet-stream); then the media type of a fetched resource; then the file name's
    extension; then an HTML signature.
    """
    media_type, charset = _parse_content_type(content_type)
    if content[:1024].lstrip().startswith(_PDF_MAGIC):
        return extract_pdf(content)
    if media_type in PDF_MEDIA_TYPES:
        return extract_pdf(content)  # declared a PDF but has no PDF signature: reports damage
    if media_type in HTML_MEDIA_TYPES:
        return extract_html(content)
    if media_type in TEXT_MEDIA_TYPES:
        return extract_plain_text(content, encoding=charset or "utf-8")
    kind = _EXTENSIONS.get(_extension(filename)) if filename else None
    if kind == "pdf":
        return extract_pdf(content)
    if kind == "text":
        return extract_plain_text(content)
    if kind == "html" or _HTML_SNIFF.match(content[:4096]):
        return extract_html(content)
    described = media_type or (f"file {filename!r}" if filename else "unknown content")
    raise UnsupportedContent(
        f"Cannot read {described}: supported formats are PDF, plain text (UTF-8) and HTML pages."
    )


def extract_pdf(content: bytes) -> ExtractedText:
    """Text of every page of a PDF, pages separated by blank lines; title from its metadata.

    Page content is read up to a budget in proportion to the file's size (see
    PDF_CONTENT_EXPANSION); a PDF over it is refused as unreadable.
    """
    budget = PDF_CONTENT_FLOOR + PDF_CONTENT_EXPANSION * len(content)
    limits = {
        name: budget
        for name in (
            "zlib_maximum_output_length",
            "lzw_maximum_output_length",
            "run_length_maximum_output_length",
            "brotli_maximum_output_length",
            "array_based_stream_maximum_output_length",
            "stream_decoding_work_maximum_length",
        )
    }
    try:
        with pypdf.apply_configuration(**limits):
            title, pages = _pdf_pages(content, budget)
    except LimitReachedError as exc:
        raise UnreadableDocument(_PDF_TOO_LARGE) from exc
    except FileNotDecryptedError as exc:
        raise UnreadableDocument(
            "The PDF is password-protected. Remove the password (print or export it to a new "
            "PDF) and upload it again."
        ) from exc
    except (PdfReadError, ValueError, KeyError, TypeError, AttributeError, IndexError,
            AssertionError, RecursionError, OSError, NotImplementedError) as exc:  # fmt: skip
        # pypdf reports damaged files through many exception types besides PdfReadError.
        raise UnreadableDocument(
            "The PDF file is damaged or is not a PDF. Open it in a PDF viewer, save or export "
            "it again, and upload the new file."
        ) from exc
    text = "\n\n".join(stripped for page in pages if (stripped := page.strip()))
    if not has_readable_text(text):
        raise UnreadableDocument(
            "The PDF has no text layer (it looks like a scanned or image-only document). Run "
            "it through OCR, or export it with selectable text, and upload it again."
        )
    return ExtractedText(title, text)


def _pdf_pages(content: bytes, budget: int) -> tuple[str | None, list[str]]:
    reader = pypdf.PdfReader(io.BytesIO(content))
    if reader.is_encrypted and not reader.decrypt(""):
        raise FileNotDecryptedError("encrypted")
    title = _clean_title(reader.metadata.title if reader.metadata else None)
    pages: list[str] = []
    for page in reader.pages:
        # Decompressed (and kept: extraction reads the same data) before it is parsed.
        contents = page.get_contents()
        budget -= len(contents.get_data()) if contents is not None else 0
        if budget < 0:
            raise LimitReachedError("page content over budget")
        pages.append(page.extract_text() or "")
    if not pages:
        raise PdfReadError("no pages")  # what is left of a damaged page tree
    return title, pages


def extract_plain_text(content: bytes, *, encoding: str = "utf-8") -> ExtractedText:
    """Decode a text file strictly (UTF-8 unless a fetched resource declared another charset),
    dropping a byte order mark. Plain text carries no title."""
    try:
        codec = codecs.lookup(encoding)
    except LookupError as exc:
        raise UnsupportedContent(
            f"The text uses the character set {encoding!r}, which is not supported. Save it "
            "as UTF-8 and try again."
        ) from exc
    if codec.name == "utf-8" and content.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise UnreadableDocument(
            "The text file is encoded as UTF-16, not UTF-8. Save it as UTF-8 and upload it again."
        )
    try:
        text = content.decode("utf-8-sig" if codec.name == "utf-8" else codec.name, "strict")
    except UnicodeDecodeError as exc:
        raise UnreadableDocument(
            f"The text file is not valid {'UTF-8' if codec.name == 'utf-8' else codec.name}: "
            f"byte 0x{content[exc.start]:02x} at position {exc.start} cannot be decoded. Save "
            "the file as UTF-8 and upload it again."
        ) from exc
    text = text.removeprefix("\ufeff")
    if not has_readable_text(text):
        raise UnreadableDocument("The text file contains no readable text (no letters or digits).")
    return ExtractedText(None, text)


def extract_html(content: bytes | str) -> ExtractedText:
    """Main text of a web page (navigation, footers, scripts and ads left out) and its title.

    Title: the page's og:title, else its <title>, else what trafilatura finds. Each block of
    the main text (paragraph, heading, list item) becomes a paragraph of its own.
    """
    tree = load_html(content)
    if tree is None:
        raise UnreadableDocument("The page is empty or is not HTML.")
    title = _clean_title(
        _first(tree.xpath("//meta[@property='og:title']/@content"))
        or _first(tree.xpath("//title//text()"))
    )
    document = trafilatura.bare_extraction(
        tree, with_metadata=True, include_comments=False, include_tables=True
    )
    body = getattr(document, "text", None) or ""
    text = "\n\n".join(line.strip() for line in body.splitlines() if line.strip())
    if not has_readable_text(text):
        raise UnreadableDocument(
            "No readable main text was found on the page (it may be empty, need JavaScript, "
            "or sit behind a login). Try the address of the article itself, or upload the text."
        )
    return ExtractedText(title or _clean_title(getattr(document, "title", None)), text)


def _parse_content_type(content_type: str | None) -> tuple[str | None, str | None]:
    if not content_type:
        return None, None
    media_type, _, params = content_type.partition(";")
    charset = None
    for param in params.split(";"):
        key, _, value = param.partition("=")
        if key.strip().lower() == "charset" and value.strip():
            charset = value.strip().strip("\"'")
    return media_type.strip().lower() or None, charset


def _extension(filename: str) -> str:
    dot = filename.rfind(".")
    return filename[dot:].lower() if dot >= 0 else ""


def _first(values: list[object]) -> str | None:
    for value in values:
        if isinstance(value, str) and value.strip():
            return value
    return None


def _clean_title(title: object) -> str | None:
    if not isinstance(title, str):
        return None
    cleaned = _SPACES.sub(" ", title).strip()
    return cleaned or None

"""QR codes in images and PDFs ("quishing"): a link the reader scans with a phone, out of the filter's sight.

Images are decoded with zxing-cpp after Pillow has read only their header and the size is within bounds; PDFs are
opened with pypdf and the images embedded in their first pages decoded the same way. A QR code that a PDF draws
with vector paths (not an image) is not seen: finding it would need a renderer. Work is bounded per mail (bytes,
pixels, images, pages, seconds); what a bound or a broken file kept from being decoded is reported, not raised.
"""

from __future__ import annotations

import io
import logging
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import zxingcpp
from PIL import Image
from pypdf import PdfReader
from pypdf.errors import PyPdfError

from smtp.mime import Attachment

log = logging.getLogger(__name__)

#: Images (including those inside PDFs) decoded per mail; a mail with more is decoded that far.
MAX_IMAGES = 10
#: Pixels of one image decoded at most (a 4000 x 3000 photo); a bigger one is skipped (decompression bombs).
MAX_PIXELS = 12_000_000
#: Bytes of one image or PDF looked at; a bigger file is skipped.
MAX_FILE_BYTES = 10 * 1024 * 1024
#: Pages of a PDF whose images are decoded (a lure puts its QR code on the first page).
MAX_PDF_PAGES = 3
#: Seconds of QR work per mail; checked between images (the decoder itself cannot be interrupted).
MAX_SECONDS = 5.0
#: Smallest side, in pixels, of an image worth decoding (spacers and tracking pixels are not QR codes).
MIN_SIDE = 21

_IMAGE_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a")
#: Declared image types that are not raster images (Pillow cannot read them; an SVG is HTML's business).
_NOT_RASTER = ("image/svg+xml",)
_PDF_MAGIC = b"%PDF-"
#: Only QR codes are looked for (other symbologies are slower to search and do not carry lures).
_QR_ONLY = zxingcpp.BarcodeFormats(zxingcpp.BarcodeFormat.QRCode)


@dataclass(frozen=True)
class QrCode:
    #: Where it was found: the file name (and page of a PDF).
    source: str
    text: str


@dataclass
class QrScan:
    codes: list[QrCode] = field(default_factory=list)
    #: What could not be decoded and why ("scan.pdf: PdfReadError ...", "12 images over the limit").
    problems: list[str] = field(default_factory=list)


def is_image(att: Attachment) -> bool:
    declared = att.declared_type.lower()
    if declared in _NOT_RASTER:
        return False
    webp = att.data[:4] == b"RIFF" and att.data[8:12] == b"WEBP"
    return declared.startswith("image/") or att.data.startswith(_IMAGE_MAGIC) or webp


def is_pdf(att: Attachment) -> bool:
    return att.declared_type.lower() == "application/pdf" or att.data[:1024].lstrip().startswith(_PDF_MAGIC)


def _decode(image: Image.Image) -> list[str]:
    """The texts of the QR codes in one image (converted to grey: zxing reads luminance)."""
    if image.mode not in ("L", "RGB", "RGBA"):
        image = image.convert("RGB")
    results = zxingcpp.read_barcodes(image.convert("L"), formats=_QR_ONLY)
    return [r.text for r in results if r.valid and r.text]


def _bounded(width: int, height: int) -> bool:
    return 0 < width * height <= MAX_PIXELS and min(width, height) >= MIN_SIDE


def _pdf_images(name: str, data: bytes, problems: list[str]) -> Iterator[tuple[str, Image.Image]]:
    """The embedded images of a PDF's first pages, within the pixel bound (their size is read before decoding)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reader = PdfReader(io.BytesIO(data), strict=False)
        if reader.is_encrypted:
            problems.append(f"{name}: encrypted PDF, images not decoded")
            return
        for number, page in enumerate(reader.pages[:MAX_PDF_PAGES], start=1):
            resources = page.get("/Resources")
            xobjects = resources.get_object().get("/XObject") if resources is not None else None
            if xobjects is None:
                continue
            for key, ref in xobjects.get_object().items():
                obj = ref.get_object()
                if obj.get("/Subtype") != "/Image":
                    continue
                width, height = int(obj.get("/Width", 0)), int(obj.get("/Height", 0))
                if not _bounded(width, height):
                    if width * height > MAX_PIXELS:
                        problems.append(f"{name} page {number}: {width}x{height} image over the decode limit")
                    continue
                image = page.images[str(key)].image
                if image is not None:
                    yield f"{name} page {number}", image


def scan_attachments(attachments: Sequence[Attachment]) -> QrScan:
    """Decode the QR codes of the mail's images and PDFs, within the per-mail bounds; never raises for bad files."""
    scan = QrScan()
    decoded = 0
    deadline = time.monotonic() + MAX_SECONDS
    for att in attachments:
        image_file, pdf_file = is_image(att), not is_image(att) and is_pdf(att)
        if not image_file and not pdf_file:
            continue
        name = att.filename or att.declared_type
        if len(att.data) > MAX_FILE_BYTES:
            scan.problems.append(f"{name}: {len(att.data)} bytes, over the decode limit")
            continue
        try:
            if image_file:
                images: Iterator[tuple[str, Image.Image]] = iter(_single_image(name, att.data, scan.problems))
            else:
                images = _pdf_images(name, att.data, scan.problems)
            for source, image in images:
                if decoded >= MAX_IMAGES or time.monotonic() > deadline:
                    scan.problems.append(f"more images than decoded (limit {MAX_IMAGES} images, {MAX_SECONDS:g}s)")
                    return scan
                decoded += 1
                scan.codes.extend(QrCode(source, text) for text in _decode(image))
        except (OSError, ValueError, SyntaxError, PyPdfError, Image.DecompressionBombError, KeyError,
                AttributeError, TypeError) as exc:  # a broken file is a fact to report, not an error
            scan.problems.append(f"{name}: {type(exc).__name__}: {str(exc)[:80]}")
    return scan


def _single_image(name: str, data: bytes, problems: list[str]) -> list[tuple[str, Image.Image]]:
    """One image file (its first frame), opened lazily: the header is read, pixels only within the bound."""
    image = Image.open(io.BytesIO(data))
    width, height = image.size
    if not _bounded(width, height):
        if width * height > MAX_PIXELS:
            problems.append(f"{name}: {width}x{height} pixels, over the decode limit")
        return []
    image.load()
    return [(name, image)]

"""EPUBs for the tests: a real public-domain one made from the Alice example (Lewis Carroll, 1865):
two chapters, a cover image and cover page, a table of contents (EPUB 3 nav, or EPUB 2 NCX),
a copyright page, a footnote and an inline image; and a small one laid out as pandoc writes a
book (front matter titled by the book's title, a figure with its caption, a table)."""

from __future__ import annotations

import re
import struct
import zipfile
import zlib
from html import escape
from pathlib import Path

from helpers import REPO

ALICE = Path(REPO) / "examples" / "books" / "alice-ch1-3.md"
TITLE, AUTHOR = "Alice's Adventures in Wonderland", "Lewis Carroll"
CHAPTER_TITLES = ["CHAPTER I. Down the Rabbit-Hole", "CHAPTER II. The Pool of Tears"]
FOOTNOTE = "The sister is unnamed in the text."


def png(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    """A plain PNG image of one colour."""
    raw = b"".join(b"\x00" + bytes(rgb) * width for _ in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


COVER = png(48, 64, (200, 30, 30))


def alice_paragraphs(chapter: int, count: int) -> list[str]:
    """The first `count` paragraphs of Alice's chapter `chapter` (1-based), unwrapped."""
    text = ALICE.read_text().split("\n# ")[chapter - 1]
    blocks = [" ".join(b.split()) for b in text.split("\n\n")[1:]]
    return [b for b in blocks if b][:count]


def _xhtml(title: str, body: str, epub_type: str = "") -> str:
    kind = f' epub:type="{epub_type}"' if epub_type else ""
    return ('<?xml version="1.0" encoding="utf-8"?>\n<!DOCTYPE html>\n'
            '<html xmlns="http://www.w3.org/1999/xhtml" xmlns:epub="http://www.idpf.org/2007/ops">\n'
            f"<head><title>{escape(title)}</title></head>\n<body{kind}>\n{body}\n</body>\n</html>\n")


def _chapter(number: int, paragraphs: list[str], *, note: bool) -> str:
    heading, subtitle = CHAPTER_TITLES[number - 1].split(". ", 1)
    body = [f"<section epub:type=\"chapter\"><h1>{heading}.</h1><h2>{escape(subtitle)}</h2>"]
    for i, paragraph in enumerate(paragraphs):
        text = escape(paragraph)
        if note and i == 0:  # a footnote marker after "her sister", and an image mid-paragraph
            text = re.sub(r"her sister", '<em>her sister</em><sup><a epub:type="noteref" href="#fn1" id="r1">1</a>'
                          "</sup>", text, count=1)
            text = text.replace("pictures", 'pictures <img src="images/rabbit.png" alt="an engraving by Tenniel"/>', 1)
        body.append(f"<p>{text}</p>")
    if note:
        body.append(f'<aside epub:type="footnote" id="fn1"><p><a href="#r1">1</a> {FOOTNOTE}</p></aside>')
    body.append("</section>")
    return _xhtml(CHAPTER_TITLES[number - 1], "\n".join(body))


def make_epub(path: Path, *, epub3: bool = True, paragraphs: int = 2) -> Path:
    """Write the EPUB to `path`: EPUB 3 with a nav document, or EPUB 2 with an NCX and a guide."""
    chapters = [_chapter(1, alice_paragraphs(1, paragraphs), note=True),
                _chapter(2, alice_paragraphs(2, paragraphs), note=False)]
    cover_page = _xhtml("Cover", '<div><img src="images/cover.png" alt="Cover"/></div>', "cover")
    copyright_page = _xhtml("Copyright", "<p>First published in 1865. This edition is in the public domain.</p>",
                            "copyright-page")
    nav = _xhtml("Contents", (
        '<nav epub:type="toc"><h1>Contents</h1><ol>'
        + "".join(f'<li><a href="text/chapter-{i + 1}.xhtml">{escape(t)}</a></li>' for i, t in enumerate(CHAPTER_TITLES))
        + '</ol></nav><nav epub:type="landmarks"><ol><li><a epub:type="cover" href="text/cover.xhtml">Cover</a></li>'
        '<li><a epub:type="bodymatter" href="text/chapter-1.xhtml">Start</a></li></ol></nav>'))
    ncx = ('<?xml version="1.0" encoding="utf-8"?>\n<ncx xmlns="http://www.daisy.org/z3986/2005/ncx/" version="2005-1">'
           "<navMap>" + "".join(
               f'<navPoint id="n{i}" playOrder="{i + 1}"><navLabel><text>{escape(t)}</text></navLabel>'
               f'<content src="text/chapter-{i + 1}.xhtml"/></navPoint>' for i, t in enumerate(CHAPTER_TITLES))
           + "</navMap></ncx>")
    items = [("cover-page", "text/cover.xhtml", "application/xhtml+xml", ""),
             ("copyright", "text/copyright.xhtml", "application/xhtml+xml", ""),
             ("ch1", "text/chapter-1.xhtml", "application/xhtml+xml", ""),
             ("ch2", "text/chapter-2.xhtml", "application/xhtml+xml", ""),
             ("cover-image", "images/cover.png", "image/png", "cover-image" if epub3 else ""),
             ("rabbit", "text/images/rabbit.png", "image/png", ""),
             ("ncx", "toc.ncx", "application/x-dtbncx+xml", "")]
    if epub3:
        items.append(("nav", "nav.xhtml", "application/xhtml+xml", "nav"))
    spine = (('<itemref idref="cover-page" linear="no"/>' if epub3 else '<itemref idref="cover-page"/>')
             + ('<itemref idref="nav"/>' if epub3 else "")
             + '<itemref idref="copyright"/><itemref idref="ch1"/><itemref idref="ch2"/>')
    guide = ("" if epub3 else '<guide><reference type="cover" href="text/cover.xhtml" title="Cover"/>'
             '<reference type="copyright-page" href="text/copyright.xhtml" title="Copyright"/></guide>')
    files = {"toc.ncx": ncx, "text/cover.xhtml": cover_page,
             "text/copyright.xhtml": copyright_page, "text/chapter-1.xhtml": chapters[0],
             "text/chapter-2.xhtml": chapters[1], "images/cover.png": COVER,
             "text/images/rabbit.png": png(8, 8, (250, 250, 250))}
    if epub3:
        files["nav.xhtml"] = nav
    package = _package(TITLE, items, spine, epub3=epub3, guide=guide,
                       extra_meta="" if epub3 else '<meta name="cover" content="cover-image"/>')
    return _write(path, package, files)


def _package(title: str, items: list[tuple[str, str, str, str]], spine: str, *, epub3: bool, guide: str = "",
             extra_meta: str = "") -> str:
    """The OPF package document: metadata, the manifest of (id, href, media type, properties), spine, guide."""
    manifest = "".join(f'<item id="{i}" href="{h}" media-type="{m}"' + (f' properties="{p}"' if p else "") + "/>"
                       for i, h, m, p in items)
    slug = re.sub(r"\W+", "-", title.lower())
    return ('<?xml version="1.0" encoding="utf-8"?>\n'
            f'<package xmlns="http://www.idpf.org/2007/opf" version="{"3.0" if epub3 else "2.0"}" unique-identifier="id">'
            '<metadata xmlns:dc="http://purl.org/dc/elements/1.1/">'
            f'<dc:identifier id="id">synth-test-{slug}</dc:identifier><dc:title>{escape(title)}</dc:title>'
            f"<dc:creator>{AUTHOR}</dc:creator><dc:language>en</dc:language>{extra_meta}"
            f'</metadata><manifest>{manifest}</manifest><spine toc="ncx">{spine}</spine>{guide}</package>')


def _write(path: Path, package: str, files: dict[str, str | bytes]) -> Path:
    """The EPUB's zip: the mimetype first and stored, the container, the package and `files` under OEBPS/."""
    container = ('<?xml version="1.0"?>\n<container version="1.0" xmlns="urn:oasis:names:tc:opendocument:xmlns:container">'
                 '<rootfiles><rootfile full-path="OEBPS/content.opf" media-type="application/oebps-package+xml"/>'
                 "</rootfiles></container>")
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(zipfile.ZipInfo("mimetype"), "application/epub+zip")  # first and stored, as EPUB requires
        z.writestr("META-INF/container.xml", container, zipfile.ZIP_DEFLATED)
        for name, data in {"content.opf": package, **files}.items():
            z.writestr(f"OEBPS/{name}", data, zipfile.ZIP_DEFLATED)
    return path


# A book as pandoc (3.x) writes one from Markdown with `--toc`: its cover page, title page and nav
# document are each titled by the book's title; a chapter holds a figure (the image, then its caption
# marked aria-hidden="true", since it repeats the alt text) and a table with a caption and a header row.
PANDOC_TITLE = "A Walk in the Valley"
PANDOC_CAPTION = "A map of the valley"
PANDOC_CHAPTER = """<section id="chapter-1" class="level1"><h1>Chapter 1</h1>
<p>We set out at dawn.</p>
<figure><img src="../media/file0.png" alt="A map of the valley" />
<figcaption aria-hidden="true">A map of the valley</figcaption></figure>
<table><caption>Supplies</caption>
<thead><tr class="header"><th>Item</th><th>Cost</th></tr></thead>
<tbody><tr class="odd"><td>Tea</td><td>$1</td></tr><tr class="even"><td>Bread</td><td>$2.50</td></tr></tbody>
</table>
<p>Then we walked on.</p></section>"""


def make_pandoc_epub(path: Path) -> Path:
    """Write the pandoc-shaped EPUB 3 (see above) to `path`: cover, title page, nav, two chapters."""
    title = escape(PANDOC_TITLE)
    cover = _xhtml(PANDOC_TITLE, '<div id="cover-image"><img src="../media/cover.png" alt="cover image"/></div>')
    title_page = _xhtml(PANDOC_TITLE, f'<section epub:type="titlepage" class="titlepage"><h1 class="title">{title}'
                        f'</h1><p class="author">{AUTHOR}</p></section>')
    nav = _xhtml(PANDOC_TITLE, (
        f'<nav epub:type="toc" id="toc"><h1 id="toc-title">{title}</h1><ol class="toc">'
        '<li><a href="text/ch001.xhtml">Chapter 1</a></li><li><a href="text/ch002.xhtml">Chapter 2</a></li></ol></nav>'
        '<nav epub:type="landmarks" id="landmarks" hidden="hidden"><ol>'
        '<li><a href="text/cover.xhtml" epub:type="cover">Cover</a></li>'
        '<li><a href="text/title_page.xhtml" epub:type="titlepage">Title Page</a></li>'
        '<li><a href="#toc" epub:type="toc">Table of Contents</a></li></ol></nav>'))
    chapters = [_xhtml(PANDOC_TITLE, PANDOC_CHAPTER, "bodymatter"),
                _xhtml(PANDOC_TITLE, '<section id="chapter-2" class="level1"><h1>Chapter 2</h1>'
                       "<p>The road climbed into the hills.</p></section>", "bodymatter")]
    xhtml = "application/xhtml+xml"
    items = [("cover_xhtml", "text/cover.xhtml", xhtml, ""), ("title_page_xhtml", "text/title_page.xhtml", xhtml, ""),
             ("nav", "nav.xhtml", xhtml, "nav"), ("ch001_xhtml", "text/ch001.xhtml", xhtml, ""),
             ("ch002_xhtml", "text/ch002.xhtml", xhtml, ""),
             ("cover_png", "media/cover.png", "image/png", "cover-image"), ("file0_png", "media/file0.png", "image/png", "")]
    spine = "".join(f'<itemref idref="{i}"/>' for i in ("cover_xhtml", "title_page_xhtml", "nav", "ch001_xhtml",
                                                        "ch002_xhtml"))
    files = {"text/cover.xhtml": cover, "text/title_page.xhtml": title_page, "nav.xhtml": nav,
             "text/ch001.xhtml": chapters[0], "text/ch002.xhtml": chapters[1], "media/cover.png": COVER,
             "media/file0.png": png(8, 8, (30, 120, 30))}
    return _write(path, _package(PANDOC_TITLE, items, spine, epub3=True), files)

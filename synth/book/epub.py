"""An EPUB (2 or 3) as a `Book`: chapters in reading order, titled, with its metadata and cover.

This module owns reading the EPUB container with the standard library's `zipfile` and
`lxml` (no EPUB library: the popular one is AGPL): `META-INF/container.xml` names the
package document (OPF), whose metadata gives the title, authors, language and cover
image, whose spine gives the reading order, and whose navigation (the EPUB 3 nav
document, or the EPUB 2 NCX) gives the chapter titles; a document without an entry
there is titled by its first headings. Each spine document is one chapter. Front and
back matter (cover page, title page, table of contents, copyright page, colophon,
index) is recognised by its `epub:type`, the nav's landmarks, the OPF guide, a
non-linear spine entry or its title, and skipped unless asked for; a skipped document is
named by what it is (Cover, Title page, Contents), else by its title. From the text,
images, their captions (and whatever the book hides from screen readers, `aria-hidden`),
footnote markers (`<sup>1</sup>`, note references) and the notes themselves are dropped. A
table is read row by row, each cell after its column's heading ("Item: Tea; Cost: $1."), or
skipped with a one-line note, as asked. The sections are cut into chunks as any book's
(`synth.book.text`). It knows nothing about audio, models or Ray.
"""

from __future__ import annotations

import os
import posixpath
import re
import zipfile
from typing import Literal
from urllib.parse import unquote

from synth.book.text import Book, BookError, Section, chunk_sections

_NS = {"opf": "http://www.idpf.org/2007/opf", "dc": "http://purl.org/dc/elements/1.1/",
       "ncx": "http://www.daisy.org/z3986/2005/ncx/", "c": "urn:oasis:names:tc:opendocument:xmlns:container"}
_EPUB_TYPE = "{http://www.idpf.org/2007/ops}type"
_XHTML_TYPES = ("application/xhtml+xml", "text/html", "application/x-dtbook+xml")
# epub:type / landmark / guide values that mark matter a listener does not want read
_MATTER = {"cover", "toc", "titlepage", "title-page", "halftitlepage", "copyright-page", "copyright", "colophon",
           "index", "imprint", "loi", "lot", "landmarks", "page-list", "other.ms-coverimage-standard"}
_MATTER_NAMES = {"cover": "Cover", "other.ms-coverimage-standard": "Cover", "toc": "Contents",
                 "titlepage": "Title page", "title-page": "Title page", "halftitlepage": "Half title page",
                 "copyright-page": "Copyright", "copyright": "Copyright", "colophon": "Colophon", "index": "Index",
                 "imprint": "Imprint", "loi": "List of illustrations", "lot": "List of tables",
                 "landmarks": "Landmarks", "page-list": "Page list"}
_MATTER_TITLE = re.compile(r"^\s*(cover|contents|table of contents|copyright( page)?|title page|colophon|index)\s*$",
                           re.IGNORECASE)
_NOTES = {"footnote", "footnotes", "endnote", "endnotes", "rearnote", "rearnotes", "note", "doc-footnote",
          "doc-endnote", "doc-endnotes"}
_NOTE_REF = {"noteref", "doc-noteref"}
_MARKER = re.compile(r"^\s*[\[(]?(\d{1,3}|[*†‡§¶]+|[a-z])[\])]?\s*$")  # 1, [2], (3), *, †, a
_BLOCKS = {"p", "div", "h1", "h2", "h3", "h4", "h5", "h6", "li", "blockquote", "pre", "dt", "dd", "td", "th",
           "section", "article", "aside", "header", "footer", "figcaption", "tr", "table", "ul", "ol", "dl",
           "hr", "body", "main", "address", "center"}
_HEADINGS = {"h1", "h2", "h3", "h4", "h5", "h6"}
_UNSPOKEN = {"img", "svg", "image", "script", "style", "head", "audio", "video", "object", "embed", "math",
             "iframe", "canvas", "map", "nav", "picture", "source", "rt", "rp"}
_IMAGES = {"img", "svg", "image", "picture"}

TableReading = Literal["rows", "skip"]  # as the config's `text.tables`


def load_epub(path: str, *, keep_matter: bool = False, tables: TableReading = "rows", max_chunk_chars: int = 250,
              min_chunk_chars: int = 20) -> Book:
    """The EPUB at `path` as a Book; `keep_matter` reads front and back matter too; `tables`:
    "rows" reads a table row by row, "skip" says "Table omitted." in its place."""
    if tables not in ("rows", "skip"):
        raise ValueError(f"tables={tables!r}: choose 'rows' or 'skip'")
    path = os.fspath(path)
    try:
        archive = zipfile.ZipFile(path)
    except FileNotFoundError:
        raise BookError(f"{path}: no such file") from None
    except (zipfile.BadZipFile, OSError) as e:
        raise BookError(f"{path}: not an EPUB (not a zip archive: {e})") from None
    with archive:
        try:
            return _read(archive, keep_matter, tables, max_chunk_chars, min_chunk_chars)
        except BookError as e:
            raise BookError(f"{path}: {e}") from None


def _read(archive: zipfile.ZipFile, keep_matter: bool, tables: TableReading, max_chunk_chars: int,
          min_chunk_chars: int) -> Book:
    if "META-INF/encryption.xml" in archive.namelist() and _encrypted_documents(archive):
        raise BookError("the EPUB is encrypted (DRM); synth reads only unencrypted books")
    container = _xml(archive, "META-INF/container.xml")
    rootfile = container.find(".//c:rootfile", _NS)
    if rootfile is None or not rootfile.get("full-path"):
        raise BookError("META-INF/container.xml names no package document (rootfile)")
    opf_path = rootfile.get("full-path")
    opf = _xml(archive, opf_path)
    base = posixpath.dirname(opf_path)

    manifest = {}  # id -> (zip path, media type, properties)
    for item in opf.iterfind("opf:manifest/opf:item", _NS):
        href = item.get("href")
        if item.get("id") and href:
            manifest[item.get("id")] = (_join(base, href), item.get("media-type", ""),
                                        set(item.get("properties", "").split()))
    spine = opf.find("opf:spine", _NS)
    if spine is None:
        raise BookError(f"{opf_path} has no spine (reading order)")

    titles, kinds = _navigation(archive, manifest, spine)
    for ref in opf.iterfind("opf:guide/opf:reference", _NS):  # EPUB 2's landmarks
        if ref.get("href"):
            kinds.setdefault(_join(base, ref.get("href")).split("#")[0], ref.get("type", "").lower())

    sections, skipped = [], []
    for itemref in spine.iterfind("opf:itemref", _NS):
        entry = manifest.get(itemref.get("idref", ""))
        if entry is None or entry[1] not in _XHTML_TYPES:
            continue
        doc_path, _, properties = entry
        doc = _xml(archive, doc_path, html=True)
        headings, paragraphs, doc_kinds = _text(doc, tables)
        title = titles.get(doc_path) or _joined(headings)
        label = title or _head_title(doc) or posixpath.basename(doc_path)
        kind = next((k for k in ("toc" if "nav" in properties else None, kinds.get(doc_path), *sorted(doc_kinds))
                     if k in _MATTER), None)
        matter = kind is not None or itemref.get("linear") == "no" or bool(_MATTER_TITLE.match(label))
        if matter and not keep_matter:
            skipped.append(_MATTER_NAMES.get(kind, label))  # what it is: a pandoc book's cover, title page and
            continue  # contents are all titled by the book's title
        title = title or (label if matter else f"Chapter {len(sections) + 1}")
        if paragraphs or headings:
            sections.append(Section(title, paragraphs))
    skipped = list(dict.fromkeys(skipped))  # each name once
    if not sections:
        raise BookError("the book holds no text" + (f" (skipped as front/back matter: {', '.join(skipped)})"
                                                    if skipped else ""))
    cover, cover_type = _cover(archive, opf, manifest)
    return Book(chunk_sections(sections, max_chunk_chars, min_chunk_chars), title=_meta(opf, "title"),
                author=" & ".join(_all_meta(opf, "creator")) or None, language=_meta(opf, "language"),
                cover=cover, cover_type=cover_type, skipped=tuple(skipped))


# --- the package -----------------------------------------------------------------------


def _join(base: str, href: str) -> str:
    """A manifest or nav href as a path inside the zip (relative to `base`, %-escapes undone)."""
    path, _, fragment = unquote(href).partition("#")
    joined = posixpath.normpath(posixpath.join(base, path)) if path else base
    return joined + (f"#{fragment}" if fragment else "")


def _xml(archive: zipfile.ZipFile, name: str, *, html: bool = False):
    try:
        from lxml import etree
    except ImportError:
        raise BookError("reading an EPUB needs lxml: pip install -e '.[book]' (or pip install lxml)") from None

    try:
        data = archive.read(name)
    except KeyError:
        raise BookError(f"{name} is missing from the archive") from None
    parser = etree.XMLParser(recover=html, resolve_entities=False, no_network=True, huge_tree=False)
    try:
        root = etree.fromstring(data, parser)
    except etree.XMLSyntaxError as e:
        raise BookError(f"{name} is not well-formed XML ({e})") from None
    if root is None and html:
        import lxml.html

        root = lxml.html.document_fromstring(data)
    if root is None:
        raise BookError(f"{name} holds no XML")
    return root


def _encrypted_documents(archive: zipfile.ZipFile) -> bool:
    """Whether encryption.xml covers anything but fonts (font obfuscation is not DRM)."""
    encryption = _xml(archive, "META-INF/encryption.xml")
    refs = [r.get("URI", "") for r in encryption.iter("{*}CipherReference")]
    return any(not r.lower().endswith((".otf", ".ttf", ".woff", ".woff2")) for r in refs)


def _meta(opf, name: str) -> str | None:
    values = _all_meta(opf, name)
    return values[0] if values else None


def _all_meta(opf, name: str) -> list[str]:
    return [" ".join(e.text.split()) for e in opf.iterfind(f"opf:metadata/dc:{name}", _NS) if e.text and e.text.strip()]


def _cover(archive: zipfile.ZipFile, opf, manifest: dict) -> tuple[bytes | None, str | None]:
    """The cover image: EPUB 3's `cover-image` item, else EPUB 2's `<meta name="cover">`."""
    chosen = next((e for e in manifest.values() if "cover-image" in e[2]), None)
    if chosen is None:
        meta = opf.find("opf:metadata/opf:meta[@name='cover']", _NS)
        chosen = manifest.get(meta.get("content", "")) if meta is not None else None
    if chosen is None or not chosen[1].startswith("image/"):
        return None, None
    try:
        return archive.read(chosen[0]), chosen[1]
    except KeyError:
        return None, None  # a manifest entry without its file: no cover rather than no book


def _navigation(archive: zipfile.ZipFile, manifest: dict, spine) -> tuple[dict[str, str], dict[str, str]]:
    """(document path -> its first title in the table of contents, document path -> landmark type)."""
    titles: dict[str, str] = {}
    kinds: dict[str, str] = {}
    nav = next((e for e in manifest.values() if "nav" in e[2]), None)
    if nav is not None:
        doc = _xml(archive, nav[0], html=True)
        base = posixpath.dirname(nav[0])
        for element in doc.iter("{*}nav"):
            kind = element.get(_EPUB_TYPE, "")
            for link in element.iter("{*}a"):
                if not link.get("href"):
                    continue
                target = _join(base, link.get("href")).split("#")[0]
                if "toc" in kind.split():
                    titles.setdefault(target, " ".join("".join(link.itertext()).split()))
                elif "landmarks" in kind.split():
                    kinds.setdefault(target, link.get(_EPUB_TYPE, "").lower())
    ncx = manifest.get(spine.get("toc", ""))
    if ncx is not None and not titles:
        doc = _xml(archive, ncx[0])
        base = posixpath.dirname(ncx[0])
        for point in doc.iter("{%s}navPoint" % _NS["ncx"]):
            label, content = point.find("ncx:navLabel/ncx:text", _NS), point.find("ncx:content", _NS)
            if label is not None and content is not None and label.text and content.get("src"):
                titles.setdefault(_join(base, content.get("src")).split("#")[0], " ".join(label.text.split()))
    return {k: v for k, v in titles.items() if v}, kinds


# --- a document's text -------------------------------------------------------------------


def _joined(headings: list[str]) -> str:
    """`CHAPTER I.` + `Down the Rabbit-Hole` -> `CHAPTER I. Down the Rabbit-Hole`; `One` + `Two` -> `One. Two`."""
    return " ".join(h if i == len(headings) - 1 or h[-1] in ".:!?" else h + "." for i, h in enumerate(headings))


def _head_title(doc) -> str:
    element = next(doc.iter("{*}title"), None)
    return " ".join("".join(element.itertext()).split()) if element is not None else ""


def _local(element) -> str:
    tag = element.tag
    return tag.rsplit("}", 1)[-1].lower() if isinstance(tag, str) else ""


def _types(element) -> set[str]:
    return set(element.get(_EPUB_TYPE, "").lower().split()) | set(element.get("role", "").lower().split())


def _unspoken(element) -> bool:
    """Images and their captions, notes and note markers, what is hidden from screen readers:
    nothing of them is read."""
    name, types = _local(element), _types(element)
    if name in _UNSPOKEN or types & (_NOTES | _NOTE_REF) or not name or element.get("aria-hidden") == "true":
        return True
    if name == "figcaption":  # a caption says what the image shows, and the image is not read
        figure = element.getparent()
        return figure is not None and any(_local(e) in _IMAGES for e in figure.iter())
    text = "".join(element.itertext())
    if name == "sup" and _MARKER.match(text):
        return True  # a footnote marker: `<sup>1</sup>`, `<sup><a href="#n1">*</a></sup>`
    return name == "a" and "#" in element.get("href", "") and bool(_MARKER.match(text))


def _text(doc, tables: TableReading = "rows") -> tuple[list[str], list[str], set[str]]:
    """(the leading headings, the paragraphs after them, the epub:types of body and its first
    section) of one XHTML document; headings further down are read as paragraphs, a table as
    `tables` says."""
    body = next(doc.iter("{*}body"), doc)
    kinds = _types(body)
    first = next((e for e in body if _local(e) in {"section", "div", "article"}), None)
    if first is not None:
        kinds |= _types(first)
    blocks: list[tuple[bool, str]] = []  # (is a heading, text)
    buffer: list[str] = []

    def flush(heading: bool = False) -> None:
        text = " ".join("".join(buffer).split())
        if text and any(ch.isalnum() for ch in text):
            blocks.append((heading, text))
        buffer.clear()

    def walk(element) -> None:
        name = _local(element)
        if name == "br":
            buffer.append(" ")
            return
        if name == "table":
            flush()
            blocks.extend((False, line) for line in _table(element, tables))
            return
        block = name in _BLOCKS
        if block:
            flush()
        buffer.append(element.text or "")
        for child in element:
            if not _unspoken(child):
                walk(child)
            buffer.append(child.tail or "")
        if block:
            flush(heading=name in _HEADINGS)

    walk(body)
    flush()
    leading = 0
    while leading < len(blocks) and blocks[leading][0]:
        leading += 1
    return [t for _, t in blocks[:leading]], [t for _, t in blocks[leading:]], kinds


def _inline_text(element) -> str:
    """The spoken text inside `element`, on one line (blocks inside it apart by a space)."""
    parts = [element.text or ""]
    for child in element:
        if not _unspoken(child):
            parts += [" ", _inline_text(child), " "] if _local(child) in _BLOCKS else [_inline_text(child)]
        parts.append(child.tail or "")
    return " ".join("".join(parts).split())


def _table(table, tables: TableReading) -> list[str]:
    """A table's paragraphs: its caption, then a row each, every cell after its column's heading
    (`Item: Tea; Cost: $1.`); or, skipped, one line saying so (with the caption, if any)."""
    caption = next((_inline_text(c) for c in table.iter("{*}caption")), "")
    if tables == "skip":
        return [f"Table omitted: {caption.rstrip('.')}." if caption else "Table omitted."]
    rows = [row for row in (_row(tr) for tr in table.iter("{*}tr")) if any(text for _, text in row)]
    heads: list[str] = []
    if rows and all(is_head for is_head, _ in rows[0]):
        heads = [text for _, text in rows.pop(0)]
    lines = [caption] if caption else []
    for row in rows:
        cells = [f"{head}: {text}" if head and head != text else text
                 for head, (_, text) in zip(heads + [""] * len(row), row) if text]
        line = "; ".join(cells)
        lines.append(line if line[-1] in ".!?" else line + ".")
    return lines


def _row(tr) -> list[tuple[bool, str]]:
    """A table row's cells as (is a heading cell, text), one per column: a cell spanning
    columns counts once per column (a heading's name over each; a data cell's text once)."""
    cells = []
    for cell in tr:
        if _local(cell) in ("td", "th"):
            span = int(cell.get("colspan")) if (cell.get("colspan") or "").isdigit() else 1
            text, is_head = _inline_text(cell), _local(cell) == "th"
            cells += [(is_head, text)] + [(is_head, text if is_head else "")] * (max(span, 1) - 1)
    return cells

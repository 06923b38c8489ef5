"""Reading EPUBs (synth.book.epub) made in the test from a public-domain text (Alice): spine
order, titles from the nav or the NCX, front matter skipped or kept, footnotes and images
dropped, metadata and cover; broken archives named. And one shaped as pandoc writes a book:
its front matter named once each, a figure's caption unspoken, a table read row by row or
skipped. No model."""

import zipfile

import pytest
from epub_book import (
    AUTHOR,
    CHAPTER_TITLES,
    COVER,
    FOOTNOTE,
    PANDOC_CAPTION,
    PANDOC_TITLE,
    TITLE,
    alice_paragraphs,
    make_epub,
    make_pandoc_epub,
)

from synth.book.epub import load_epub
from synth.book.render import open_book
from synth.book.text import BookError


@pytest.mark.parametrize("epub3", [True, False], ids=["epub3-nav", "epub2-ncx"])
def test_chapters_titles_metadata_and_cover(tmp_path, epub3):
    book = load_epub(str(make_epub(tmp_path / "alice.epub", epub3=epub3)))
    assert (book.title, book.author, book.language) == (TITLE, AUTHOR, "en")
    assert book.cover == COVER and book.cover_type == "image/png"
    assert [ch.title for ch in book.chapters] == CHAPTER_TITLES  # spine order, titles from nav / NCX
    assert [ch.chunks[0].text for ch in book.chapters] == CHAPTER_TITLES  # the title is spoken first
    assert book.skipped == (("Cover", "Contents", "Copyright") if epub3 else ("Cover", "Copyright"))
    spoken = " ".join(c.text for ch in book.chapters for c in ch.chunks[1:])
    # every word of the chapters' paragraphs, in order, and nothing else
    paragraphs = alice_paragraphs(1, 2) + alice_paragraphs(2, 2)
    assert "".join(spoken.split()) == "".join("".join(paragraphs).split())
    assert FOOTNOTE not in spoken and "Tenniel" not in spoken  # the note, and the image's alt text
    assert "sister1" not in spoken and "1865" not in spoken  # the marker; the skipped copyright page


def test_front_matter_can_be_kept(tmp_path):
    book = open_book(str(make_epub(tmp_path / "alice.epub")), keep_matter=True)
    assert [ch.title for ch in book.chapters] == ["Copyright", *CHAPTER_TITLES]  # the cover and nav hold no text
    assert "First published in 1865." in [c.text for c in book.chapters[0].chunks]
    assert book.skipped == ()


def test_a_pandoc_book_names_its_skipped_matter_once_each(tmp_path):
    # pandoc titles its cover page, title page and nav all by the book's title (issue 24)
    book = load_epub(str(make_pandoc_epub(tmp_path / "valley.epub")))
    assert book.title == PANDOC_TITLE and [ch.title for ch in book.chapters] == ["Chapter 1", "Chapter 2"]
    assert book.skipped == ("Cover", "Title page", "Contents")


def test_a_figures_caption_is_not_spoken_and_a_table_is_read_row_by_row(tmp_path):
    path = make_pandoc_epub(tmp_path / "valley.epub")
    spoken = [c.text for c in load_epub(str(path)).chapters[0].chunks[1:]]
    assert not any(PANDOC_CAPTION in text for text in spoken)  # the image is skipped, so is what it shows
    # not `Item`, `Cost`, `Tea`, `$1` as four one-word paragraphs: a row each, cells after their heading
    assert spoken == ["We set out at dawn.", "Supplies", "Item: Tea; Cost: $1.", "Item: Bread; Cost: $2.50.",
                      "Then we walked on."]
    skipped = [c.text for c in open_book(str(path), tables="skip").chapters[0].chunks[1:]]
    assert skipped == ["We set out at dawn.", "Table omitted: Supplies.", "Then we walked on."]


def test_tables_is_a_validated_text_setting_with_a_spoken_row():
    from pydantic import ValidationError

    from synth.pipeline.config import TextConfig
    from synth.pipeline.spoken import spoken_text

    assert TextConfig().tables == "rows"
    assert spoken_text(TextConfig(normalize=True))("Item: Tea; Cost: $1.") == "Item: Tea; Cost: one dollar."
    with pytest.raises(ValidationError, match="tables"):
        TextConfig(tables="columns")
    with pytest.raises(ValueError, match="tables='columns'"):
        load_epub("any.epub", tables="columns")


def test_a_document_without_a_toc_entry_is_titled_by_its_headings(tmp_path):
    path = make_epub(tmp_path / "alice.epub")
    stripped = tmp_path / "no-toc.epub"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(stripped, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith("nav.xhtml"):
                data = data.replace(b'epub:type="toc"', b'epub:type="other"')
            dst.writestr(info, data)
    book = load_epub(str(stripped))
    assert [ch.title for ch in book.chapters] == ["CHAPTER I. Down the Rabbit-Hole", "CHAPTER II. The Pool of Tears"]


def test_broken_epubs_are_named(tmp_path):
    not_zip = tmp_path / "plain.epub"
    not_zip.write_text("hello")
    with pytest.raises(BookError, match=r"plain\.epub: not an EPUB \(not a zip archive"):
        load_epub(str(not_zip))
    empty = tmp_path / "empty.epub"
    with zipfile.ZipFile(empty, "w") as z:
        z.writestr("mimetype", "application/epub+zip")
    with pytest.raises(BookError, match=r"empty\.epub: META-INF/container.xml is missing"):
        load_epub(str(empty))
    with pytest.raises(BookError, match="no such file"):
        load_epub(str(tmp_path / "missing.epub"))
    locked = tmp_path / "locked.epub"
    with zipfile.ZipFile(make_epub(tmp_path / "a.epub")) as src, zipfile.ZipFile(locked, "w") as dst:
        for info in src.infolist():
            dst.writestr(info, src.read(info))
        dst.writestr("META-INF/encryption.xml", '<encryption xmlns="urn:oasis:names:tc:opendocument:xmlns:container">'
                     '<EncryptedData xmlns="http://www.w3.org/2001/04/xmlenc#"><CipherData>'
                     '<CipherReference URI="OEBPS/text/chapter-1.xhtml"/></CipherData></EncryptedData></encryption>')
    with pytest.raises(BookError, match="encrypted"):
        load_epub(str(locked))

"""The light spoken-form normaliser (synth.text.normalize), table-driven: what each written
form is read as, and text that must be left alone."""

import pytest

from synth.text.normalize import NormalizerError, normalizer, spoken_form

CASES = [
    # cardinals
    ("She had 3 sisters.", "She had three sisters."),
    ("It cost 12 shillings.", "It cost twelve shillings."),
    ("There were 1,234 of them.", "There were one thousand, two hundred and thirty-four of them."),
    ("A crowd of 250,000 people.", "A crowd of two hundred and fifty thousand people."),
    ("It weighed 3.5 tons.", "It weighed three point five tons."),
    ("Only 0 left.", "Only zero left."),
    ("He counted 3, 4 and 5.", "He counted three, four and five."),
    ("The temperature was -4 degrees.", "The temperature was minus four degrees."),
    ("Pages 10-20 are missing.", "Pages ten to twenty are missing."),
    ("Tom & Jerry", "Tom and Jerry"),
    ("The 101 Dalmatians", "The one hundred and one Dalmatians"),
    # ordinals
    ("the 1st day", "the first day"),
    ("on the 2nd floor", "on the second floor"),
    ("the 3rd time", "the third time"),
    ("his 21st birthday", "his twenty-first birthday"),
    ("the 103rd regiment", "the one hundred and third regiment"),
    ("the 11th hour", "the eleventh hour"),
    # years and decades
    ("It was written in 1865.", "It was written in eighteen sixty-five."),
    ("By 1900 it was gone.", "By nineteen hundred it was gone."),
    ("in 2005 and 2024", "in two thousand and five and twenty twenty-four"),
    ("the war of 1812", "the war of eighteen twelve"),
    ("in the 1920s", "in the nineteen twenties"),
    ("during the 1860s", "during the eighteen sixties"),
    ("in the '80s", "in the eighties"),
    ("from 1914-1918", "from nineteen fourteen to nineteen eighteen"),
    # dates
    ("on March 3, 1865", "on March third, eighteen sixty-five"),
    ("July 4th", "July fourth"),
    ("on 3 March 1865", "on the third of March eighteen sixty-five"),
    ("the 22nd of May", "the twenty-second of May"),
    ("Dated 2024-05-01.", "Dated May first, twenty twenty-four."),
    ("Dec. 25, 1900", "December twenty-fifth, nineteen hundred"),
    ("on 1 January", "on the first of January"),
    # times
    ("at 3:30 p.m.", "at three thirty p m"),
    ("at 10:05", "at ten oh five"),
    ("by 7:00", "by seven o'clock"),
    ("at 9:00 am", "at nine a m"),
    ("around 12:45 PM", "around twelve forty-five p m"),
    ("at 6:15 a.m. sharp", "at six fifteen a m sharp"),
    ("by 12:00am", "by twelve a m"),
    # currency
    ("It cost $5.", "It cost five dollars."),
    ("only $1", "only one dollar"),
    ("a fee of $3.50", "a fee of three dollars and fifty cents"),
    ("just $0.99", "just ninety-nine cents"),
    ("twenty quid, or £20", "twenty quid, or twenty pounds"),
    ("£1 a week", "one pound a week"),
    ("€10 each", "ten euros each"),
    ("$1.5 million", "one point five million dollars"),
    ("a $2,500 loan", "a two thousand, five hundred dollars loan"),
    ("£3.01", "three pounds and one penny"),
    # percentages
    ("50% of them", "fifty percent of them"),
    ("a 3.5% rise", "a three point five percent rise"),
    ("100 percent sure", "one hundred percent sure"),
    ("7 per cent", "seven percent"),
    # abbreviations and titles
    ("Mr. Darcy", "Mister Darcy"),
    ("Mrs. Bennet", "Missus Bennet"),
    ("Dr. Watson", "Doctor Watson"),
    ("Prof. Moriarty", "Professor Moriarty"),
    ("Capt. Ahab", "Captain Ahab"),
    ("Rev. Collins", "Reverend Collins"),
    ("St. Paul's", "Saint Paul's"),
    ("221B Baker St.", "221B Baker Street"),
    ("Mt. Everest", "Mount Everest"),
    ("John Smith Jr.", "John Smith Junior."),
    ("cats vs. dogs", "cats versus dogs"),
    ("apples, pears, etc.", "apples, pears, et cetera."),
    ("fruit, e.g. apples", "fruit, for example apples"),
    ("No. 5", "number five"),
    # Roman numerals in chapter titles, and regnal numbers
    ("CHAPTER I. Down the Rabbit-Hole", "CHAPTER one. Down the Rabbit-Hole"),
    ("CHAPTER IV.", "CHAPTER four."),
    ("Chapter XLII: The End", "Chapter forty-two: The End"),
    ("Book II", "Book two"),
    ("Part III", "Part three"),
    ("Volume IX", "Volume nine"),
    ("Chapter 3", "Chapter three"),
    ("STAVE V", "STAVE five"),
    ("Henry VIII", "Henry the eighth"),
    ("Louis XIV", "Louis the fourteenth"),
    # left alone
    ("Then I said no.", "Then I said no."),
    ("the book I read", "the book I read"),
    ("what Longitude I’ve got to", "what Longitude I’ve got to"),
    ("Part I’d say", "Part I’d say"),
    ("Section D", "Section D"),
    ("Alice was beginning to get very tired.", "Alice was beginning to get very tired."),
    ("“Oh dear! Oh dear!”", "“Oh dear! Oh dear!”"),
]


@pytest.mark.parametrize(("written", "spoken"), CASES, ids=[w for w, _ in CASES])
def test_spoken_form(written, spoken):
    assert spoken_form(written) == spoken


def test_the_table_covers_every_category():
    assert len(CASES) >= 60


def test_nemo_without_its_package_says_how_to_install_it():
    pytest.importorskip("num2words")
    try:
        import nemo_text_processing  # noqa: F401
    except ImportError:
        with pytest.raises(NormalizerError, match="pip install nemo_text_processing"):
            normalizer("nemo")
    else:
        assert normalizer("nemo")("It cost $5.") != "It cost $5."
    assert normalizer("light") is spoken_form

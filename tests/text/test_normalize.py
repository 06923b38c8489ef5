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
    ("at 3:30 p.m.", "at three thirty PM."),
    ("at 10:05", "at ten oh five"),
    ("by 7:00", "by seven o'clock"),
    ("at 9:00 am", "at nine AM"),
    ("around 12:45 PM", "around twelve forty-five PM"),
    ("at 6:15 a.m. sharp", "at six fifteen AM sharp"),
    ("by 12:00am", "by twelve AM"),
    ("at 00:30", "at twelve thirty AM"),
    ("at 14:10", "at fourteen ten"),
    ("1.59 p.m.", "one fifty-nine PM."),
    ("5pm-7 pm", "five PM to seven PM"),
    ("1:59 p.m. EST", "one fifty-nine PM EST"),
    ("01:01:01", "one hour one minute and one second"),
    ("He left at 5 p.m. The next day", "He left at five PM. The next day"),
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
    ("221B Baker St.", "two twenty-one B Baker Street."),
    ("Baker St. He was happy.", "Baker Street. He was happy."),
    ("Nancy lived at 1428 Elm St. It was", "Nancy lived at fourteen twenty-eight Elm Street. It was"),
    ("1211 E Arques Ave", "twelve eleven East Arques Avenue"),
    ("2788 San Tomas Expy, Santa Clara, CA 95051",
     "twenty-seven eighty-eight San Tomas Expressway, Santa Clara, California nine five zero five one"),
    ("Mulholland Dr. He drove on.", "Mulholland Drive. He drove on."),
    ("Then St. Paul said", "Then Saint Paul said"),
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
    ("World War II", "World War two"),
    ("after World War I ended", "after World War one ended"),
    ("Act iii, Scene ii", "Act three, Scene two"),
    # numeric dates (date_order mdy), dates with month names in any case
    ("10/12/2023", "October twelfth, twenty twenty-three"),
    ("25.12.2020", "the twenty-fifth of December twenty twenty"),  # only day first fits
    ("2016/07/03", "July third, twenty sixteen"),
    ("01/07/98", "January seventh, ninety-eight"),
    ("july 25 2012", "July twenty-fifth twenty twelve"),
    ("25 sept.", "the twenty-fifth of September."),
    ("Jan-15", "January fifteenth"),
    ("In March 2020", "In March twenty twenty"),
    # years of every era
    ("in the year 1066", "in the year ten sixty-six"),
    ("Hastings, in 1066", "Hastings, in ten sixty-six"),
    ("born in 44 BC", "born in forty-four BC"),
    ("AD 79", "AD seventy-nine"),
    ("the 1960s-1980s", "the nineteen sixties to nineteen eighties"),
    # telephone numbers, not ranges
    ("Call 555-1234.", "Call five five five, one two three four."),
    ("+1 (123) 123-5678", "plus one, one two three, one two three, five six seven eight"),
    ("Call 1-800-555-1234 now", "Call one, eight hundred, five five five, one two three four now"),
    ("The score was 3-2.", "The score was three-two."),  # going down: no range
    ("He was at No. 10 Downing Street.", "He was at number ten Downing Street."),
    ("the war of 1914-18", "the war of nineteen fourteen to eighteen"),
    ("100s of people", "hundreds of people"),
    ("Louis XVI’s court", "Louis the sixteenth’s court"),
    ("2+2=4", "two plus two equals four"),
    # measures and units
    ("It is 5 km away.", "It is five kilometers away."),
    ("It took 3 hrs.", "It took three hours."),
    ("12kg", "twelve kilograms"),
    ("1 mph", "one mile per hour"),
    ("a 5-km walk", "a five-kilometer walk"),
    ("2°C", "two degrees Celsius"),
    ("2-5lb", "two to five pounds"),
    ("a 4x4 truck", "a four by four truck"),
    # fractions and decimals
    ("1/2", "one half"),
    ("3 3/4 miles", "three and three quarters miles"),
    ("31/32", "thirty-one thirty-seconds"),
    ("2½ cups", "two and a half cups"),
    ("2.00", "two point zero zero"),
    ("007", "zero zero seven"),
    # money beyond dollars and cents
    ("$20/mo", "twenty dollars per month"),
    ("$250-$300", "two hundred and fifty dollars to three hundred dollars"),
    ("£1.111", "one point one one one pounds"),
    ("¥30B", "thirty billion yen"),
    ("10-20%", "ten to twenty percent"),
    # ordinals, initialisms, symbols
    ("1,000th", "one thousandth"),
    ("4rd", "four rd"),
    ("the U.S.A.", "the USA."),
    ("R&D", "R and D"),
    ("a.bc@gmail.com", "a dot bc at gmail dot com"),
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
    assert len(CASES) >= 130


@pytest.mark.parametrize(("order", "spoken"), [
    ("mdy", "on October twelfth, twenty twenty-three"),
    ("dmy", "on the tenth of December twenty twenty-three"),
    ("ymd", "on October twelfth, twenty twenty-three"),  # a four-digit year last: day and month as mdy
])
def test_date_order_decides_a_date_either_order_fits(order, spoken):
    assert spoken_form("on 10/12/2023", date_order=order) == spoken
    assert normalizer("light", order)("on 10/12/2023") == spoken
    # a date only one order fits is read so whatever the setting
    assert spoken_form("25.12.2020", date_order=order) == "the twenty-fifth of December twenty twenty"
    assert spoken_form("2016/07/03", date_order=order) == "July third, twenty sixteen"


def test_date_order_ymd_reads_a_two_digit_year_first():
    assert spoken_form("98/01/07", date_order="ymd") == "January seventh, ninety-eight"
    assert spoken_form("98/01/07", date_order="mdy") == "January seventh, ninety-eight"  # 98 cannot be a month
    assert spoken_form("05/01/07", date_order="ymd") == "January seventh, oh five"
    assert spoken_form("05/01/07", date_order="mdy") == "May first, oh seven"


def test_date_order_is_a_validated_config_setting():
    from pydantic import ValidationError

    from synth.pipeline.config import TextConfig
    from synth.pipeline.spoken import spoken_text

    assert TextConfig().date_order == "mdy"
    assert spoken_text(TextConfig(normalize=True, date_order="dmy"))("10/12/2023") == \
        "the tenth of December twenty twenty-three"
    with pytest.raises(ValidationError, match="date_order"):
        TextConfig(date_order="dym")
    with pytest.raises(ValidationError, match="text.date_order='dmy' needs text.normalizer='light'"):
        TextConfig(normalizer="nemo", date_order="dmy")
    with pytest.raises(ValueError, match="unknown date order 'dym'"):
        normalizer("light", "dym")


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

"""The words behind what English writes short: the tables the light normaliser reads from.

This module owns the data: month names, currencies, units of measure, street suffixes, compass
points, US states, time zones and the abbreviations read as words wherever they appear. It holds
no rules: where each table applies (a unit only after a number, a state only in an address) is
`synth.text.normalize`'s business. Units are spelled as American English spells them (meters,
liters); a lexicon entry respells them for a British book.
"""

from __future__ import annotations

MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December")
MONTH_BY_ABBREVIATION = {m[:3].lower(): i for i, m in enumerate(MONTHS, start=1)}

CURRENCIES = {  # symbol: (unit, units, subunit, subunits)
    "$": ("dollar", "dollars", "cent", "cents"),
    "US$": ("US dollar", "US dollars", "cent", "cents"),
    "£": ("pound", "pounds", "penny", "pence"),
    "€": ("euro", "euros", "cent", "cents"),
    "¥": ("yen", "yen", "sen", "sen"),
    "₩": ("won", "won", "jeon", "jeon"),
    "₹": ("rupee", "rupees", "paisa", "paise"),
}
SCALES = {"k": "thousand", "m": "million", "b": "billion", "bn": "billion", "thousand": "thousand",
          "million": "million", "billion": "billion", "trillion": "trillion"}

# abbreviation after a number -> (singular, plural). Not `in`, `a`, `s`, `h`, `t` (words too), nor `W` (west).
UNITS = {
    "mm": ("millimeter", "millimeters"), "cm": ("centimeter", "centimeters"), "m": ("meter", "meters"),
    "km": ("kilometer", "kilometers"), "ft": ("foot", "feet"), "yd": ("yard", "yards"), "mi": ("mile", "miles"),
    "mg": ("milligram", "milligrams"), "g": ("gram", "grams"), "kg": ("kilogram", "kilograms"),
    "lb": ("pound", "pounds"), "lbs": ("pound", "pounds"), "oz": ("ounce", "ounces"),
    "ml": ("milliliter", "milliliters"), "mL": ("milliliter", "milliliters"), "cl": ("centiliter", "centiliters"),
    "L": ("liter", "liters"), "cc": ("CC", "CC"), "ha": ("hectare", "hectares"),
    "ms": ("millisecond", "milliseconds"), "sec": ("second", "seconds"), "secs": ("second", "seconds"),
    "min": ("minute", "minutes"), "mins": ("minute", "minutes"), "hr": ("hour", "hours"), "hrs": ("hour", "hours"),
    "wk": ("week", "weeks"), "wks": ("week", "weeks"), "mo": ("month", "months"), "yr": ("year", "years"),
    "yrs": ("year", "years"),
    "mph": ("mile per hour", "miles per hour"), "km/h": ("kilometer per hour", "kilometers per hour"),
    "kph": ("kilometer per hour", "kilometers per hour"),
    "°C": ("degree Celsius", "degrees Celsius"), "°F": ("degree Fahrenheit", "degrees Fahrenheit"),
    "°": ("degree", "degrees"),
    "Hz": ("hertz", "hertz"), "kHz": ("kilohertz", "kilohertz"), "MHz": ("megahertz", "megahertz"),
    "GHz": ("gigahertz", "gigahertz"), "kW": ("kilowatt", "kilowatts"),
    "MW": ("megawatt", "megawatts"), "kWh": ("kilowatt hour", "kilowatt hours"), "V": ("volt", "volts"),
    "mAh": ("milliamp hour", "milliamp hours"),
    "KB": ("kilobyte", "kilobytes"), "kB": ("kilobyte", "kilobytes"), "MB": ("megabyte", "megabytes"),
    "GB": ("gigabyte", "gigabytes"), "TB": ("terabyte", "terabytes"),
    "kbps": ("kilobit per second", "kilobits per second"), "mbps": ("megabit per second", "megabits per second"),
    "Mbps": ("megabit per second", "megabits per second"), "Gbps": ("gigabit per second", "gigabits per second"),
    "m2": ("square meter", "square meters"), "m²": ("square meter", "square meters"),
    "km2": ("square kilometer", "square kilometers"), "km²": ("square kilometer", "square kilometers"),
    "cm2": ("square centimeter", "square centimeters"), "cm²": ("square centimeter", "square centimeters"),
    "ft²": ("square foot", "square feet"), "sq ft": ("square foot", "square feet"),
    "sq mi": ("square mile", "square miles"), "m3": ("cubic meter", "cubic meters"),
    "m³": ("cubic meter", "cubic meters"), "cm³": ("cubic centimeter", "cubic centimeters"),
    "km³": ("cubic kilometer", "cubic kilometers"),
}
# after a slash only (`$20/mo`, `3 cc/s`), where a single letter cannot be a word
PER_UNITS = {"s": "second", "h": "hour", "d": "day", "month": "month", "week": "week", "year": "year",
             "day": "day", "night": "night", "hour": "hour", "person": "person", "head": "head"}

STREET_SUFFIXES = {"St": "Street", "Ave": "Avenue", "Rd": "Road", "Dr": "Drive", "Blvd": "Boulevard", "Ln": "Lane",
                   "Expy": "Expressway", "Pkwy": "Parkway", "Hwy": "Highway", "Ct": "Court", "Pl": "Place",
                   "Sq": "Square", "Ter": "Terrace"}
STREET_WORDS = ("Street", "Avenue", "Road", "Drive", "Boulevard", "Lane", "Way", "Place", "Court", "Square",
                "Terrace", "Crescent", "Expressway", "Parkway", "Highway")
COMPASS = {"N": "North", "S": "South", "E": "East", "W": "West", "NE": "Northeast", "NW": "Northwest",
           "SE": "Southeast", "SW": "Southwest"}
US_STATES = {
    "AL": "Alabama", "AK": "Alaska", "AZ": "Arizona", "AR": "Arkansas", "CA": "California", "CO": "Colorado",
    "CT": "Connecticut", "DE": "Delaware", "DC": "D C", "FL": "Florida", "GA": "Georgia", "HI": "Hawaii",
    "ID": "Idaho", "IL": "Illinois", "IN": "Indiana", "IA": "Iowa", "KS": "Kansas", "KY": "Kentucky",
    "LA": "Louisiana", "ME": "Maine", "MD": "Maryland", "MA": "Massachusetts", "MI": "Michigan", "MN": "Minnesota",
    "MS": "Mississippi", "MO": "Missouri", "MT": "Montana", "NE": "Nebraska", "NV": "Nevada",
    "NH": "New Hampshire", "NJ": "New Jersey", "NM": "New Mexico", "NY": "New York", "NC": "North Carolina",
    "ND": "North Dakota", "OH": "Ohio", "OK": "Oklahoma", "OR": "Oregon", "PA": "Pennsylvania",
    "RI": "Rhode Island", "SC": "South Carolina", "SD": "South Dakota", "TN": "Tennessee", "TX": "Texas",
    "UT": "Utah", "VT": "Vermont", "VA": "Virginia", "WA": "Washington", "WV": "West Virginia",
    "WI": "Wisconsin", "WY": "Wyoming",
}
TIME_ZONES = ("EST", "EDT", "CST", "CDT", "MST", "MDT", "PST", "PDT", "GMT", "UTC", "BST", "CET", "CEST")

# read as words wherever they appear (the period belongs to the abbreviation)
ABBREVIATIONS = {
    "Mr.": "Mister", "Mrs.": "Missus", "Ms.": "Miz", "Messrs.": "Messieurs", "Dr.": "Doctor",
    "Prof.": "Professor", "Capt.": "Captain", "Col.": "Colonel", "Gen.": "General", "Lt.": "Lieutenant",
    "Sgt.": "Sergeant", "Cpl.": "Corporal", "Adm.": "Admiral", "Gov.": "Governor", "Sen.": "Senator",
    "Rep.": "Representative", "Rev.": "Reverend", "Hon.": "Honourable", "Fr.": "Father", "Jr.": "Junior",
    "Sr.": "Senior", "Mt.": "Mount", "Ft.": "Fort", "Ave.": "Avenue", "Rd.": "Road", "vs.": "versus",
    "etc.": "et cetera", "&c.": "et cetera", "e.g.": "for example", "i.e.": "that is", "approx.": "approximately",
}
TITLES = ("Mister", "Missus", "Miz", "Messieurs", "Doctor", "Professor", "Captain", "Colonel", "General",
          "Lieutenant", "Sergeant", "Corporal", "Admiral", "Governor", "Senator", "Representative", "Reverend",
          "Honourable", "Father", "Mount", "Fort")  # never end a sentence: a name follows
# capitalised words that start a sentence far more often than they name a saint or a street
SENTENCE_STARTS = frozenset("""A An The He She It I We You They This That These Those There Then His Her Its Their
Our My Your But And So Yet Now When While After Before As If In On At Here Nobody Everyone Someone Nothing""".split())

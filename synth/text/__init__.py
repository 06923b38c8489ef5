"""Spoken-form text (layer 2): what a written sentence sounds like when read aloud.

It owns the normaliser (`normalize`: numbers, dates, times, currency, percentages,
abbreviations and Roman numerals written out as words) and the pronunciation lexicon
(`lexicon`: a user's respellings, applied after normalisation), both of which the
pipeline applies to a turn's text before synthesis when the config's `text:` section
asks for it. It knows nothing about models, audio, Ray or the output.
"""

"""The bad-input corpus: inputs a new user gets wrong, each with the one-line error it must give.

Every case asserts that the command exits 2 with one line on stderr that names the problem and the fix, no
traceback, and that its inputs (and any existing output) are byte-identical afterwards (:func:`digest`).
"""

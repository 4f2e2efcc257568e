"""Issue 14's disclosure control: count tables, the rules as data, suppression that holds.

Pure: values in, values out; no I/O, no clock (DESIGN.md). ``suppress.protect`` is the one entry
point; ``table`` and ``rules`` are the values it takes and returns.
"""

"""Pure signal functions: tensors/arrays in, numbers and small arrays out.

No I/O, no framework imports, no logging; deterministic given a seed. Each module documents
the formula of every signal it computes (see DESIGN.md, "Signal definitions").
"""

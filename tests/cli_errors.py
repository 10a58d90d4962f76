"""Checks shared by the CLI tests."""

from __future__ import annotations


def one_line_error(capsys, *parts):
    """The captured stderr is one line holding every one of ``parts``; returns it."""
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    for part in parts:
        assert part in err, err
    return err

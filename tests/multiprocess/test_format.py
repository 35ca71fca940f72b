"""The on-disk layout (``fastmetrics.multiprocess._format``): the cores agree
with it, its bytes are pinned, its names parse, its enum words decode."""

from __future__ import annotations

import _fmfile as fm

from fastmetrics.multiprocess import _format as fmt


def test_enum_words_of_both_versions_decode_to_index_and_wall_clock():
    """Version 2 stores ``index | stamp_ms << 16`` (65,536 states, good for
    millennia); version 1, still read, ``index | stamp_us << 12``."""
    assert (fmt.VERSION, fmt.STATE_BITS, fmt.MAX_STATES) == (2, 16, 65536)
    assert fmt.decode_word(1, fm.word(1, 4095, fm.NS_2024)) == (4095, fm.NS_2024)
    assert fmt.decode_word(2, fm.word(2, 65535, fm.NS_2100 + 999_999)) == (65535, fm.NS_2100)
    assert fmt.decode_word(2, 0) == (0, 0)

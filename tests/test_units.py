"""gcfork.units: one way to write a figure, for the report, explain and bench."""

from __future__ import annotations

import pytest

from gcfork.units import (
    MISSING,
    format_age,
    format_bytes,
    format_count,
    format_ms,
    format_percent,
    format_size,
    plural,
)

UNTRUSTED = (None, float("inf"), float("-inf"), float("nan"), 10**5000, True)


def test_a_missing_or_untrusted_figure_is_a_dash_everywhere() -> None:
    formatters = (format_bytes, format_size, format_percent, format_ms, format_age,
                  format_count)
    for fmt in formatters:
        for value in UNTRUSTED:
            assert fmt(value) == MISSING == "-", (fmt.__name__, value)  # type: ignore[arg-type]
    assert format_bytes(2.0**64) == format_count(10**19) == MISSING
    assert format_age(-5.0) == format_age(1e300) == MISSING


def test_figures_with_a_unit_have_one_decimal_and_counts_none() -> None:
    assert format_bytes(5 * 2**20) == "5.0 MiB"
    assert format_bytes(1234 * 2**20 + 2**19) == "1,234.5 MiB"
    assert format_bytes(2_500_000, "MB") == "2.5 MB"
    assert format_percent(85) == "85.0 %" and format_percent(69.44) == "69.4 %"
    assert format_ms(0.00042) == "0.4 ms" and format_ms(2) == "2,000.0 ms"
    assert format_count(1234567) == "1,234,567" and format_count(2.6) == "3"
    with pytest.raises(ValueError, match="'MiB' or 'MB', not 'KB'"):
        format_bytes(1, "KB")


def test_sizes_of_very_different_rows_scale_from_kib() -> None:
    assert format_size(0) == "0.0 KiB"
    assert format_size(512) == "0.5 KiB"
    assert format_size(4096) == "4.0 KiB"
    assert format_size(3 * 2**19) == "1.5 MiB"
    assert format_size(2**31) == "2.0 GiB"


def test_ages_and_plurals() -> None:
    assert [format_age(s) for s in (45, 302, 11040, 183600)] == ["45s", "5m02s", "3h04m",
                                                                 "2d03h"]
    assert [plural(n, "worker") for n in (0, 1, 2)] == ["0 workers", "1 worker", "2 workers"]
    assert plural(1, "process", "processes") == "1 process"
    assert plural(1500, "request") == "1,500 requests"

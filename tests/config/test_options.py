"""Option parsers and :func:`parse_options`."""

from __future__ import annotations

import attrs
from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from pypicloud_tx.config.options import (
    as_bool,
    as_int,
    as_list,
    as_positive_size,
    as_size,
    one_line,
    option,
    parse_options,
)
from pypicloud_tx.errors import ConfigError


@attrs.frozen
class Sample:
    """Options of an imaginary backend: one required, two with defaults, one dotted."""

    url: str = option()
    retries: int = option(as_int, default=3)
    verbose: bool = option(as_bool, default=False)
    ldap__url: str = option(default="")


class ParserTests(SynchronousTestCase):
    """The text -> value parsers."""

    def test_bool(self) -> None:
        """pyramid's spellings of true and false, any case; anything else is an error."""
        for text in ["true", "True", "YES", "on", "1", " y "]:
            self.assertIs(as_bool(text), True, text)
        for text in ["false", "No", "off", "0", ""]:
            self.assertIs(as_bool(text), False, text)
        self.assertRaises(ValueError, as_bool, "maybe")

    def test_list(self) -> None:
        """Words separated by whitespace, commas or lines."""
        self.assertEqual(as_list("\n  a\n  b, c d,,e "), ("a", "b", "c", "d", "e"))
        self.assertEqual(as_list(""), ())

    @given(
        st.integers(min_value=0, max_value=10**6),
        st.sampled_from(
            [
                ("", 1),
                ("b", 1),
                ("KB", 1024),
                ("k", 1024),
                ("MiB", 1024**2),
                ("gb", 1024**3),
                ("TB", 1024**4),
            ]
        ),
        st.sampled_from(["", " "]),
    )
    def test_size(self, number: int, unit: tuple[str, int], space: str) -> None:
        """A number with an optional unit is that many bytes, units being powers of 1024."""
        self.assertEqual(as_size(f"{number}{space}{unit[0]}"), number * unit[1])

    def test_bad_sizes(self) -> None:
        """Fractions, negative numbers, unknown units and zero (where refused) are errors."""
        for text in ["1.5GB", "-1", "10 PB", "GB", ""]:
            self.assertRaises(ValueError, as_size, text)
        self.assertRaises(ValueError, as_positive_size, "0KB")
        self.assertEqual(as_positive_size("1"), 1)

    def test_one_line(self) -> None:
        """Line breaks are folded into spaces."""
        self.assertEqual(one_line("a\n  b\r\nc"), "a b c")
        self.assertEqual(one_line("one  line"), "one  line")


class ParseOptionsTests(SynchronousTestCase):
    """parse_options fills a backend's Options class."""

    def test_values_and_defaults(self) -> None:
        """Given options are parsed; missing ones take their defaults."""
        self.assertEqual(
            parse_options(Sample, "db", {"url": "x", "retries": "5"}), Sample(url="x", retries=5)
        )

    def test_errors(self) -> None:
        """Missing, unknown and malformed options are named with their namespace."""
        for raw, expected in [
            ({}, "db.url: required option is missing"),
            (
                {"url": "x", "bogus": "1"},
                "db.bogus: unknown option (known options here: "
                "db.ldap.url, db.retries, db.url, db.verbose)",
            ),
            ({"url": "x", "retries": "many"}, "db.retries: 'many' is not a whole number"),
        ]:
            error = self.assertRaises(ConfigError, parse_options, Sample, "db", raw)
            self.assertEqual(error.message, expected)

    def test_dotted_names(self) -> None:
        """A field ``ldap__url`` is option ``ldap.url``; ``ldap_url`` (from an environment
        variable) reaches it too, and the dotted spelling wins when both are given."""
        self.assertEqual(
            parse_options(Sample, "auth", {"url": "x", "ldap.url": "a"}).ldap__url, "a"
        )
        self.assertEqual(
            parse_options(Sample, "auth", {"url": "x", "ldap_url": "b"}).ldap__url, "b"
        )
        both = {"url": "x", "ldap_url": "b", "ldap.url": "a"}
        self.assertEqual(parse_options(Sample, "auth", both).ldap__url, "a")

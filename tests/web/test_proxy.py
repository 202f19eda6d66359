"""Behind a reverse proxy: ``X-Forwarded-*`` headers, believed only from trusted proxies.

``StubTreq`` connects from ``127.0.0.1``, so ``pypi.trusted_proxies = 127.0.0.1`` makes the test
client a trusted proxy and ``10.0.0.0/8`` makes it an untrusted one.
"""

from __future__ import annotations

import ipaddress
import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address, UNIXAddress
from twisted.trial.unittest import SynchronousTestCase

from pypicloud_tx.config.loader import parse_settings
from pypicloud_tx.errors import ConfigError
from pypicloud_tx.web.proxy import (
    TrustedProxies,
    _prefix,
    behind_proxies,
    forwarded_client,
    forwarded_for,
    parse_forwarded,
    parse_ip,
)
from tests.web.harness import RouteTestCase

TRUSTED = {"pypi.trusted_proxies": "127.0.0.1"}
PUBLIC = {
    b"X-Forwarded-Proto": [b"https"],
    b"X-Forwarded-Host": [b"pypi.example.com"],
}


def hdrs(**values: str) -> dict[bytes, list[bytes]]:
    """``X_Forwarded_Proto="https"`` -> ``{b"X-Forwarded-Proto": [b"https"]}``."""
    return {k.replace("_", "-").encode(): [v.encode()] for k, v in values.items()}


class ProxyCase(RouteTestCase):
    def urls(self, headers: dict[bytes, list[bytes]]) -> list[str]:
        """The download URLs of the PyPI JSON API's answer for ``demo``."""
        answer, data = self.request_json("/pypi/demo/json", headers)
        self.assertEqual(answer.code, 200)
        return [u["url"] for u in data["urls"]]

    def request_json(self, path: str, headers: dict[bytes, list[bytes]]) -> tuple[Any, Any]:
        response, body = self.request(
            "GET", path, headers={**headers, b"Accept": [b"application/json"]}
        )
        return response, json.loads(body)

    def fail_logins(self, headers: list[dict[bytes, list[bytes]]]) -> list[int]:
        """Wrong passwords for users u0..u6 (nine each: under the per-user limit), through the
        proxy with ``headers`` (cycled); the status codes."""
        codes = []
        for attempt in range(63):
            response, _ = self.request(
                "GET",
                "/simple/",
                user=f"u{attempt % 7}",
                password="wrong",
                headers=headers[attempt % len(headers)],
            )
            codes.append(response.code)
        return codes


class ProxyRouteTests(ProxyCase):
    def setUp(self) -> None:
        self.make_index(TRUSTED)
        self.upload(*self.wheel("demo", "1.0"))

    def test_untrusted_peer_headers_ignored(self) -> None:
        """From a peer that is not a trusted proxy, X-Forwarded-* change nothing: the JSON
        API's URLs carry the Host the client sent."""
        self.make_index({"pypi.trusted_proxies": "10.0.0.0/8"})
        self.upload(*self.wheel("demo", "1.0"))
        headers = {**PUBLIC, **hdrs(X_Forwarded_Prefix="/pypi")}
        for url in self.urls(headers):
            self.assertTrue(url.startswith("http://index.test/"), url)

    def test_no_trusted_proxies_by_default(self) -> None:
        """Without pypi.trusted_proxies, nobody is trusted, not even 127.0.0.1."""
        self.make_index()
        self.upload(*self.wheel("demo", "1.0"))
        for url in self.urls(PUBLIC):
            self.assertTrue(url.startswith("http://index.test/"), url)

    def test_scheme_and_host(self) -> None:
        """From a trusted proxy, X-Forwarded-Proto and X-Forwarded-Host make the public URL."""
        urls = self.urls(PUBLIC)
        self.assertTrue(urls)
        for url in urls:
            self.assertTrue(url.startswith("https://pypi.example.com/"), url)

    def test_proto_only_keeps_host_header(self) -> None:
        """X-Forwarded-Proto alone: the Host the proxy passed on, with the public scheme."""
        for url in self.urls(hdrs(X_Forwarded_Proto="https")):
            self.assertTrue(url.startswith("https://index.test/"), url)

    def test_ports(self) -> None:
        """A port in X-Forwarded-Host, or X-Forwarded-Port, is kept; a default port is not
        written."""
        cases = [
            (hdrs(X_Forwarded_Proto="https", X_Forwarded_Host="pypi.test:8443"), "pypi.test:8443"),
            (
                hdrs(
                    X_Forwarded_Proto="https", X_Forwarded_Host="pypi.test", X_Forwarded_Port="9443"
                ),
                "pypi.test:9443",
            ),
            (hdrs(X_Forwarded_Proto="https", X_Forwarded_Port="443"), "index.test"),
            (
                hdrs(X_Forwarded_Proto="http", X_Forwarded_Host="[2001:db8::1]:81"),
                "[2001:db8::1]:81",
            ),
        ]
        for headers, netloc in cases:
            for url in self.urls(headers):
                scheme = headers[b"X-Forwarded-Proto"][0].decode()
                self.assertTrue(url.startswith(f"{scheme}://{netloc}/"), (headers, url))

    def test_rightmost_value_wins(self) -> None:
        """Where a proxy appended to a header, the rightmost value (the trusted proxy's) is
        used; an invalid value is ignored."""
        headers = hdrs(
            X_Forwarded_Proto="http, https",
            X_Forwarded_Host="evil.test, pypi.example.com",
        )
        for url in self.urls(headers):
            self.assertTrue(url.startswith("https://pypi.example.com/"), url)
        for url in self.urls(hdrs(X_Forwarded_Proto="gopher", X_Forwarded_Host="a b/c")):
            self.assertTrue(url.startswith("http://index.test/"), url)

    def test_prefix_in_absolute_urls(self) -> None:
        """X-Forwarded-Prefix goes into every absolute URL: the PyPI JSON API and
        /api/package/."""
        headers = {**PUBLIC, **hdrs(X_Forwarded_Prefix="/pypi/")}
        for url in self.urls(headers):
            self.assertTrue(url.startswith("https://pypi.example.com/pypi/"), url)
        response, data = self.request_json("/api/package/demo/", headers)
        self.assertEqual(response.code, 200)
        for package in data["packages"]:
            self.assertTrue(
                package["url"].startswith("https://pypi.example.com/pypi/api/package/demo/"),
                package["url"],
            )

    def test_prefix_in_redirects(self) -> None:
        """Redirects to a path of the index get the prefix: non-canonical names, missing
        slashes, and the web interface's login redirect."""
        headers = hdrs(X_Forwarded_Prefix="/pypi")
        for path, location in [
            ("/simple/Demo/", "/pypi/simple/demo/"),
            ("/simple", "/pypi/simple/"),
            ("/simple/demo", "/pypi/simple/demo/"),
            ("/api/package/Demo", "/pypi/api/package/demo/"),
        ]:
            response, _ = self.request("GET", path, headers=headers)
            self.assertIn(response.code, (301, 302, 303, 307, 308), path)
            self.assertEqual(response.headers.getRawHeaders(b"location"), [location.encode()], path)
        response, _ = self.request("GET", "/account", headers=headers)
        self.assertEqual(response.code, 303)
        (location,) = response.headers.getRawHeaders(b"location")
        self.assertTrue(location.startswith(b"/pypi/login?"), location)

    def test_prefix_leaves_other_locations(self) -> None:
        """Without a prefix, Location is untouched; a bad prefix is ignored."""
        for prefix in ["//evil.test", "/a/../b", "/a b", "pypi", '/a"b', "/./x", "/a<b>"]:
            response, _ = self.request(
                "GET", "/simple/Demo/", headers={b"X-Forwarded-Prefix": [prefix.encode()]}
            )
            self.assertEqual(
                response.headers.getRawHeaders(b"location"), [b"/simple/demo/"], prefix
            )

    def test_pages_work_under_a_prefix(self) -> None:
        """The simple pages answer the same under a prefix (their links are relative)."""
        plain, plain_body = self.request("GET", "/simple/demo/")
        prefixed, prefixed_body = self.request(
            "GET", "/simple/demo/", headers=hdrs(X_Forwarded_Prefix="/pypi")
        )
        self.assertEqual((plain.code, prefixed.code), (200, 200))
        self.assertEqual(plain_body, prefixed_body)
        self.assertIn(b'href="../../', plain_body)

    def test_client_address_for_throttling(self) -> None:
        """Login throttling counts the client X-Forwarded-For names, not the proxy: one
        client's failures do not lock out another behind the same proxy."""
        users = {f"user.u{i}": f"u{i}pw" for i in range(7)}
        self.make_index({**TRUSTED, **users, "user.dave": "davepw"})
        codes = self.fail_logins([hdrs(X_Forwarded_For="203.0.113.7")])
        self.assertIn(429, codes, "the client's address was never throttled")
        response, _ = self.request(
            "GET", "/simple/", user="dave", headers=hdrs(X_Forwarded_For="203.0.113.7")
        )
        self.assertEqual(response.code, 429)
        response, _ = self.request(
            "GET", "/simple/", user="dave", headers=hdrs(X_Forwarded_For="198.51.100.9")
        )
        self.assertEqual(response.code, 200)

    def test_untrusted_forwarded_for_ignored(self) -> None:
        """From an untrusted peer, X-Forwarded-For cannot dodge throttling: whatever address
        it names, the failures count against the peer."""
        users = {f"user.u{i}": f"u{i}pw" for i in range(7)}
        self.make_index({"pypi.trusted_proxies": "10.0.0.0/8", **users})
        codes = self.fail_logins([hdrs(X_Forwarded_For=f"198.51.100.{i}") for i in range(63)])
        self.assertIn(429, codes)


class ForwardedHeaderRouteTests(ProxyCase):
    """``pypi.proxy_headers = forwarded``: the facts come from RFC 7239's ``Forwarded``, and
    ``X-Forwarded-For/Proto/Host/Port`` (which a proxy writing ``Forwarded`` may pass through
    from the client) count for nothing."""

    def setUp(self) -> None:
        self.make_index({**TRUSTED, "pypi.proxy_headers": "forwarded"})
        self.upload(*self.wheel("demo", "1.0"))

    def test_scheme_and_host(self) -> None:
        """``proto`` and ``host`` of the rightmost element (the trusted proxy's) make the
        public URL, a port in ``host`` included (quoted, as RFC 7239 wants, or bare, as
        hand-written proxy configurations send it); X-Forwarded-* are ignored."""
        cases = [
            ('for=198.51.100.1;proto=https;host="pypi.example.com"', "https://pypi.example.com/"),
            ("proto=https;host=pypi.test:8443", "https://pypi.test:8443/"),
            ('proto=https;host="pypi.test:9443"', "https://pypi.test:9443/"),
            ('host="[2001:db8::1]:81";proto=http', "http://[2001:db8::1]:81/"),
            ("proto=https, for=10.0.0.1;proto=http;host=inner.test", "http://inner.test/"),
        ]
        for value, start in cases:
            headers = {b"Forwarded": [value.encode()], **PUBLIC}
            for url in self.urls(headers):
                self.assertTrue(url.startswith(start), (value, url))

    def test_x_forwarded_ignored(self) -> None:
        """Without ``Forwarded`` the Host the proxy passed on counts, whatever X-Forwarded-*
        say."""
        for url in self.urls(PUBLIC):
            self.assertTrue(url.startswith("http://index.test/"), url)

    def test_garbage_ignored(self) -> None:
        """An element that does not parse tells nothing: the request stays as it came."""
        for value in ("proto=https;host=a b", "proto=gopher;host=x.test/evil", "=;;"):
            for url in self.urls({b"Forwarded": [value.encode()]}):
                self.assertTrue(url.startswith("http://index.test/"), (value, url))

    def test_prefix_still_from_x_forwarded_prefix(self) -> None:
        """RFC 7239 has no prefix: X-Forwarded-Prefix still names it."""
        headers = {b"Forwarded": [b"proto=https;host=pypi.example.com"]}
        headers.update(hdrs(X_Forwarded_Prefix="/pypi"))
        for url in self.urls(headers):
            self.assertTrue(url.startswith("https://pypi.example.com/pypi/"), url)

    def test_client_address_for_throttling(self) -> None:
        """Login throttling counts the client named by ``for``; X-Forwarded-For is not
        believed."""
        users = {f"user.u{i}": f"u{i}pw" for i in range(7)}
        self.make_index(
            {**TRUSTED, "pypi.proxy_headers": "forwarded", **users, "user.dave": "davepw"}
        )
        codes = self.fail_logins([{b"Forwarded": [b'for="203.0.113.7:5555"']}])
        self.assertIn(429, codes, "the client's address was never throttled")
        blocked, _ = self.request(
            "GET", "/simple/", user="dave", headers={b"Forwarded": [b"for=203.0.113.7"]}
        )
        self.assertEqual(blocked.code, 429)
        # The same client cannot dodge that with X-Forwarded-For...
        dodged, _ = self.request(
            "GET",
            "/simple/",
            user="dave",
            headers={
                b"Forwarded": [b"for=203.0.113.7"],
                **hdrs(X_Forwarded_For="198.51.100.9"),
            },
        )
        self.assertEqual(dodged.code, 429)
        # ...while another client behind the same proxy is not locked out.
        other, _ = self.request(
            "GET", "/simple/", user="dave", headers={b"Forwarded": [b"for=198.51.100.9"]}
        )
        self.assertEqual(other.code, 200)


class ForwardedHeaderTests(SynchronousTestCase):
    proxies = TrustedProxies.from_words(["10.0.0.0/8"], "forwarded")

    def test_parse(self) -> None:
        """Elements split on commas (also across lines), pairs on semicolons, names
        case-insensitive, quoted strings unquoted (RFC 7239 section 4 and its examples)."""
        self.assertEqual(
            parse_forwarded(
                [
                    b'for="_gazonk"',
                    b'For="[2001:db8:cafe::17]:4711"',
                    b"for=192.0.2.60;proto=http;by=203.0.113.43",
                    b'for=192.0.2.43, for=198.51.100.17;host="a\\"b"',
                ]
            ),
            [
                {"for": "_gazonk"},
                {"for": "[2001:db8:cafe::17]:4711"},
                {"for": "192.0.2.60", "proto": "http", "by": "203.0.113.43"},
                {"for": "192.0.2.43"},
                {"for": "198.51.100.17", "host": 'a"b'},
            ],
        )

    def test_broken_elements_count_as_unknown_hops(self) -> None:
        """An element that does not parse (or names a parameter twice) is an empty hop; the
        elements around it are still read."""
        self.assertEqual(
            parse_forwarded([b"for=1.1.1.1, garbage, proto=https;proto=http, for=2.2.2.2;x"]),
            [{"for": "1.1.1.1"}, {}, {}, {}],
        )
        self.assertEqual(parse_forwarded([b"for=1.1.1.1;;proto=http"]), [{}])

    def test_client(self) -> None:
        """The rightmost ``for`` that is not a trusted proxy; ``unknown``, obfuscated names
        and broken elements stop the walk, as garbage does in X-Forwarded-For."""

        def client(*values: str) -> str | None:
            found = forwarded_for(parse_forwarded([v.encode() for v in values]), self.proxies)
            return None if found is None else str(found)

        self.assertEqual(client('for=1.1.1.1, for="2.2.2.2:80", for=10.0.0.5'), "2.2.2.2")
        self.assertEqual(client('for="[2001:db8::7]:4711"'), "2001:db8::7")
        self.assertEqual(client("for=2001:db8::8"), "2001:db8::8")
        self.assertEqual(client("for=1.1.1.1, for=unknown, for=10.0.0.5"), "10.0.0.5")
        self.assertIsNone(client("for=1.1.1.1, for=_hidden"))
        self.assertIsNone(client("for=1.1.1.1, by=10.0.0.1"))


class ForwardedForTests(SynchronousTestCase):
    proxies = TrustedProxies.from_words(["10.0.0.0/8", "::1"])

    def client(self, *values: str) -> str | None:
        found = forwarded_client([v.encode() for v in values], self.proxies)
        return None if found is None else str(found)

    def test_rightmost_untrusted(self) -> None:
        """The client is the rightmost hop that is not a trusted proxy; hops left of it
        (which the client itself may have written) are not believed."""
        self.assertEqual(self.client("1.1.1.1, 2.2.2.2, 10.0.0.5"), "2.2.2.2")
        self.assertEqual(self.client("1.1.1.1", "2.2.2.2, 10.0.0.5, 10.1.1.1"), "2.2.2.2")
        self.assertEqual(self.client("2001:db8::7, ::1"), "2001:db8::7")

    def test_all_trusted(self) -> None:
        """Every hop trusted: the leftmost is the client."""
        self.assertEqual(self.client("10.0.0.9, 10.0.0.5"), "10.0.0.9")

    def test_garbage(self) -> None:
        """A hop that is not an address stops the walk: the last address before it counts;
        garbage at the right end gives no client (the peer stays)."""
        self.assertEqual(self.client("1.1.1.1, unknown, 10.0.0.5"), "10.0.0.5")
        self.assertIsNone(self.client("1.1.1.1, unknown"))
        self.assertIsNone(self.client(""))

    def test_forms(self) -> None:
        """Ports and brackets are accepted; IPv4-mapped IPv6 is IPv4."""
        self.assertEqual(str(parse_ip("1.2.3.4:5678")), "1.2.3.4")
        self.assertEqual(str(parse_ip("[2001:db8::1]:443")), "2001:db8::1")
        self.assertEqual(str(parse_ip("::ffff:10.0.0.1")), "10.0.0.1")
        self.assertIsNone(parse_ip("[2001:db8::1"))
        self.assertIsNone(parse_ip("example.com"))

    @given(st.lists(st.ip_addresses(), min_size=1, max_size=6))
    def test_never_a_trusted_hop_unless_all_are(self, hops: list[Any]) -> None:
        """Whatever the chain, the client found is one of its hops, and it is a trusted
        proxy only when every hop is."""
        values = [", ".join(str(h) for h in hops).encode()]
        found = forwarded_client(values, self.proxies)
        normal = [h.ipv4_mapped or h if h.version == 6 else h for h in hops]
        self.assertIn(found, normal)
        assert found is not None
        if self.proxies.trusts_ip(found):
            self.assertTrue(all(self.proxies.trusts_ip(h) for h in normal))


class TrustedProxiesTests(SynchronousTestCase):
    def test_trusts(self) -> None:
        """Addresses in the networks are trusted; a Unix-socket peer only with ``unix``."""
        proxies = TrustedProxies.from_words(["192.0.2.0/24", "2001:db8::1"])
        self.assertTrue(proxies.trusts(IPv4Address("TCP", "192.0.2.200", 1)))
        self.assertFalse(proxies.trusts(IPv4Address("TCP", "192.0.3.1", 1)))
        self.assertFalse(proxies.trusts(UNIXAddress(b"/run/x.sock")))
        self.assertTrue(TrustedProxies.from_words(["unix"]).trusts(UNIXAddress(b"/run/x.sock")))
        self.assertFalse(TrustedProxies.from_words([]))

    def test_unwrapped_without_proxies(self) -> None:
        """With no trusted proxy the application's resource is used as it is (no cost)."""
        sentinel: Any = object()
        self.assertIs(behind_proxies(sentinel, ()), sentinel)

    def test_prefix_values(self) -> None:
        """A prefix is kept without its trailing slash; unsafe ones are refused."""
        self.assertEqual(_prefix("/pypi/"), "/pypi")
        self.assertEqual(_prefix("/a/b-c_d.e"), "/a/b-c_d.e")
        for bad in ["", "/", "pypi", "//x", "/a//b", "/a/..", "/a b", '/a"b', "/a<b"]:
            self.assertEqual(_prefix(bad), "", bad)


class OptionTests(SynchronousTestCase):
    def settings(self, **options: str) -> Any:
        return parse_settings({"pypi.storage": "memory", "pypi.db": "memory", **options})

    def test_trusted_proxies(self) -> None:
        """pypi.trusted_proxies takes addresses, networks and ``unix``, normalised; the default
        is none."""
        self.assertEqual(self.settings().trusted_proxies, ())
        settings = self.settings(**{"pypi.trusted_proxies": "127.0.0.1, 10.1.2.3/8\n::1 unix"})
        self.assertEqual(
            settings.trusted_proxies, ("127.0.0.1/32", "10.0.0.0/8", "::1/128", "unix")
        )
        for word in settings.trusted_proxies:
            if word != "unix":
                ipaddress.ip_network(word)

    def test_bad_trusted_proxy(self) -> None:
        """A word that is not an address is an error naming the option and the word."""
        error = self.assertRaises(
            ConfigError, self.settings, **{"pypi.trusted_proxies": "10.0.0.1 proxy.example"}
        )
        self.assertIn("pypi.trusted_proxies", error.message)
        self.assertIn("proxy.example", error.message)

    def test_proxy_headers(self) -> None:
        """pypi.proxy_headers: x-forwarded by default, or forwarded; anything else is an error
        that names both."""
        self.assertEqual(self.settings().proxy_headers, "x-forwarded")
        self.assertEqual(
            self.settings(**{"pypi.proxy_headers": " Forwarded "}).proxy_headers, "forwarded"
        )
        error = self.assertRaises(ConfigError, self.settings, **{"pypi.proxy_headers": "both"})
        self.assertIn("pypi.proxy_headers", error.message)
        self.assertIn("x-forwarded", error.message)

    def test_shutdown_grace(self) -> None:
        """pypi.shutdown_grace: seconds, 20 by default, 0 allowed, negative refused."""
        self.assertEqual(self.settings().shutdown_grace, 20.0)
        self.assertEqual(self.settings(**{"pypi.shutdown_grace": "0"}).shutdown_grace, 0.0)
        self.assertEqual(self.settings(**{"pypi.shutdown_grace": "2.5"}).shutdown_grace, 2.5)
        error = self.assertRaises(ConfigError, self.settings, **{"pypi.shutdown_grace": "-1"})
        self.assertIn("pypi.shutdown_grace", error.message)

"""XML-RPC ``search`` on ``POST /pypi`` and ``/RPC2``, parsed safely."""

from __future__ import annotations

import xmlrpc.client

from tests.web.harness import RouteTestCase, snapshot


class SearchTests(RouteTestCase):
    def setUp(self) -> None:
        self.make_index()
        for name, version, summary in (
            ("flywheel", "0.1", "Object mapper for DynamoDB"),
            ("flywheel", "0.2", "Object mapper for DynamoDB"),
            ("pyramid-duh", "1.0", "Useful utilities for pyramid"),
            ("dynamo3", "1.0", "Python 3 DynamoDB wrapper"),
        ):
            response, body = self.upload(*self.wheel(name, version, summary=summary))
            self.assertEqual(response.code, 200, body)

    def search(
        self,
        criteria: dict,
        operator: str | None = None,
        path: str = "/pypi",
        user: str | None = None,
    ) -> list[dict]:
        params = (criteria,) if operator is None else (criteria, operator)
        body = xmlrpc.client.dumps(params, "search").encode()
        response, answer = self.request(
            "POST", path, user, headers={b"Content-Type": [b"text/xml"]}, data=body
        )
        self.assertEqual(response.code, 200, answer)
        self.assertEqual(response.headers.getRawHeaders(b"content-type"), [b"text/xml"])
        (results,), _method = xmlrpc.client.loads(answer)
        return results  # type: ignore[no-any-return]

    def test_or(self) -> None:
        """``or``: any field matching; each project once, at its newest version, with exactly
        name, version, summary and _pypi_ordering."""
        results = self.search({"name": ["flywheel"], "summary": ["pyramid"]}, "or")
        self.assertEqual(sorted(r["name"] for r in results), ["flywheel", "pyramid-duh"])
        flywheel = next(r for r in results if r["name"] == "flywheel")
        self.assertEqual(
            flywheel,
            {
                "name": "flywheel",
                "version": "0.2",
                "summary": "Object mapper for DynamoDB",
                "_pypi_ordering": 0,
            },
        )

    def test_and(self) -> None:
        """``and``: every field must match one of its terms."""
        results = self.search({"name": ["dynamo", "flywheel"], "summary": ["wrapper"]}, "and")
        self.assertEqual([r["name"] for r in results], ["dynamo3"])

    def test_default_operator_and(self) -> None:
        """Without an operator the search is ``and``."""
        results = self.search({"name": ["flywheel"], "summary": ["pyramid"]})
        self.assertEqual(results, [])

    def test_rpc2_and_string_terms(self) -> None:
        """/RPC2 answers too, and a single string term works like a one-item list."""
        results = self.search({"summary": "dynamodb"}, "or", path="/RPC2")
        self.assertEqual(sorted(r["name"] for r in results), ["dynamo3", "flywheel"])

    def test_read_filtering(self) -> None:
        """Search returns only projects the caller may read."""
        self.make_index({"pypi.default_read": "authenticated"})
        self.upload(*self.wheel("flywheel", "0.1", summary="x"))
        self.assertEqual(
            self.search({"name": ["flywheel"]}, "or", user="carol")[0]["name"], "flywheel"
        )
        self.assertEqual(self.search({"name": ["flywheel"]}, "or"), [])

    def test_bad_operator(self) -> None:
        """An operator other than and/or is a 400, not a crash."""
        body = xmlrpc.client.dumps(({"name": ["x"]}, "xor"), "search").encode()
        response, answer = self.request(
            "POST", "/pypi", headers={b"Content-Type": [b"text/xml"]}, data=body
        )
        self.assertEqual(response.code, 400, answer)

    def test_other_method_is_a_fault(self) -> None:
        """Methods other than search answer an XML-RPC fault naming the method."""
        body = xmlrpc.client.dumps((), "list_packages").encode()
        response, answer = self.request(
            "POST", "/RPC2", headers={b"Content-Type": [b"text/xml"]}, data=body
        )
        self.assertEqual(response.code, 200)
        with self.assertRaises(xmlrpc.client.Fault) as caught:
            xmlrpc.client.loads(answer)
        self.assertIn("list_packages", caught.exception.faultString)

    def test_dtd_and_entities_refused(self) -> None:
        """Bodies with a DTD or entity declarations (billion laughs, external entities) are
        refused with 400 and never expanded."""
        laughs = (
            b'<?xml version="1.0"?>\n<!DOCTYPE lolz [<!ENTITY lol "lol">'
            b'<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]>'
            b"<methodCall><methodName>search</methodName><params><param><value>"
            b"<string>&lol2;</string></value></param></params></methodCall>"
        )
        external = (
            b'<?xml version="1.0"?><!doctype x [<!entity e SYSTEM "file:///etc/passwd">]>'
            b"<methodCall><methodName>&e;</methodName></methodCall>"
        )
        before = snapshot(self.ix)
        for body in (laughs, external):
            response, answer = self.request(
                "POST", "/pypi", headers={b"Content-Type": [b"text/xml"]}, data=body
            )
            self.assertEqual(response.code, 400)
            self.assertNotIn(b"lollol", answer)
            self.assertNotIn(b"root:", answer)
        self.assertEqual(snapshot(self.ix), before)

    def test_dtd_in_utf16_refused(self) -> None:
        """A DTD hidden in a UTF-16 body (which a byte search would miss) is refused too."""
        laughs = (
            '<?xml version="1.0" encoding="UTF-16"?>\n<!DOCTYPE x [<!ENTITY a "aaaaaaaaaa">'
            '<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]>'
            "<methodCall><methodName>search</methodName><params><param><value>"
            "<struct><member><name>name</name><value><string>&b;</string></value></member>"
            "</struct></value></param></params></methodCall>"
        ).encode("utf-16")
        response, answer = self.request(
            "POST", "/pypi", headers={b"Content-Type": [b"text/xml"]}, data=laughs
        )
        self.assertEqual(response.code, 400, answer)
        self.assertIn(b"DTD", answer)

    def test_utf16_search_without_dtd(self) -> None:
        """A plain UTF-16 XML-RPC search (no DTD) still works."""
        body = xmlrpc.client.dumps(({"name": ["flywheel"]}, "or"), "search", encoding="utf-16")
        response, answer = self.request(
            "POST", "/pypi", headers={b"Content-Type": [b"text/xml"]}, data=body.encode("utf-16")
        )
        self.assertEqual(response.code, 200, answer)
        (results,), _ = xmlrpc.client.loads(answer)
        self.assertEqual([r["name"] for r in results], ["flywheel"])

    def test_not_xml(self) -> None:
        """A body that is not XML-RPC is a 400 with a message."""
        response, answer = self.request(
            "POST", "/RPC2", headers={b"Content-Type": [b"text/xml"]}, data=b"<not-xmlrpc"
        )
        self.assertEqual(response.code, 400)
        self.assertIn(b"XML-RPC", answer)

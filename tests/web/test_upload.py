"""Uploads through every upload URL, as twine, uv and poetry send them, and every refusal."""

from __future__ import annotations

import base64
import hashlib
import json

from tests.distfactory import encode_upload, twine_fields
from tests.web.harness import RouteTestCase, snapshot


def b64(digest: bytes) -> str:
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


class UploadTests(RouteTestCase):
    def setUp(self) -> None:
        self.make_index()

    def assert_stored(self, filename: str, data: bytes) -> None:
        response, body = self.request("GET", f"/api/package/{filename.split('-')[0]}/{filename}")
        self.assertEqual(response.code, 200)
        self.assertEqual(body, data)

    def test_every_upload_url(self) -> None:
        """POST to /, /simple/, /simple, /pypi/, /pypi, /legacy/, /legacy stores the file (200)."""
        paths = ["/", "/simple/", "/simple", "/pypi/", "/pypi", "/legacy/", "/legacy"]
        for i, path in enumerate(paths):
            filename, data = self.wheel("demo", f"1.{i}")
            response, body = self.upload(filename, data, path=path)
            self.assertEqual(response.code, 200, (path, body))
            self.assert_stored(filename, data)
        stored, _names, cached = snapshot(self.ix)
        self.assertEqual(len(stored), len(paths))
        self.assertEqual(stored, cached)

    def test_api_package_upload(self) -> None:
        """POST /api/package/<name>/<filename> with just a ``content`` part stores the file."""
        filename, data = self.sdist("demo", "1.0")
        content_type, body = encode_upload([], (filename, data))
        response, answer = self.request(
            "POST",
            f"/api/package/demo/{filename}",
            "bob",
            headers={b"Content-Type": [content_type.encode()]},
            data=body,
        )
        self.assertEqual(response.code, 200, answer)
        self.assert_stored(filename, data)

    def test_api_package_upload_disagreeing_url(self) -> None:
        """/api/package/<name>/<filename> refuses (400) a file other than the URL names."""
        filename, data = self.sdist("demo", "1.0")
        content_type, body = encode_upload([], (filename, data))
        before = snapshot(self.ix)
        for path in (f"/api/package/other/{filename}", "/api/package/demo/demo-2.0.tar.gz"):
            response, _answer = self.request(
                "POST", path, "bob", headers={b"Content-Type": [content_type.encode()]}, data=body
            )
            self.assertEqual(response.code, 400, path)
            self.assertEqual(snapshot(self.ix), before)

    def test_repeated_fields_kept(self) -> None:
        """twine's repeated ``classifiers``/``requires_dist`` all reach /pypi/<name>/json."""
        classifiers = [
            "Programming Language :: Python :: 3",
            "License :: OSI Approved :: MIT License",
        ]
        requires = ["attrs>=20", "requests; extra == 'http'"]
        filename, data = self.wheel("demo", "1.0", classifiers=classifiers, requires_dist=requires)
        fields = twine_fields(
            filename,
            data,
            "demo",
            "1.0",
            classifiers=classifiers,
            requires_dist=requires,
            summary="A demo",
        )
        response, body = self.upload(filename, data, fields=fields)
        self.assertEqual(response.code, 200, body)
        _, doc = self.get_json("/pypi/demo/json")
        self.assertEqual(doc["info"]["classifiers"], classifiers)
        self.assertEqual(doc["info"]["requires_dist"], requires)

    def test_attestations_and_signature_tolerated(self) -> None:
        """``attestations`` (JSON) and a ``gpg_signature`` file part do not make an upload fail."""
        filename, data = self.wheel("demo", "1.0")
        fields = twine_fields(
            filename, data, "demo", "1.0", attestations=json.dumps([{"version": 1, "envelope": {}}])
        )
        content_type, body = encode_upload(
            fields,
            (filename, data),
            extra_files=[
                ("gpg_signature", filename + ".asc", b"-----BEGIN PGP SIGNATURE-----\n\xff")
            ],
        )
        response, answer = self.request(
            "POST", "/simple/", "bob", headers={b"Content-Type": [content_type.encode()]}, data=body
        )
        self.assertEqual(response.code, 200, answer)
        self.assert_stored(filename, data)

    def test_digests_in_base64_accepted(self) -> None:
        """Digests sent as urlsafe base64 (uv) are accepted like hex ones."""
        filename, data = self.wheel("demo", "1.0")
        fields = [
            (":action", "file_upload"),
            ("protocol_version", "1"),
            ("name", "demo"),
            ("version", "1.0"),
            ("filetype", "bdist_wheel"),
            ("pyversion", "py3"),
            ("sha256_digest", b64(hashlib.sha256(data).digest())),
            ("blake2_256_digest", b64(hashlib.blake2b(data, digest_size=32).digest())),
        ]
        response, body = self.upload(filename, data, fields=fields)
        self.assertEqual(response.code, 200, body)

    def test_no_digests_required(self) -> None:
        """No digest field is required."""
        filename, data = self.sdist("demo", "1.0")
        response, body = self.upload(
            filename,
            data,
            fields=[(":action", "file_upload"), ("name", "demo"), ("version", "1.0")],
        )
        self.assertEqual(response.code, 200, body)

    def test_duplicate_409(self) -> None:
        """A second upload of an existing filename is 409 "already exists"; the first bytes stay."""
        filename, data = self.wheel("demo", "1.0", summary="first")
        self.assertEqual(self.upload(filename, data)[0].code, 200)
        _, other = self.wheel("demo", "1.0", summary="second")
        self.assertNotEqual(other, data)
        before = snapshot(self.ix)
        response, body = self.upload(filename, other)
        self.assertEqual(response.code, 409)
        self.assertIn(b"already exists", body)
        self.assertEqual(snapshot(self.ix), before)
        self.assert_stored(filename, data)

    def test_duplicate_same_bytes_409(self) -> None:
        """Re-uploading identical bytes of a listed file is also 409 (twine --skip-existing
        relies on it)."""
        filename, data = self.wheel("demo", "1.0")
        self.assertEqual(self.upload(filename, data)[0].code, 200)
        response, body = self.upload(filename, data)
        self.assertEqual(response.code, 409)
        self.assertIn(b"already exists", body)

    def test_overwrite_allowed(self) -> None:
        """With ``pypi.allow_overwrite = true`` a second upload replaces the file everywhere."""
        self.make_index({"pypi.allow_overwrite": "true"})
        filename, data = self.wheel("demo", "1.0", summary="first")
        _, other = self.wheel("demo", "1.0", summary="second")
        self.assertEqual(self.upload(filename, data)[0].code, 200)
        response, body = self.upload(filename, other)
        self.assertEqual(response.code, 200, body)
        self.assert_stored(filename, other)
        stored, _, cached = snapshot(self.ix)
        self.assertEqual(stored, [(filename, hashlib.sha256(other).hexdigest())])
        self.assertEqual(cached, stored)

    def test_anonymous_401_with_realm(self) -> None:
        """An anonymous upload without the right is 401 with ``WWW-Authenticate: Basic
        realm="<pypi.realm>"``, and nothing is stored."""
        self.make_index({"pypi.realm": "My Index"})
        response, _body = self.upload(*self.wheel("demo", "1.0"), user=None)
        self.assertEqual(response.code, 401)
        self.assertEqual(
            response.headers.getRawHeaders(b"www-authenticate"), [b'Basic realm="My Index"']
        )
        self.assertEqual(snapshot(self.ix), ([], [], []))

    def test_authenticated_without_right_403(self) -> None:
        """A logged-in user without write permission gets 403 (no WWW-Authenticate)."""
        self.make_index({"pypi.default_write": "devs"})
        response, _body = self.upload(*self.wheel("demo", "1.0"), user="carol")
        self.assertEqual(response.code, 403)
        self.assertIsNone(response.headers.getRawHeaders(b"www-authenticate"))
        self.assertEqual(snapshot(self.ix), ([], [], []))
        self.assertEqual(self.upload(*self.wheel("demo", "1.0"), user="bob")[0].code, 200)

    def test_token_credentials(self) -> None:
        """``__token__`` with an unknown token is refused with 401, never treated as anonymous."""
        response, _ = self.upload(
            *self.wheel("demo", "1.0"), user="__token__", password="pypi-nope"
        )
        self.assertEqual(response.code, 401)


class BadUploadTests(RouteTestCase):
    """Bad input: 400 with a message saying what is wrong, and storage and cache unchanged."""

    def setUp(self) -> None:
        self.make_index({"pypi.max_upload_size": "100000"})
        existing = self.wheel("demo", "0.1")
        self.assertEqual(self.upload(*existing)[0].code, 200)
        self.before = snapshot(self.ix)

    def assert_refused(self, response: object, body: bytes, *words: str, status: int = 400) -> None:
        self.assertEqual(response.code, status, body)  # type: ignore[attr-defined]
        text = body.decode("utf-8", "replace").lower()
        for word in words:
            self.assertIn(word.lower(), text)
        self.assertNotIn("traceback", text)
        self.assertEqual(snapshot(self.ix), self.before)

    def post(self, content_type: str, body: bytes, path: str = "/simple/") -> tuple[object, bytes]:
        return self.request(
            "POST", path, "bob", headers={b"Content-Type": [content_type.encode()]}, data=body
        )  # type: ignore[no-any-return]

    def test_malformed_multipart(self) -> None:
        """A body that is not multipart under the declared boundary is refused."""
        self.assert_refused(
            *self.post("multipart/form-data; boundary=xyz", b"garbage\r\n"), "multipart"
        )

    def test_not_multipart(self) -> None:
        """A urlencoded body on an upload URL is refused, naming multipart/form-data."""
        self.assert_refused(
            *self.post("application/x-www-form-urlencoded", b":action=file_upload"),
            "multipart/form-data",
        )

    def test_truncated_body(self) -> None:
        """A multipart body cut short (no closing boundary) is refused."""
        filename, data = self.wheel("demo", "1.0")
        content_type, body = encode_upload(
            twine_fields(filename, data, "demo", "1.0"), (filename, data)
        )
        self.assert_refused(*self.post(content_type, body[: len(body) // 2]), "multipart")

    def bad_filename(self, filename: str, *words: str) -> None:
        _, data = self.wheel("demo", "1.0")
        fields = [(":action", "file_upload"), ("name", "demo"), ("version", "1.0")]
        content_type, body = encode_upload(fields, (filename, data))
        self.assert_refused(*self.post(content_type, body), *words)

    def test_filename_with_slash(self) -> None:
        """A filename with ``/`` is refused."""
        self.bad_filename("../demo-1.0-py3-none-any.whl", "filename")
        self.bad_filename("sub/demo-1.0-py3-none-any.whl", "filename")

    def test_filename_dotdot(self) -> None:
        """``..`` as the filename is refused."""
        self.bad_filename("..", "filename")

    def test_filename_nul(self) -> None:
        """A filename with a NUL or other control character is refused."""
        self.bad_filename("demo-1.0-py3-none-any.whl\x00.txt", "filename")
        self.bad_filename("demo-1.0-py3\x01-none-any.whl", "filename")

    def test_wrong_extension(self) -> None:
        """A file that is neither wheel nor sdist (.exe, .egg, .tar.bz2) is refused."""
        for name in ("demo-1.0.exe", "demo-1.0-py3.egg", "demo-1.0.tar.bz2", "demo-1.0.txt"):
            self.bad_filename(name, "filename")

    def test_filename_disagrees_with_form(self) -> None:
        """The form's name or version differing from the filename's is refused, naming both."""
        filename, data = self.wheel("demo", "1.0")
        for name, version, word in (("other", "1.0", "other"), ("demo", "2.0", "2.0")):
            fields = twine_fields(filename, data, name, version)
            content_type, body = encode_upload(fields, (filename, data))
            self.assert_refused(*self.post(content_type, body), word)

    def test_metadata_disagrees_with_filename(self) -> None:
        """An archive whose metadata names another project or version is refused."""
        from tests.distfactory import core_metadata, make_wheel

        filename, data = make_wheel("demo", "1.0", metadata=core_metadata("demo", "9.9"))
        response, body = self.upload(filename, data)
        self.assert_refused(response, body, "9.9")

    def test_digest_mismatch(self) -> None:
        """Each of sha256, blake2_256 and md5, in hex or base64, refuses a wrong value."""
        filename, data = self.wheel("demo", "1.0")
        wrong = b"x" * 64
        wrong_digests = {
            "sha256_digest": [
                hashlib.sha256(wrong).hexdigest(),
                b64(hashlib.sha256(wrong).digest()),
            ],
            "blake2_256_digest": [
                hashlib.blake2b(wrong, digest_size=32).hexdigest(),
                b64(hashlib.blake2b(wrong, digest_size=32).digest()),
            ],
            "md5_digest": [hashlib.md5(wrong).hexdigest(), b64(hashlib.md5(wrong).digest())],
        }
        for field, values in wrong_digests.items():
            for value in values:
                fields = [
                    (k, value if k == field else v)
                    for k, v in twine_fields(filename, data, "demo", "1.0")
                ]
                response, body = self.upload(filename, data, fields=fields)
                self.assert_refused(response, body, field)

    def test_not_a_valid_archive(self) -> None:
        """Bytes that are not a wheel / an sdist under a valid name are refused."""
        for filename in ("demo-1.0-py3-none-any.whl", "demo-1.0.tar.gz", "demo-1.0.zip"):
            data = b"this is not an archive" * 10
            response, body = self.upload(filename, data)
            self.assert_refused(response, body, "not a valid")

    def test_wrong_action(self) -> None:
        """``:action`` other than file_upload is refused, naming the action."""
        filename, data = self.wheel("demo", "1.0")
        fields = [(":action", "submit"), *twine_fields(filename, data, "demo", "1.0")[1:]]
        response, body = self.upload(filename, data, fields=fields)
        self.assert_refused(response, body, "submit")

    def test_missing_file(self) -> None:
        """A form without the ``content`` part is refused, naming the field."""
        content_type, body = encode_upload(
            [(":action", "file_upload"), ("name", "demo"), ("version", "1.0")], None
        )
        self.assert_refused(*self.post(content_type, body), "content")

    def test_file_part_without_filename(self) -> None:
        """A ``content`` part without a filename is refused."""
        boundary = "b0undary"
        body = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="content"\r\n\r\n'
            f"data\r\n--{boundary}--\r\n"
        ).encode()
        self.assert_refused(
            *self.post(f"multipart/form-data; boundary={boundary}", body), "filename"
        )

    def test_file_over_limit_413(self) -> None:
        """A file over ``pypi.max_upload_size`` (declared Content-Length within the form
        allowance) is refused with 413 naming the limit."""
        filename, data = self.wheel("demo", "1.0", extra_files={"demo/big.bin": _noise(150_000)})
        self.assertGreater(len(data), 100_000)
        response, body = self.upload(filename, data)
        self.assert_refused(response, body, "100000", status=413)

    def test_content_length_over_limit_413(self) -> None:
        """A Content-Length over the body limit is answered 413 before any of the body is
        sent (the headers alone are enough), and nothing is stored."""
        from pypicloud_tx.web.root import FORM_OVERHEAD

        limit = 100_000 + FORM_OVERHEAD
        head = (
            b"POST /simple/ HTTP/1.1\r\nHost: index.test\r\n"
            b"Content-Type: multipart/form-data; boundary=x\r\n"
            b"Content-Length: " + str(limit + 1).encode() + b"\r\n\r\n"
        )
        answer = self.ix.raw_http(head)
        self.assertTrue(answer.startswith(b"HTTP/1.1 413 "), answer)
        self.assertIn(b"max_upload_size", answer)
        self.assertEqual(snapshot(self.ix), self.before)

    def test_content_length_over_limit_through_stub(self) -> None:
        """Through the HTTP client as well: a body whose Content-Length is over the limit gets
        413 naming pypi.max_upload_size."""
        from pypicloud_tx.web.root import FORM_OVERHEAD

        self.make_index({"pypi.max_upload_size": "1000"})
        self.before = snapshot(self.ix)
        filename, data = self.wheel(
            "demo", "1.0", extra_files={"demo/big.bin": _noise(FORM_OVERHEAD + 5000)}
        )
        response, body = self.upload(filename, data)
        self.assert_refused(response, body, "max_upload_size", status=413)

    def test_chunked_body_over_limit_413(self) -> None:
        """A chunked body (no Content-Length) is answered 413 as soon as it grows over the
        limit, and nothing is stored."""
        from pypicloud_tx.web.root import FORM_OVERHEAD

        self.make_index({"pypi.max_upload_size": "1000"})
        self.before = snapshot(self.ix)
        chunk = b"x" * 65536
        framed = hex(len(chunk))[2:].encode() + b"\r\n" + chunk + b"\r\n"
        count = (FORM_OVERHEAD + 1000) // len(chunk) + 2
        request = (
            b"POST /simple/ HTTP/1.1\r\nHost: index.test\r\n"
            b"Content-Type: multipart/form-data; boundary=x\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n" + framed * count + b"0\r\n\r\n"
        )
        answer = self.ix.raw_http(request)
        self.assertTrue(answer.startswith(b"HTTP/1.1 413 "), answer[:200])
        self.assertEqual(answer.count(b"HTTP/1.1 "), 1)
        self.assertEqual(snapshot(self.ix), self.before)

    def test_chunked_upload_within_limit(self) -> None:
        """A chunked upload within the limit is stored like any other."""
        filename, data = self.wheel("demo", "1.0")
        content_type, body = encode_upload(
            twine_fields(filename, data, "demo", "1.0"), (filename, data)
        )
        framed = b"".join(
            hex(len(body[i : i + 1000]))[2:].encode() + b"\r\n" + body[i : i + 1000] + b"\r\n"
            for i in range(0, len(body), 1000)
        )
        auth = base64.b64encode(b"bob:bobpw")
        request = (
            b"POST /simple/ HTTP/1.1\r\nHost: index.test\r\n"
            b"Authorization: Basic " + auth + b"\r\n"
            b"Content-Type: " + content_type.encode() + b"\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n" + framed + b"0\r\n\r\n"
        )
        answer = self.ix.raw_http(request)
        self.assertTrue(answer.startswith(b"HTTP/1.1 200 "), answer[:300])
        self.assertIn((filename, hashlib.sha256(data).hexdigest()), snapshot(self.ix)[0])

    def test_anonymous_valid_form_bad_digest_is_401(self) -> None:
        """An anonymous caller without write permission gets 401 before the content is judged:
        a wrong digest does not turn it into a 400."""
        filename, data = self.wheel("demo", "1.0")
        fields = [
            (k, "0" * 64 if k == "sha256_digest" else v)
            for k, v in twine_fields(filename, data, "demo", "1.0")
        ]
        response, body = self.upload(filename, data, user=None, fields=fields)
        self.assert_refused(response, body, "log in", status=401)


def _noise(size: int) -> bytes:
    """Incompressible bytes, so the archive really is that large."""
    out = bytearray()
    seed = b"seed"
    while len(out) < size:
        seed = hashlib.sha256(seed).digest()
        out += seed
    return bytes(out[:size])

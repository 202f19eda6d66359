"""Tests for :mod:`pypicloud_tx.web.multipart`: reading upload forms as clients send them."""

from __future__ import annotations

import hashlib
import io
import os
import random
import tempfile
import tracemalloc

from twisted.trial.unittest import SynchronousTestCase

from pypicloud_tx.errors import InvalidUpload, TooLarge
from pypicloud_tx.web.multipart import (
    MAX_FIELD_SIZE,
    MAX_PARTS,
    UploadForm,
    parse_upload,
)
from tests.distfactory import encode_upload, make_wheel, twine_fields

BOUNDARY = "b0undary-1234567890abcdef"


def _open_fds_under(directory: str) -> list[str]:
    """Paths of this process's open file descriptors that point into ``directory``."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(directory + "/"):
            found.append(target)
    return found


class TwineShapedTests(SynchronousTestCase):
    """Bodies shaped like twine's are read completely and faithfully."""

    def setUp(self) -> None:
        self.filename, self.data = make_wheel("Friendly.Bard", "1.0", summary="A bard")
        self.fields = twine_fields(
            self.filename,
            self.data,
            "Friendly.Bard",
            "1.0",
            summary="A bard",
            classifiers=["Topic :: A", "Topic :: B", "Topic :: C"],
            requires_dist=["attrs>=23", "packaging"],
            description="Ünïcödé description\r\nwith lines",
        )

    def parse(self, body: bytes, content_type: str, **kwargs: object) -> UploadForm:
        form = parse_upload(io.BytesIO(body), content_type, **kwargs)  # type: ignore[arg-type]
        self.addCleanup(form.close)
        return form

    def test_fields_round_trip(self) -> None:
        """Every field comes back, repeated ones in the order sent, values UTF-8 decoded."""
        content_type, body = encode_upload(self.fields, (self.filename, self.data), BOUNDARY)
        form = self.parse(body, content_type)
        expected: dict[str, list[str]] = {}
        for key, value in self.fields:
            expected.setdefault(key, []).append(value)
        self.assertEqual({k: list(v) for k, v in form.fields.items()}, expected)
        self.assertEqual(form.fields["classifiers"], ("Topic :: A", "Topic :: B", "Topic :: C"))
        self.assertEqual(form.fields["description"], ("Ünïcödé description\r\nwith lines",))
        self.assertNotIn("content", form.fields)

    def test_first(self) -> None:
        """``first`` gives the first value of a field, or the default when it is absent."""
        content_type, body = encode_upload(self.fields, (self.filename, self.data), BOUNDARY)
        form = self.parse(body, content_type)
        self.assertEqual(form.first("classifiers"), "Topic :: A")
        self.assertEqual(form.first(":action"), "file_upload")
        self.assertIsNone(form.first("nope"))
        self.assertEqual(form.first("nope", "fallback"), "fallback")

    def test_file_and_digests(self) -> None:
        """The file part's name, bytes, size and digests are those sent; the stream is at 0."""
        content_type, body = encode_upload(self.fields, (self.filename, self.data), BOUNDARY)
        form = self.parse(body, content_type)
        assert form.file is not None
        self.assertEqual(form.file.filename, self.filename)
        self.assertEqual(form.file.content_type, "application/octet-stream")
        self.assertEqual(form.file.stream.tell(), 0)
        self.assertEqual(form.file.stream.read(), self.data)
        self.assertEqual(form.file.size, len(self.data))
        self.assertEqual(form.file.sha256, hashlib.sha256(self.data).hexdigest())
        self.assertEqual(form.file.md5, hashlib.md5(self.data).hexdigest())
        self.assertEqual(
            form.file.blake2b_256, hashlib.blake2b(self.data, digest_size=32).hexdigest()
        )
        # The digests twine computed agree with ours.
        self.assertEqual(form.first("sha256_digest"), form.file.sha256)
        self.assertEqual(form.first("blake2_256_digest"), form.file.blake2b_256)

    def test_quoted_content_type(self) -> None:
        """A quoted boundary and extra parameters in Content-Type are understood."""
        _, body = encode_upload(self.fields, (self.filename, self.data), BOUNDARY)
        form = self.parse(body, f'Multipart/Form-Data; charset=utf-8; boundary="{BOUNDARY}"')
        assert form.file is not None
        self.assertEqual(form.file.stream.read(), self.data)

    def test_boundary_lookalikes_in_file(self) -> None:
        """File bytes resembling the delimiter, across read-chunk edges, are kept intact."""
        trap = b"\r\n--" + BOUNDARY[:-1].encode()
        data = (b"x" * (64 * 1024 - 3) + trap + b"\r\n--\r\n") * 5 + trap
        content_type, body = encode_upload([], ("a-1.0.tar.gz", data), BOUNDARY)
        form = self.parse(body, content_type)
        assert form.file is not None
        self.assertEqual(form.file.stream.read(), data)
        self.assertEqual(form.file.sha256, hashlib.sha256(data).hexdigest())

    def test_no_file(self) -> None:
        """A form without a ``content`` part parses, with ``file`` None."""
        content_type, body = encode_upload([(":action", "remove_pkg")], None, BOUNDARY)
        form = self.parse(body, content_type)
        self.assertIsNone(form.file)
        self.assertEqual(form.fields, {":action": ("remove_pkg",)})

    def test_filename_returned_as_given(self) -> None:
        """The client's filename is returned untouched (validating it is the caller's job)."""
        content_type, body = encode_upload([], ("../../etc/x-1.0.whl", b"data"), BOUNDARY)
        form = self.parse(body, content_type)
        assert form.file is not None
        self.assertEqual(form.file.filename, "../../etc/x-1.0.whl")

    def test_other_file_parts_become_fields(self) -> None:
        """A signature or attestations sent as file parts become text fields, even if not
        UTF-8, and the upload still works."""
        content_type, body = encode_upload(
            self.fields,
            (self.filename, self.data),
            BOUNDARY,
            extra_files=[
                ("gpg_signature", "x.whl.asc", b"-----BEGIN PGP SIGNATURE-----\n\xff\xfe\n"),
                ("attestations", "att.json", b'[{"version": 1}]'),
            ],
        )
        form = self.parse(body, content_type)
        self.assertEqual(form.fields["attestations"], ('[{"version": 1}]',))
        self.assertEqual(
            form.fields["gpg_signature"], ("-----BEGIN PGP SIGNATURE-----\n\ufffd\ufffd\n",)
        )
        assert form.file is not None
        self.assertEqual(form.file.stream.read(), self.data)

    def test_large_description(self) -> None:
        """A description under the field limit (here 900 kB) is accepted whole."""
        description = "d" * 900_000
        content_type, body = encode_upload(
            [("description", description)], (self.filename, self.data), BOUNDARY
        )
        form = self.parse(body, content_type)
        self.assertEqual(form.first("description"), description)

    def test_context_manager_closes(self) -> None:
        """Leaving a ``with`` block (or calling ``close``) closes the spooled file."""
        content_type, body = encode_upload([], (self.filename, self.data), BOUNDARY)
        with parse_upload(io.BytesIO(body), content_type) as form:
            assert form.file is not None
            stream = form.file.stream
            self.assertFalse(stream.closed)
        self.assertTrue(stream.closed)

    def test_exactly_max_parts(self) -> None:
        """A form with exactly the maximum number of parts is accepted."""
        fields = [("classifiers", str(i)) for i in range(MAX_PARTS - 1)]
        content_type, body = encode_upload(fields, (self.filename, self.data), BOUNDARY)
        form = self.parse(body, content_type)
        self.assertEqual(len(form.fields["classifiers"]), MAX_PARTS - 1)


class LargeFileTests(SynchronousTestCase):
    """A big file goes to disk in the spool directory, not to memory."""

    SIZE = 20 * 1024 * 1024

    def test_spooled_to_disk(self) -> None:
        """A 20 MB file is written to a real file in ``spool_dir`` while parsing uses little
        memory, and its bytes and digest are right."""
        spool = os.path.abspath(self.mktemp())
        os.makedirs(spool)
        data = random.Random(1).randbytes(self.SIZE)
        content_type, body = encode_upload(
            [("name", "big"), ("version", "1.0")], ("big-1.0.tar.gz", data), BOUNDARY
        )
        expected_sha256 = hashlib.sha256(data).hexdigest()
        with tempfile.TemporaryFile() as request_body:
            request_body.write(body)
            request_body.seek(0)
            del body, data
            tracemalloc.start()
            try:
                form = parse_upload(request_body, content_type, spool_dir=spool)  # type: ignore[arg-type]
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
        self.addCleanup(form.close)
        self.assertLess(peak, 4 * 1024 * 1024)
        assert form.file is not None
        stream = form.file.stream
        self.assertTrue(stream._rolled)  # type: ignore[attr-defined]
        self.assertEqual(os.fstat(stream.fileno()).st_size, self.SIZE)
        if os.path.isdir("/proc/self/fd"):
            self.assertEqual(len(_open_fds_under(spool)), 1)
        self.assertEqual(form.file.size, self.SIZE)
        self.assertEqual(form.file.sha256, expected_sha256)
        digest = hashlib.sha256()
        while chunk := stream.read(1024 * 1024):
            digest.update(chunk)
        self.assertEqual(digest.hexdigest(), expected_sha256)
        form.close()
        if os.path.isdir("/proc/self/fd"):
            self.assertEqual(_open_fds_under(spool), [])

    def test_failure_removes_spool(self) -> None:
        """When a body fails to parse after the file was spooled to disk, the spool is closed
        and deleted."""
        if not os.path.isdir("/proc/self/fd"):
            self.skipTest("needs /proc to see open files")
        spool = os.path.abspath(self.mktemp())
        os.makedirs(spool)
        content_type, body = encode_upload([], ("a-1.0.tar.gz", b"z" * 3_000_000), BOUNDARY)
        with self.assertRaises(InvalidUpload):
            parse_upload(io.BytesIO(body[:-100]), content_type, spool_dir=spool)
        self.assertEqual(_open_fds_under(spool), [])
        self.assertEqual(os.listdir(spool), [])


class RefusedTests(SynchronousTestCase):
    """Malformed, ambiguous or oversized forms are refused with a message saying why."""

    def setUp(self) -> None:
        self.filename, self.data = make_wheel("foo", "1.0")
        self.content_type, self.body = encode_upload(
            twine_fields(self.filename, self.data, "foo", "1.0"),
            (self.filename, self.data),
            BOUNDARY,
        )

    def refused(
        self, body: bytes, content_type: str, error: type[Exception] = InvalidUpload, **kw: object
    ) -> str:
        with self.assertRaises(error) as caught:
            parse_upload(io.BytesIO(body), content_type, **kw)  # type: ignore[arg-type]
        return str(caught.exception)

    def test_truncated(self) -> None:
        """A body cut short (no closing delimiter) is refused."""
        message = self.refused(self.body[: len(self.body) // 2], self.content_type)
        self.assertIn("not a valid multipart", message)

    def test_missing_final_delimiter(self) -> None:
        """A body missing only its closing ``--`` delimiter is refused."""
        body = self.body[: -len(f"--{BOUNDARY}--\r\n")]
        self.refused(body, self.content_type)

    def test_empty_body(self) -> None:
        """An empty body is refused."""
        self.refused(b"", self.content_type)

    def test_garbage(self) -> None:
        """Bytes that are not multipart at all are refused."""
        self.refused(b"hello world " * 1000, self.content_type)

    def test_wrong_boundary(self) -> None:
        """A body whose delimiters do not match the declared boundary is refused."""
        self.refused(self.body, "multipart/form-data; boundary=something-else")

    def test_missing_boundary(self) -> None:
        """A multipart content type without a boundary is refused, naming the boundary."""
        message = self.refused(self.body, "multipart/form-data")
        self.assertIn("boundary", message)

    def test_invalid_boundary(self) -> None:
        """A boundary with characters RFC 2046 does not allow is refused."""
        message = self.refused(self.body, 'multipart/form-data; boundary="a\\"b;c"')
        self.assertIn("boundary", message)

    def test_not_multipart(self) -> None:
        """A urlencoded or JSON body is refused, naming the expected content type."""
        for content_type in ("application/x-www-form-urlencoded", "application/json", ""):
            message = self.refused(b"a=b", content_type)
            self.assertIn("multipart/form-data", message)

    def test_two_files(self) -> None:
        """Two ``content`` parts are refused: one file per upload."""
        content_type, body = encode_upload(
            [],
            (self.filename, self.data),
            BOUNDARY,
            extra_files=[("content", "foo-1.0.tar.gz", b"more")],
        )
        message = self.refused(body, content_type)
        self.assertIn("more than one", message)

    def test_content_without_filename(self) -> None:
        """A ``content`` part sent as a plain field (no filename) is refused."""
        content_type, body = encode_upload([("content", "not a file")], None, BOUNDARY)
        message = self.refused(body, content_type)
        self.assertIn("no filename", message)

    def test_file_too_large(self) -> None:
        """A file over ``max_file_size`` raises TooLarge; one exactly at the limit passes."""
        size = len(self.data)
        message = self.refused(self.body, self.content_type, TooLarge, max_file_size=size - 1)
        self.assertIn(str(size - 1), message)
        form = parse_upload(io.BytesIO(self.body), self.content_type, max_file_size=size)
        self.addCleanup(form.close)
        assert form.file is not None
        self.assertEqual(form.file.size, size)

    def test_field_too_large(self) -> None:
        """A text field over 1 MiB is refused, naming the field."""
        content_type, body = encode_upload(
            [("description", "x" * (MAX_FIELD_SIZE + 1))], (self.filename, self.data), BOUNDARY
        )
        message = self.refused(body, content_type)
        self.assertIn("'description'", message)

    def test_other_file_part_too_large(self) -> None:
        """A non-``content`` file part over 1 MiB is refused rather than held in memory."""
        content_type, body = encode_upload(
            [],
            (self.filename, self.data),
            BOUNDARY,
            extra_files=[("gpg_signature", "x.asc", b"s" * (MAX_FIELD_SIZE + 1))],
        )
        message = self.refused(body, content_type)
        self.assertIn("'gpg_signature'", message)

    def test_fields_together_too_large(self) -> None:
        """Many large fields that together exceed the form's text budget are refused."""
        fields = [("description", "y" * (MAX_FIELD_SIZE - 10))] * 17
        content_type, body = encode_upload(fields, None, BOUNDARY)
        message = self.refused(body, content_type)
        self.assertIn("together", message)

    def test_too_many_parts(self) -> None:
        """A form with more than 1000 parts is refused."""
        fields = [("classifiers", str(i)) for i in range(MAX_PARTS + 1)]
        content_type, body = encode_upload(fields, None, BOUNDARY)
        message = self.refused(body, content_type)
        self.assertIn(str(MAX_PARTS), message)

    def test_invalid_utf8_field(self) -> None:
        """A text field that is not UTF-8 is refused, naming the field."""
        body = (
            (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="summary"\r\n\r\n').encode()
            + b"\xff\xfe\r\n"
            + f"--{BOUNDARY}--\r\n".encode()
        )
        message = self.refused(body, f"multipart/form-data; boundary={BOUNDARY}")
        self.assertIn("'summary'", message)

    def test_part_without_disposition(self) -> None:
        """A part without a Content-Disposition header is refused."""
        body = (
            f"--{BOUNDARY}\r\nContent-Type: text/plain\r\n\r\nvalue\r\n--{BOUNDARY}--\r\n"
        ).encode()
        self.refused(body, f"multipart/form-data; boundary={BOUNDARY}")

    def test_oversized_part_header(self) -> None:
        """A part header line longer than the parser's limit is refused."""
        body = (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{"n" * 10000}"\r\n\r\n'
            f"v\r\n--{BOUNDARY}--\r\n"
        ).encode()
        self.refused(body, f"multipart/form-data; boundary={BOUNDARY}")


class SpoolReadsBackTests(SynchronousTestCase):
    """The spooled file is a seekable stream the archive readers can open."""

    def test_inspect_spooled_distributions(self) -> None:
        """Wheels and sdists, small (in memory) and large (on disk), read back from the spool
        give their metadata."""
        from pypicloud_tx.domain.dists import inspect_distribution
        from tests.distfactory import make_sdist

        for extra in ({}, {"big.bin": random.Random(2).randbytes(3_000_000)}):
            for filename, data in (
                make_wheel("foo", "1.0", extra_files=extra),
                make_sdist("foo", "1.0", extra_files=extra),
                make_sdist("foo", "1.0", extra_files=extra, archive="zip"),
            ):
                content_type, body = encode_upload([], (filename, data), BOUNDARY)
                with parse_upload(io.BytesIO(body), content_type) as form:
                    assert form.file is not None
                    self.assertEqual(form.file.stream._rolled, bool(extra))  # type: ignore[attr-defined]
                    info = inspect_distribution(form.file.stream, form.file.filename)
                    self.assertEqual((info.name, info.version), ("foo", "1.0"))

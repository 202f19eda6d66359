"""Real twine, pip and uv against a real ``twist pypicloud``."""

from __future__ import annotations

import hashlib
import os
import re
import sys

from tests.distfactory import make_sdist, make_wheel
from tests.e2e.server import ServerCase, run_tool


def _import_version(python: str, package: str, path: str | None = None) -> str:
    """``package.__version__`` as seen by ``python`` (with ``path`` first on ``sys.path``)."""
    code = f"import {package}; print({package}.__version__)"
    if path is not None:
        code = f"import sys; sys.path.insert(0, {path!r}); " + code
    result = run_tool([python, "-I", "-c", code], os.path.dirname(path or python))
    assert result.returncode == 0, result.describe()
    return result.output.strip()


class TwineAndPipTests(ServerCase):
    """Uploading with twine, installing and downloading with pip and uv."""

    def test_twine_upload_then_pip_install_and_download(self) -> None:
        """Twine uploads a wheel and an sdist with credentials; pip installs the package
        (importable, right version) and downloads each file byte for byte: the wheel with
        ``--only-binary :all:``, the sdist with ``--no-binary :all:``."""
        server = self.start_server()
        wheel = make_wheel("e2e-alpha", "1.0", summary="Alpha")
        sdist = make_sdist("e2e-alpha", "1.0", summary="Alpha")
        self.run_ok(
            server,
            [
                "twine",
                "upload",
                "--non-interactive",
                "--disable-progress-bar",
                "--repository-url",
                server.index_url,
                "-u",
                "alice",
                "-p",
                "alicepw",
                self.write_dist(server, wheel),
                self.write_dist(server, sdist),
            ],
        )

        target = os.path.join(server.folder, "target")
        self.run_ok(
            server,
            [
                "pip",
                "install",
                "--no-cache-dir",
                "--no-deps",
                "--index-url",
                server.index_url,
                "--target",
                target,
                "e2e-alpha",
            ],
        )
        self.assertEqual(_import_version(sys.executable, "e2e_alpha", target), "1.0")

        _, got = self.pip_download(server, "--only-binary", ":all:", "e2e-alpha")
        self.assertEqual(got, {wheel[0]: wheel[1]})
        _, got = self.pip_download(
            server, "--no-binary", ":all:", "--no-build-isolation", "e2e-alpha"
        )
        self.assertEqual(got, {sdist[0]: sdist[1]})

    def test_uv_pip_install_into_fresh_venv(self) -> None:
        """``uv pip install --index-url`` installs an uploaded wheel into a venv made by
        ``uv venv``; the package imports with the uploaded version."""
        server = self.start_server()
        self.upload_ok(server, make_wheel("e2e-beta", "2.5"), "e2e-beta", "2.5")
        venv = os.path.join(server.folder, "venv")
        self.run_ok(server, ["uv", "venv", "--no-config", "--python", sys.executable, venv])
        python = os.path.join(venv, "bin", "python")
        self.run_ok(
            server,
            [
                "uv",
                "pip",
                "install",
                "--no-cache",
                "--python",
                python,
                "--index-url",
                server.index_url,
                "e2e-beta",
            ],
        )
        self.assertEqual(_import_version(python, "e2e_beta"), "2.5")

    def test_credentials_in_index_url(self) -> None:
        """With ``pypi.default_read = authenticated``, ``pip download`` works with
        ``user:password@`` in the index URL, and fails without: the server answers 401
        with a ``WWW-Authenticate: Basic`` challenge."""
        server = self.start_server({"pypi.default_read": "authenticated"})
        wheel = make_wheel("e2e-private", "1.0")
        self.upload_ok(server, wheel, "e2e-private", "1.0")

        _, got = self.pip_download(server, "e2e-private", index_url=server.index_url_with("bob"))
        self.assertEqual(got, {wheel[0]: wheel[1]})

        result, got = self.pip_download(server, "e2e-private", expect=None)
        self.assertNotEqual(result.returncode, 0, result.describe())
        self.assertEqual(got, {})
        self.assertRegex(server.log_text(), r'"GET /simple/e2e-private/ HTTP/1.1" 401 ')
        answer = server.get("/simple/e2e-private/")
        self.assertEqual(answer.status, 401)
        self.assertTrue(answer.headers.get("www-authenticate", "").startswith("Basic realm="))

    def test_twine_reupload_is_refused(self) -> None:
        """Uploading the same file again with twine fails (non-zero exit) with a message
        saying the file already exists; the stored bytes are unchanged."""
        server = self.start_server()
        wheel = make_wheel("e2e-gamma", "1.0")
        path = self.write_dist(server, wheel)
        twine = [
            "twine",
            "upload",
            "--non-interactive",
            "--disable-progress-bar",
            "--repository-url",
            server.index_url,
            "-u",
            "alice",
            "-p",
            "alicepw",
            path,
        ]
        self.run_ok(server, twine)
        again = self.run_ok(server, twine, expect=None)
        self.assertNotEqual(again.returncode, 0, again.describe())
        self.assertIn("already exists", again.output)
        self.assertIn("409", again.output)
        served = server.get(f"/api/package/e2e-gamma/{wheel[0]}")
        self.assertEqual(served.body, wheel[1])


class UvPublishTests(ServerCase):
    """``uv publish`` with ``--check-url``, the private-index way of skipping existing files."""

    def test_publish_then_republish_with_check_url(self) -> None:
        """``uv publish`` uploads a wheel; publishing the wheel and an sdist again with
        ``--check-url`` skips the wheel (its sha256 matches what the index lists) and uploads
        the sdist, without error; both files are served byte for byte."""
        server = self.start_server()
        wheel = make_wheel("e2e-delta", "0.3", summary="Delta")
        sdist = make_sdist("e2e-delta", "0.3", summary="Delta")
        wheel_path = self.write_dist(server, wheel)
        sdist_path = self.write_dist(server, sdist)
        publish = [
            "uv",
            "publish",
            "--no-config",
            "--no-cache",
            "--keyring-provider",
            "disabled",
            "--trusted-publishing",
            "never",
            "--publish-url",
            f"{server.url}/legacy/",
            "--username",
            "alice",
            "--password",
            "alicepw",
        ]
        self.run_ok(server, [*publish, wheel_path])
        self.assertEqual(
            [f["filename"] for f in server.project_json("e2e-delta")["files"]], [wheel[0]]
        )

        again = self.run_ok(
            server, [*publish, "--check-url", server.index_url, wheel_path, sdist_path]
        )
        self.assertRegex(again.output, r"(?i)(already exists|skipping)")
        files = server.project_json("e2e-delta")["files"]
        self.assertEqual(sorted(f["filename"] for f in files), sorted([wheel[0], sdist[0]]))
        for filename, data in (wheel, sdist):
            self.assertEqual(server.get(f"/api/package/e2e-delta/{filename}").body, data)
        # The skip was decided on the index's listing: the wheel was POSTed only once.
        posts = re.findall(r'"POST /legacy/ HTTP/1.1" (\d+)', server.log_text())
        self.assertEqual(posts, ["200", "200"])

    def test_republish_same_files_with_check_url(self) -> None:
        """Publishing exactly the same files twice with ``--check-url`` succeeds both times;
        the second run uploads nothing."""
        server = self.start_server()
        paths = [
            self.write_dist(server, make_wheel("e2e-eps", "1.0")),
            self.write_dist(server, make_sdist("e2e-eps", "1.0")),
        ]
        publish = [
            "uv",
            "publish",
            "--no-config",
            "--no-cache",
            "--keyring-provider",
            "disabled",
            "--trusted-publishing",
            "never",
            "--publish-url",
            f"{server.url}/legacy/",
            "--username",
            "alice",
            "--password",
            "alicepw",
            "--check-url",
            server.index_url,
            *paths,
        ]
        self.run_ok(server, publish)
        self.run_ok(server, publish)
        posts = re.findall(r'"POST /legacy/ HTTP/1.1" (\d+)', server.log_text())
        self.assertEqual(posts, ["200", "200"])


class ResolutionTests(ServerCase):
    """What pip chooses from the index."""

    def test_newest_compatible_version_via_core_metadata(self) -> None:
        """pip picks the newest version whose Requires-Python admits this interpreter
        (2.0 needs ``>=4`` and is skipped, its files never fetched), resolves it through the
        PEP 658 ``.metadata`` file, and the HTML page carries the escaped
        ``data-requires-python``."""
        server = self.start_server()
        for version, requires in (("1.0", None), ("1.1", ">=3.8"), ("2.0", ">=4")):
            wheel = make_wheel("e2e-zeta", version, requires_python=requires)
            self.upload_ok(
                server,
                wheel,
                "e2e-zeta",
                version,
                **({"requires_python": requires} if requires else {}),
            )
        page = server.get("/simple/e2e-zeta/").text
        self.assertIn('data-requires-python="&gt;=4"', page)

        _, got = self.pip_download(server, "--only-binary", ":all:", "e2e-zeta")
        self.assertEqual(list(got), ["e2e_zeta-1.1-py3-none-any.whl"])
        log = server.log_text()
        self.assertIn("GET /api/package/e2e-zeta/e2e_zeta-1.1-py3-none-any.whl.metadata ", log)
        self.assertNotRegex(log, r'"GET \S*e2e_zeta-2\.0')

    def test_yanked_version_only_when_pinned(self) -> None:
        """After ``POST /api/package/<name>/<filename>/yank``, pip does not choose the yanked
        2.0 for an unpinned requirement but still installs it for ``==2.0``."""
        server = self.start_server()
        for version in ("1.0", "2.0"):
            self.upload_ok(server, make_wheel("e2e-eta", version), "e2e-eta", version)
        answer = server.request(
            "POST",
            "/api/package/e2e-eta/e2e_eta-2.0-py3-none-any.whl/yank",
            b"reason=broken+build",
            {"Content-Type": "application/x-www-form-urlencoded"},
            user="alice",
        )
        self.assertEqual(answer.status, 200, answer.text)
        files = {f["filename"]: f for f in server.project_json("e2e-eta")["files"]}
        self.assertEqual(files["e2e_eta-2.0-py3-none-any.whl"]["yanked"], "broken build")

        _, got = self.pip_download(server, "e2e-eta")
        self.assertEqual(list(got), ["e2e_eta-1.0-py3-none-any.whl"])
        result, got = self.pip_download(server, "e2e-eta==2.0")
        self.assertEqual(list(got), ["e2e_eta-2.0-py3-none-any.whl"])
        self.assertIn("yanked", result.output.lower())

    def test_served_hashes_match_pip_download(self) -> None:
        """The sha256 in the PEP 691 listing is the digest of the bytes pip downloads."""
        server = self.start_server()
        wheel = make_wheel("e2e-theta", "1.0")
        self.upload_ok(server, wheel, "e2e-theta", "1.0")
        _, got = self.pip_download(server, "e2e-theta")
        listed = server.project_json("e2e-theta")["files"][0]["hashes"]["sha256"]
        self.assertEqual(hashlib.sha256(got[wheel[0]]).hexdigest(), listed)

"""API tokens with real twine, pip and uv against a real ``twist pypicloud`` on a SQL access
backend seeded the way an operator would: ``pypicloud-tx import`` before the first start."""

from __future__ import annotations

import json
import os
import urllib.parse

from tests.distfactory import make_wheel
from tests.e2e.server import PASSWORDS, IndexProcess, ServerCase, cheap_hash, run_tool, tool


class TokenTests(ServerCase):
    def start_sql_server(self) -> IndexProcess:
        """A server whose users live in SQLite, imported before it first starts."""
        folder = self.make_folder()
        server = IndexProcess(
            folder,
            {
                "pypi.auth": "sql",
                "auth.db.url": f"sqlite:///{os.path.join(folder, 'auth.sqlite')}",
                "user.alice": None,
                "user.bob": None,
                "pypi.default_read": "authenticated",
            },
        )
        acl = os.path.join(folder, "acl.json")
        with open(acl, "w", encoding="utf-8") as f:
            json.dump(
                {
                    "users": [
                        {"username": u, "password": cheap_hash(p), "admin": u == "alice"}
                        for u, p in PASSWORDS.items()
                    ],
                    "groups": {},
                    "packages": {"users": {}, "groups": {}},
                },
                f,
            )
        imported = run_tool([tool("pypicloud-tx"), "import", server.config_path, "-i", acl], folder)
        self.assertEqual(imported.returncode, 0, imported.describe())
        self.addCleanup(server.kill)
        server.start()
        return server

    def create_token(self, server: IndexProcess, **fields: str) -> str:
        body = urllib.parse.urlencode(fields).encode()
        answer = server.request(
            "POST",
            "/api/tokens/",
            body=body,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
            user="bob",
        )
        self.assertEqual(answer.status, 201, answer.text)
        token: str = answer.json()["token"]
        self.assertTrue(token.startswith("pypitx_"))
        return token

    def twine(self, server: IndexProcess, token: str, dist: tuple[str, bytes], expect: int) -> str:
        result = self.run_ok(
            server,
            [
                "twine",
                "upload",
                "--non-interactive",
                "--disable-progress-bar",
                "--repository-url",
                server.index_url,
                "-u",
                "__token__",
                "-p",
                token,
                self.write_dist(server, dist),
            ],
            expect=expect,
        )
        return result.output

    def test_scoped_token_with_twine_pip_and_uv(self) -> None:
        """A token scoped to one package uploads it with twine and is refused (403) for
        another; pip and uv install with the token in the index URL; a revoked token stops
        working at once."""
        server = self.start_sql_server()
        token = self.create_token(
            server, name="release-ci", packages="tok-one", permissions="read,write"
        )
        self.twine(server, token, make_wheel("tok-one", "1.0"), expect=0)
        refused = self.twine(server, token, make_wheel("tok-two", "1.0"), expect=1)
        self.assertIn("403", refused)
        listed = server.get("/api/package/tok-two/", user="bob")
        self.assertEqual(listed.status, 404, listed.text)

        index = server.index_url_with("__token__", token)
        self.run_ok(
            server,
            [
                "pip",
                "install",
                "--no-cache-dir",
                "--no-deps",
                "--disable-pip-version-check",
                "--index-url",
                index,
                "--target",
                os.path.join(server.folder, "pip-target"),
                "tok-one==1.0",
            ],
        )
        self.assertTrue(os.path.isdir(os.path.join(server.folder, "pip-target", "tok_one")))
        self.run_ok(
            server,
            [
                "uv",
                "pip",
                "install",
                "--no-cache",
                "--no-deps",
                "--index-url",
                index,
                "--target",
                os.path.join(server.folder, "uv-target"),
                "tok-one==1.0",
            ],
        )
        self.assertTrue(os.path.isdir(os.path.join(server.folder, "uv-target", "tok_one")))

        listing = server.request("GET", "/api/tokens/", user="bob").json()["tokens"]
        (entry,) = listing
        self.assertNotIn("token", entry)
        answer = server.request("DELETE", f"/api/tokens/{entry['id']}/", user="bob")
        self.assertEqual(answer.status, 200, answer.text)
        refused = self.twine(server, token, make_wheel("tok-one", "2.0"), expect=1)
        self.assertIn("401", refused)

"""``pypicloud-tx export`` / ``import`` move the ACL between backends, as real subprocesses."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from typing import Any

from passlib.hash import sha512_crypt
from twisted.trial.unittest import SynchronousTestCase

BIN = os.path.dirname(sys.executable)


def tool(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [os.path.join(BIN, "pypicloud-tx"), *args], input=stdin, capture_output=True, timeout=120
    )


class ExportImportTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.root = os.path.abspath(self.mktemp())
        os.makedirs(self.root)
        hashed = sha512_crypt.using(rounds=1000).hash("alicepw")
        self.config_ini = self.write(
            "config.ini",
            "[pypicloud]\npypi.storage = memory\npypi.db = memory\n"
            f"user.alice = {hashed}\nuser.bob = {hashed}\nauth.admins = alice\n"
            "group.devs = bob\npackage.My_Pkg.group.devs = rw\npackage.other.user.alice = r\n",
        )
        self.sql_ini = self.write(
            "sql.ini",
            "[pypicloud]\npypi.storage = memory\npypi.db = memory\npypi.auth = sql\n"
            f"auth.db.url = sqlite:///{self.root}/auth.sqlite\n",
        )

    def write(self, name: str, text: str) -> str:
        path = os.path.join(self.root, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def export(self, config: str) -> dict[str, Any]:
        out = os.path.join(self.root, "export.json.gz")
        result = tool("export", config, "-o", out)
        self.assertEqual(result.returncode, 0, result.stderr)
        with gzip.open(out) as f:
            return json.load(f)

    def test_config_to_sql_and_back(self) -> None:
        """An export of the config backend imported into SQL (twice: idempotent) exports the
        same users, admins, groups and package permissions; progress goes to stderr."""
        first = self.export(self.config_ini)
        blob = gzip.compress(json.dumps(first).encode())
        for _ in range(2):
            result = tool("import", self.sql_ini, stdin=blob)
            self.assertEqual(result.returncode, 0, result.stderr)
            self.assertIn(b"imported 2 users", result.stderr)
        second = self.export(self.sql_ini)
        self.assertEqual(_who(second["users"]), _who(first["users"]))
        self.assertEqual(second["groups"], first["groups"])
        self.assertEqual(second["packages"], first["packages"])

    def test_import_into_read_only_backend_refused(self) -> None:
        """Importing into the config-file backend fails with a message naming the fix."""
        blob = gzip.compress(json.dumps(self.export(self.config_ini)).encode())
        result = tool("import", self.config_ini, stdin=blob)
        self.assertEqual(result.returncode, 2)
        self.assertIn(b"pypi.auth = sql", result.stderr)

    def test_garbage_input_refused(self) -> None:
        """Input that is not an export is refused with status 2 and one line."""
        result = tool("import", self.sql_ini, stdin=b"not json")
        self.assertEqual(result.returncode, 2)
        self.assertEqual(result.stderr.count(b"\n"), 1, result.stderr)


def _who(users: list[dict[str, Any]]) -> list[tuple[str, bool]]:
    return sorted((u["username"], u["admin"]) for u in users)

"""Changing the index from the browser: upload, delete (confirmed), yank and unyank, each with
its permission and CSRF checks."""

from __future__ import annotations

from tests.web.harness import _fired, snapshot
from tests.web.ui.harness import UiTestCase

WHEEL = "demo-1.0-py3-none-any.whl"


class UploadTests(UiTestCase):
    def test_upload_from_the_browser(self) -> None:
        """A wheel sent from the upload form is stored, with the metadata read from the
        archive, and the browser lands on its version's page."""
        self.make_ui()
        browser = self.browser()
        browser.log_in("bob")
        filename, data = self.wheel("demo", "1.0", summary="From the browser")
        page = browser.upload(filename, data, browser.get("/upload").csrf())
        self.assertEqual((page.code, page.location), (303, "/project/demo/1.0/"))
        landed = browser.follow(page)
        self.assertIn(f"{filename} uploaded.", landed.text)
        self.assertIn("From the browser", landed.text)
        stored = _fired(self.ix.cache.fetch(filename))
        self.assertEqual((stored.uploader, stored.summary), ("bob", "From the browser"))
        self.assertNotIn("csrf", stored.metadata)

    def test_upload_needs_the_csrf_token(self) -> None:
        """Without the token nothing is stored (403)."""
        self.make_ui()
        browser = self.browser()
        browser.log_in("bob")
        before = snapshot(self.ix)
        page = browser.upload(*self.wheel(), csrf=None)
        self.assertEqual(page.code, 403)
        self.assertEqual(snapshot(self.ix), before)

    def test_upload_refusals_shown_on_the_form(self) -> None:
        """A duplicate (409), a file without write permission (403) and a bad file (400) are
        explained on the upload page; anonymous visitors are sent to log in."""
        self.make_ui({"package.demo.user.bob": "rw"})
        self.seed("demo", "1.0")
        bob = self.browser()
        bob.log_in("bob")
        again = bob.upload(*self.wheel("demo", "1.0"), bob.get("/upload").csrf())
        self.assertEqual(again.code, 409)
        self.assertIn("already exists", again.text)
        carol = self.browser()
        carol.log_in("carol")
        refused = carol.upload(*self.wheel("demo", "2.0"), carol.get("/upload").csrf())
        self.assertEqual(refused.code, 403)
        self.assertIn("may not upload to or change demo", refused.text)
        bad = bob.upload("notes.txt", b"hello", bob.get("/upload").csrf())
        self.assertEqual(bad.code, 400)
        self.assertEqual(self.browser().get("/upload").code, 303)


class DeleteTests(UiTestCase):
    def test_delete_after_confirming(self) -> None:
        """``GET`` asks for confirmation and changes nothing; the confirmed ``POST`` deletes."""
        self.make_ui()
        self.seed("demo", "1.0")
        self.seed("demo", "1.1")
        browser = self.browser()
        browser.log_in("bob")
        confirm = browser.get(f"/file/demo/{WHEEL}/delete")
        self.assertEqual(confirm.code, 200)
        self.assertIn("cannot be undone", confirm.text)
        self.assertIsNotNone(_fired(self.ix.cache.fetch(WHEEL)))
        page = browser.post(f"/file/demo/{WHEEL}/delete", {}, confirm.csrf())
        self.assertEqual((page.code, page.location), (303, "/project/demo/"))
        self.assertIsNone(_fired(self.ix.cache.fetch(WHEEL)))
        self.assertNotIn(WHEEL, [f.filename for f in _fired(self.ix.storage.list())])

    def test_delete_last_file_goes_to_the_list(self) -> None:
        """Deleting a project's last file leads back to the project list."""
        self.make_ui()
        self.seed("demo", "1.0")
        browser = self.browser()
        browser.log_in("bob")
        page = browser.submit(f"/file/demo/{WHEEL}/delete", f"/file/demo/{WHEEL}/delete", {})
        self.assertEqual(page.location, "/projects/")

    def test_delete_refused(self) -> None:
        """Without the token, without write permission, or with deletion disabled, nothing
        is deleted."""
        self.make_ui({"package.demo.user.bob": "rw"})
        self.seed("demo", "1.0")
        before = snapshot(self.ix)
        bob = self.browser()
        bob.log_in("bob")
        self.assertEqual(bob.post(f"/file/demo/{WHEEL}/delete", {}, None).code, 403)
        carol = self.browser()
        carol.log_in("carol")
        self.assertEqual(carol.get(f"/file/demo/{WHEEL}/delete").code, 403)
        token = carol.get("/upload").csrf()
        self.assertEqual(carol.post(f"/file/demo/{WHEEL}/delete", {}, token).code, 403)
        self.assertEqual(self.browser().post(f"/file/demo/{WHEEL}/delete", {}, None).code, 303)
        self.assertEqual(snapshot(self.ix), before)

    def test_delete_disabled(self) -> None:
        """``pypi.allow_delete = false``: no delete link, and the POST is refused."""
        self.make_ui({"pypi.allow_delete": "false"})
        self.seed("demo", "1.0")
        browser = self.browser()
        browser.log_in("bob")
        self.assertNotIn("/delete", browser.get("/project/demo/").text)
        page = browser.submit(f"/file/demo/{WHEEL}/delete", f"/file/demo/{WHEEL}/delete", {})
        self.assertEqual(page.code, 403)
        self.assertIsNotNone(_fired(self.ix.cache.fetch(WHEEL)))


class YankTests(UiTestCase):
    def test_yank_and_unyank(self) -> None:
        """Yank with a reason, then unyank; the project page shows the actions to writers
        only."""
        self.make_ui()
        self.seed("demo", "1.0")
        self.assertNotIn("/yank", self.browser().get("/project/demo/").text)
        browser = self.browser()
        browser.log_in("bob")
        page = browser.submit("/project/demo/", f"/file/demo/{WHEEL}/yank", {"reason": "broken"})
        self.assertEqual((page.code, page.location), (303, "/project/demo/1.0/"))
        self.assertEqual(_fired(self.ix.cache.fetch(WHEEL)).yanked, "broken")
        shown = browser.follow(page).text
        self.assertIn("yanked.", shown)
        self.assertIn(f'action="/file/demo/{WHEEL}/unyank"', shown)
        page = browser.submit("/project/demo/", f"/file/demo/{WHEEL}/unyank", {})
        self.assertEqual(page.code, 303)
        self.assertIsNone(_fired(self.ix.cache.fetch(WHEEL)).yanked)

    def test_yank_needs_token_and_permission(self) -> None:
        """Without the token, or without write permission, the file is not yanked."""
        self.make_ui({"package.demo.user.bob": "rw"})
        self.seed("demo", "1.0")
        bob = self.browser()
        bob.log_in("bob")
        self.assertEqual(bob.post(f"/file/demo/{WHEEL}/yank", {"reason": "x"}, None).code, 403)
        carol = self.browser()
        carol.log_in("carol")
        page = carol.post(f"/file/demo/{WHEEL}/yank", {}, carol.get("/").csrf())
        self.assertEqual(page.code, 403)
        self.assertIsNone(_fired(self.ix.cache.fetch(WHEEL)).yanked)

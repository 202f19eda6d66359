"""The admin console: 403 for everyone but admins, and every operation from its forms."""

from __future__ import annotations

import gzip
import json

from tests.web.harness import _fired
from tests.web.ui.harness import Browser, UiTestCase

PAGES = (
    "/console/",
    "/console/users/",
    "/console/users/bob/",
    "/console/users/bob/delete",
    "/console/groups/",
    "/console/groups/devs/",
    "/console/groups/devs/delete",
    "/console/packages/",
    "/console/packages/demo/",
    "/console/acl.json.gz",
)


class ConsoleTestCase(UiTestCase):
    def admin(self) -> Browser:
        self.make_ui({"auth.signing_key": "s" * 32}, mutable=True)
        browser = self.browser()
        browser.log_in("alice")
        return browser

    @property
    def access(self) -> object:
        return self.ix.backends.access


class AccessTests(ConsoleTestCase):
    def test_403_for_everyone_but_admins(self) -> None:
        """Anonymous visitors and logged-in non-admins get 403 on every console page and
        form; an admin gets the pages."""
        browser = self.admin()
        anonymous = self.browser()
        bob = self.browser()
        bob.log_in("bob")
        for path in PAGES:
            self.assertEqual(anonymous.get(path).code, 403, path)
            self.assertEqual(bob.get(path).code, 403, path)
            self.assertEqual(browser.get(path).code, 200, path)
        token = bob.get("/").csrf()
        page = bob.post("/console/users/", {"username": "x", "password": "y"}, token)
        self.assertEqual(page.code, 403)
        self.assertNotIn(
            "x", [u["username"] for u in _fired(self.ix.backends.access.user_data(None))]
        )

    def test_forms_need_the_csrf_token(self) -> None:
        """A console form without the token changes nothing (403)."""
        browser = self.admin()
        page = browser.post("/console/users/", {"username": "x", "password": "y"}, None)
        self.assertEqual(page.code, 403)
        page = browser.post("/console/register", {"allow": "true"}, None)
        self.assertEqual(page.code, 403)
        self.assertFalse(_fired(self.ix.backends.access.allow_register()))


class UserTests(ConsoleTestCase):
    def test_create_user(self) -> None:
        """An admin creates a user, who can then log in."""
        browser = self.admin()
        page = browser.submit(
            "/console/users/", "/console/users/", {"username": "dave", "password": "davepw"}
        )
        self.assertEqual((page.code, page.location), (303, "/console/users/dave/"))
        self.assertIn("User dave created.", browser.follow(page).text)
        self.assertEqual(self.browser().log_in("dave", "davepw").location, "/")

    def test_approve_pending_user(self) -> None:
        """A pending user is listed and approved."""
        browser = self.admin()
        access = self.ix.backends.access
        _fired(access.create_user("erin", "erinpw", admin=False, pending=True))
        self.assertIn("erin", browser.get("/console/").text)
        page = browser.submit("/console/", "/console/users/erin/approve", {})
        self.assertEqual(page.code, 303)
        self.assertEqual(_fired(access.pending_users()), [])
        self.assertIsNotNone(_fired(access.user_data("erin")))

    def test_make_and_revoke_admin(self) -> None:
        """An admin makes bob an admin (he then reaches the console) and revokes it."""
        browser = self.admin()
        bob = self.browser()
        bob.log_in("bob")
        page = browser.submit("/console/users/bob/", "/console/users/bob/admin", {"admin": "true"})
        self.assertIn("bob is now an admin.", browser.follow(page).text)
        self.assertEqual(bob.get("/console/").code, 200)
        browser.submit("/console/users/bob/", "/console/users/bob/admin", {"admin": "false"})
        self.assertEqual(bob.get("/console/").code, 403)

    def test_last_admin_stays(self) -> None:
        """Demoting or deleting the only admin is refused with the reason shown."""
        browser = self.admin()
        page = browser.submit(
            "/console/users/alice/", "/console/users/alice/admin", {"admin": "false"}
        )
        self.assertIn("alice is the only admin", browser.follow(page).text)
        page = browser.submit("/console/users/alice/delete", "/console/users/alice/delete", {})
        self.assertIn("alice is the only admin", browser.follow(page).text)
        self.assertTrue(_fired(self.ix.backends.access.is_admin("alice")))

    def test_delete_user_ends_their_sessions(self) -> None:
        """Deleting a user (after confirming) removes them and ends their sessions."""
        browser = self.admin()
        carol = self.browser()
        carol.log_in("carol")
        confirm = browser.get("/console/users/carol/delete")
        self.assertIn("cannot be undone", confirm.text)
        page = browser.post("/console/users/carol/delete", {}, confirm.csrf())
        self.assertEqual((page.code, page.location), (303, "/console/users/"))
        self.assertIsNone(_fired(self.ix.backends.access.user_data("carol")))
        self.assertEqual(carol.get("/account").code, 303)

    def test_group_membership_from_the_user_page(self) -> None:
        """Add a user to a group and remove them again."""
        browser = self.admin()
        browser.submit(
            "/console/users/carol/",
            "/console/users/carol/groups",
            {"group": "devs", "action": "add"},
        )
        self.assertIn("devs", _fired(self.ix.backends.access.groups("carol")))
        browser.submit(
            "/console/users/carol/",
            "/console/users/carol/groups",
            {"group": "devs", "action": "remove"},
        )
        self.assertNotIn("devs", _fired(self.ix.backends.access.groups("carol")))


class GroupTests(ConsoleTestCase):
    def test_group_life(self) -> None:
        """Create a group, add and remove a member, delete the group."""
        browser = self.admin()
        page = browser.submit("/console/groups/", "/console/groups/", {"group": "ops"})
        self.assertEqual(page.location, "/console/groups/ops/")
        browser.submit(
            "/console/groups/ops/",
            "/console/groups/ops/members",
            {"username": "carol", "action": "add"},
        )
        self.assertEqual(_fired(self.ix.backends.access.group_members("ops")), ["carol"])
        browser.submit(
            "/console/groups/ops/",
            "/console/groups/ops/members",
            {"username": "carol", "action": "remove"},
        )
        self.assertEqual(_fired(self.ix.backends.access.group_members("ops")), [])
        page = browser.submit("/console/groups/ops/delete", "/console/groups/ops/delete", {})
        self.assertEqual(page.location, "/console/groups/")
        self.assertNotIn("ops", _fired(self.ix.backends.access.groups(None)))

    def test_builtin_group_refused(self) -> None:
        """Creating ``everyone`` is refused with the reason shown."""
        browser = self.admin()
        page = browser.follow(
            browser.submit("/console/groups/", "/console/groups/", {"group": "everyone"})
        )
        self.assertIn("reserved name", page.text)


class PackagePermissionTests(ConsoleTestCase):
    def test_grant_and_revoke(self) -> None:
        """Grant a user and a group permissions on a package, then revoke one."""
        browser = self.admin()
        lookup = browser.get("/console/packages/?name=Demo_Pkg")
        self.assertEqual(lookup.location, "/console/packages/demo-pkg/")
        base = "/console/packages/demo-pkg/"
        browser.submit(
            base,
            base + "permissions",
            {"kind": "user", "name": "carol", "perm": "write", "action": "grant"},
        )
        browser.submit(
            base,
            base + "permissions",
            {"kind": "group", "name": "devs", "perm": "read", "action": "grant"},
        )
        page = browser.get(base)
        self.assertIn("user carol</td><td>write", page.text)
        self.assertIn("group devs</td><td>read", page.text)
        self.assertEqual(
            _fired(self.ix.backends.access.user_permissions("demo-pkg")),
            {"carol": frozenset({"write"})},
        )
        browser.submit(
            base,
            base + "permissions",
            {"kind": "user", "name": "carol", "perm": "write", "action": "revoke"},
        )
        self.assertEqual(_fired(self.ix.backends.access.user_permissions("demo-pkg")), {})


class OverviewTests(ConsoleTestCase):
    def test_registration_toggle(self) -> None:
        """Open and close registration."""
        browser = self.admin()
        browser.submit("/console/", "/console/register", {"allow": "true"})
        self.assertTrue(_fired(self.ix.backends.access.allow_register()))
        self.assertIn("Registration is <strong>open</strong>", browser.get("/console/").text)
        browser.submit("/console/", "/console/register", {"allow": "false"})
        self.assertFalse(_fired(self.ix.backends.access.allow_register()))

    def test_signup_link(self) -> None:
        """A sign-up link is shown once and registers its user."""
        browser = self.admin()
        page = browser.submit("/console/", "/console/signup", {"username": "frank"})
        self.assertEqual(page.code, 200)
        url = page.text.split('id="signup-url"><code>')[1].split("</code>")[0]
        self.assertTrue(url.startswith("http://index.test/register?token=frank:"), url)
        newcomer = self.browser()
        path = url[len("http://index.test") :]
        form = newcomer.get(path)
        done = newcomer.post(
            "/register",
            {
                "username": "frank",
                "password": "p",
                "password2": "p",
                "token": form.text.split('name="token" value="')[1].split('"')[0],
            },
            form.csrf(),
        )
        self.assertEqual(done.code, 303, done.text)
        self.assertIsNotNone(_fired(self.ix.backends.access.user_data("frank")))

    def test_rebuild_and_acl_download(self) -> None:
        """Rebuild the cache from storage; download the access lists as gzip JSON."""
        browser = self.admin()
        self.seed("demo")
        page = browser.submit("/console/", "/console/rebuild", {})
        self.assertIn("Cache rebuilt from storage: 1 files.", browser.follow(page).text)
        blob = browser.get("/console/acl.json.gz")
        self.assertEqual(blob.header("content-type"), "application/gzip")
        data = json.loads(gzip.decompress(blob.body))
        self.assertIn("alice", [u["username"] for u in data["users"]])

    def test_read_only_backend(self) -> None:
        """With users in the config file the console shows them, offers no forms to change
        them, and refuses changes with the reason."""
        self.make_ui()
        browser = self.browser()
        browser.log_in("alice")
        page = browser.get("/console/users/")
        self.assertIn("bob", page.text)
        self.assertNotIn("New user", page.text)
        done = browser.follow(
            browser.post("/console/users/", {"username": "x", "password": "y"}, page.csrf())
        )
        self.assertIn("cannot change users", done.text)

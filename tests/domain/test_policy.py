"""The permission policy: pypicloud's table, the defaults, admins, and its invariants."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from pypicloud_tx.backends.access.config import ConfigAccessBackend
from pypicloud_tx.config.loader import parse_settings
from pypicloud_tx.domain.models import ANONYMOUS, Identity, Scope
from pypicloud_tx.domain.names import canonical
from pypicloud_tx.domain.policy import (
    AUTHENTICATED,
    EVERYONE,
    READ,
    WRITE,
    Policy,
    group_principal,
    principals,
)
from pypicloud_tx.runtime import Runtime
from tests.config import manual

RW = frozenset({READ, WRITE})
R = frozenset({READ})
NONE: frozenset[str] = frozenset()
LETTERS = {"rw": RW, "r": R, "": NONE}


class ManualTableTests(SynchronousTestCase):
    """The manual's sample config gives exactly the manual's table."""

    def test_table(self) -> None:
        """stevearc/dsa/donlan/anonymous x django_unchained/polite_requests/pyramid_head,
        with the config built by the loader from the manual's lines and the groups and
        admin flag asked of the config access backend."""
        settings = parse_settings(manual.raw_options())
        backend = ConfigAccessBackend.from_config(
            settings.access.options, Runtime.synchronous(settings=settings)
        )
        acls = self.successResultOf(backend.package_acls())
        policy = Policy(default_read=settings.default_read, default_write=settings.default_write)
        found = {}
        for user, row in manual.TABLE.items():
            if user == "everyone":
                identity = ANONYMOUS
            else:
                identity = Identity(
                    username=user,
                    groups=frozenset(self.successResultOf(backend.groups(user))),
                    is_admin=self.successResultOf(backend.is_admin(user)),
                )
            found[user] = {
                package: policy.permissions(identity, acls.get(canonical(package)))
                for package in row
            }
        expected = {
            user: {package: LETTERS[perms] for package, perms in row.items()}
            for user, row in manual.TABLE.items()
        }
        self.assertEqual(found, expected)

    def test_unlisted_package_uses_defaults(self) -> None:
        """A package the manual's config does not mention follows pypi.default_read
        (authenticated by default): every user reads it, anonymous callers do not."""
        settings = parse_settings(manual.raw_options())
        policy = Policy(default_read=settings.default_read, default_write=settings.default_write)
        self.assertEqual(policy.permissions(Identity("donlan", frozenset({"brotatos"})), None), R)
        self.assertEqual(policy.permissions(ANONYMOUS, None), NONE)


class DefaultsTests(SynchronousTestCase):
    """pypi.default_read and pypi.default_write apply to packages without explicit entries."""

    def test_manual_defaults(self) -> None:
        """Default: authenticated users read, nobody but admins writes."""
        policy = Policy()
        self.assertEqual(policy.permissions(ANONYMOUS, None), NONE)
        self.assertEqual(policy.permissions(Identity("u"), None), R)
        self.assertEqual(policy.permissions(Identity("u"), {}), R)
        self.assertEqual(policy.permissions(Identity("root", is_admin=True), None), RW)

    def test_everyone_reads_group_writes(self) -> None:
        """default_read = everyone lets anonymous callers read; default_write = a group
        lets its members write."""
        policy = Policy(default_read=(EVERYONE,), default_write=("release",))
        self.assertEqual(policy.permissions(ANONYMOUS, None), R)
        self.assertEqual(policy.permissions(Identity("u"), None), R)
        self.assertEqual(policy.permissions(Identity("u", frozenset({"release"})), None), RW)

    def test_authenticated_writes(self) -> None:
        """default_write = authenticated lets any logged-in user write, not anonymous ones."""
        policy = Policy(default_read=(EVERYONE,), default_write=(AUTHENTICATED,))
        self.assertEqual(policy.permissions(Identity("u"), None), RW)
        self.assertEqual(policy.permissions(ANONYMOUS, None), R)

    def test_explicit_acl_ignores_defaults(self) -> None:
        """Once a package has any entry, the defaults no longer grant anything on it."""
        policy = Policy(default_read=(EVERYONE,), default_write=(AUTHENTICATED,))
        acl = {"user:owner": RW}
        self.assertEqual(policy.permissions(Identity("u"), acl), NONE)
        self.assertEqual(policy.permissions(ANONYMOUS, acl), NONE)
        self.assertEqual(policy.permissions(Identity("owner"), acl), RW)

    def test_readable(self) -> None:
        """readable() keeps the caller's readable names in order; admins see everything."""
        policy = Policy()
        acls = {"secret": {"group:ops": R}, "public": {EVERYONE: R}}
        names = ["secret", "open", "public"]
        self.assertEqual(policy.readable(ANONYMOUS, names, acls), ["public"])
        self.assertEqual(policy.readable(Identity("u"), names, acls), ["open", "public"])
        self.assertEqual(policy.readable(Identity("o", frozenset({"ops"})), names, acls), names)
        self.assertEqual(policy.readable(Identity("a", is_admin=True), names, acls), names)
        self.assertTrue(policy.can(Identity("o", frozenset({"ops"})), READ, acls["secret"]))
        self.assertFalse(policy.can(Identity("o", frozenset({"ops"})), WRITE, acls["secret"]))

    def test_token_scope_narrows(self) -> None:
        """An API token keeps only its scope's permissions, on its scope's packages, and never
        more than its owner has (nor less than an anonymous caller)."""
        policy = Policy(default_read=(AUTHENTICATED,), default_write=(AUTHENTICATED,))
        upload_one = Identity("u", scope=Scope(frozenset({"mine"}), RW))
        self.assertEqual(policy.permissions(upload_one, None, "mine"), RW)
        self.assertEqual(policy.permissions(upload_one, None, "other"), NONE)
        self.assertEqual(policy.permissions(upload_one, None), NONE)
        read_all = Identity("u", scope=Scope(frozenset(), R))
        self.assertEqual(policy.permissions(read_all, None, "other"), R)
        self.assertEqual(policy.permissions(read_all, {"user:someone": RW}, "locked"), NONE)
        admin = Identity("root", is_admin=True, scope=Scope(frozenset({"mine"}), R))
        self.assertEqual(policy.permissions(admin, None, "mine"), R)
        self.assertEqual(policy.permissions(admin, None, "other"), NONE)

    def test_token_scope_readable(self) -> None:
        """readable() lists the packages in a token's scope, plus what anyone may read."""
        policy = Policy(default_read=(AUTHENTICATED,))
        names = ["a", "b", "c"]
        scoped = Identity("u", scope=Scope(frozenset({"b", "zz"}), R))
        self.assertEqual(policy.readable(scoped, names, {}), ["b"])
        self.assertEqual(policy.readable(scoped, names, {"c": {EVERYONE: R}}), ["b", "c"])
        write_only = Identity("u", scope=Scope(frozenset(), frozenset({WRITE})))
        self.assertEqual(policy.readable(write_only, names, {}), [])
        everyone = Policy(default_read=(EVERYONE,))
        self.assertEqual(everyone.readable(write_only, names, {}), names)

    def test_principals(self) -> None:
        """Anonymous callers are only everyone; users are also authenticated, themselves
        and their groups; the built-in group names stay themselves."""
        self.assertEqual(principals(ANONYMOUS), {EVERYONE})
        self.assertEqual(
            principals(Identity("u", frozenset({"ops", "everyone"}))),
            {EVERYONE, AUTHENTICATED, "user:u", "group:ops"},
        )
        self.assertEqual(group_principal("authenticated"), AUTHENTICATED)
        self.assertEqual(group_principal("ops"), "group:ops")


names = st.sampled_from(["a", "b", "c"])
groups = st.frozensets(st.sampled_from(["g1", "g2", "g3"]), max_size=3)
perm_sets = st.sampled_from([R, RW])
principal_names = st.one_of(
    st.sampled_from([EVERYONE, AUTHENTICATED]),
    names.map(lambda n: f"user:{n}"),
    st.sampled_from(["g1", "g2", "g3"]).map(lambda g: f"group:{g}"),
)
acls = st.one_of(st.none(), st.dictionaries(principal_names, perm_sets, max_size=5))
default_groups = st.lists(st.sampled_from([EVERYONE, AUTHENTICATED, "g1", "g2"]), max_size=3)
policies = st.builds(
    Policy, default_read=default_groups.map(tuple), default_write=default_groups.map(tuple)
)
identities = st.one_of(
    st.just(ANONYMOUS),
    st.builds(Identity, username=names, groups=groups, is_admin=st.booleans()),
)


class PolicyPropertyTests(SynchronousTestCase):
    """Invariants of the policy over generated ACLs, defaults and callers."""

    @given(policies, st.builds(Identity, username=names, groups=groups), acls)
    def test_admin_has_everything(self, policy: Policy, identity: Identity, acl: dict) -> None:
        """An admin can read and write every package, whatever its ACL and the defaults."""
        admin = Identity(identity.username, identity.groups, is_admin=True)
        self.assertEqual(policy.permissions(admin, acl), RW)

    @given(
        policies,
        policies,
        identities,
        st.dictionaries(principal_names, perm_sets, min_size=1, max_size=5),
    )
    def test_explicit_acl_ignores_defaults(
        self, one: Policy, other: Policy, identity: Identity, acl: dict
    ) -> None:
        """With a non-empty ACL, the defaults make no difference."""
        self.assertEqual(one.permissions(identity, acl), other.permissions(identity, acl))

    @given(policies, names, groups, groups, acls)
    def test_monotonic_in_groups(
        self, policy: Policy, name: str, some: frozenset, more: frozenset, acl: dict
    ) -> None:
        """Joining more groups never takes a permission away."""
        fewer = policy.permissions(Identity(name, some), acl)
        self.assertLessEqual(fewer, policy.permissions(Identity(name, some | more), acl))

    @given(policies, identities, acls)
    def test_logging_in_never_loses(self, policy: Policy, identity: Identity, acl: dict) -> None:
        """Whatever an anonymous caller may do, a logged-in one may do too."""
        self.assertLessEqual(policy.permissions(ANONYMOUS, acl), policy.permissions(identity, acl))

    @given(policies, identities, acls)
    def test_only_known_permissions(self, policy: Policy, identity: Identity, acl: dict) -> None:
        """The result is always a subset of {read, write}."""
        self.assertLessEqual(policy.permissions(identity, acl), RW)

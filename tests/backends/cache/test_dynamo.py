"""The DynamoDB cache against the ICache conformance suite on moto_server, and what is
particular to DynamoDB: table creation, item layout, pagination, pypicloud's tables, races,
the version token and an unreachable endpoint."""

from __future__ import annotations

import base64
import datetime as _dt
import os
import socket
import time
import uuid
from typing import Any
from urllib.parse import urlsplit

import attrs
import boto3
from botocore.config import Config
from twisted.internet.defer import Deferred, DeferredList
from twisted.trial.unittest import SynchronousTestCase, TestCase

from pypicloud_tx.backends._threads import ThreadPoolService
from pypicloud_tx.backends.cache.dynamo import (
    META,
    DynamoCache,
    decode_time,
    encode_time,
    endpoint_url,
)
from pypicloud_tx.backends.cache.memo import MemoizedCache
from pypicloud_tx.config.options import parse_options
from pypicloud_tx.errors import BackendUnavailable, ConfigError
from pypicloud_tx.interfaces import ICache
from pypicloud_tx.runtime import Runtime
from tests.realservices import require_service

from .conformance import T0, ICacheConformance, every_field, make_file

UTC = _dt.UTC


def parse(**raw: str) -> DynamoCache.Options:
    """Options as the configuration loader would parse ``db.*`` lines."""
    return parse_options(DynamoCache.Options, "db", raw)


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound once, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class MotoMixin:
    """Caches on moto_server, each test in tables of its own namespace, dropped afterwards."""

    addCleanup: Any
    successResultOf: Any

    def connect(self) -> None:
        url = require_service("PPC_TEST_AWS_URL", "moto_server (DynamoDB)")
        parts = urlsplit(url)
        self.host, self.port = str(parts.hostname), int(parts.port or 80)
        self.admin = boto3.client(
            "dynamodb",
            endpoint_url=url,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        self.addCleanup(self.admin.close)

    def namespace(self) -> str:
        """A new table-name prefix; its tables are deleted when the test ends."""
        prefix = f"ppc-test-{uuid.uuid4().hex[:12]}-"
        self.addCleanup(self.drop_tables, prefix)
        return prefix

    def drop_tables(self, prefix: str) -> None:
        names: list[str] = []
        kwargs: dict[str, Any] = {}
        for _ in range(1000):  # bounded: moto lists 100 names a page
            page = self.admin.list_tables(**kwargs)
            names.extend(n for n in page["TableNames"] if n.startswith(prefix))
            if "LastEvaluatedTableName" not in page:
                break
            kwargs["ExclusiveStartTableName"] = page["LastEvaluatedTableName"]
        for name in names:
            self.admin.delete_table(TableName=name)

    def options(self, namespace: str | None = None, **raw: str) -> DynamoCache.Options:
        values = {
            "host": self.host,
            "port": str(self.port),
            "aws_access_key_id": "testing",
            "aws_secret_access_key": "testing",
            "namespace": self.namespace() if namespace is None else namespace,
            **raw,
        }
        return parse(**values)

    def build(
        self, namespace: str | None = None, runtime: Runtime | None = None, **raw: str
    ) -> DynamoCache:
        return DynamoCache.from_config(
            self.options(namespace, **raw), runtime or Runtime.synchronous()
        )

    def started(self, namespace: str | None = None, **raw: str) -> DynamoCache:
        cache = self.build(namespace, **raw)
        self.successResultOf(cache.start())
        self.addCleanup(lambda: self.successResultOf(cache.stop()))
        return cache

    def raw_item(self, table: str, key: dict[str, Any]) -> dict[str, Any] | None:
        item: dict[str, Any] | None = self.admin.get_item(
            TableName=table, Key=key, ConsistentRead=True
        ).get("Item")
        return item

    def raw_scan(self, table: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        kwargs: dict[str, Any] = {"TableName": table, "ConsistentRead": True}
        for _ in range(10_000):
            page = self.admin.scan(**kwargs)
            items.extend(page["Items"])
            if "LastEvaluatedKey" not in page:
                break
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        return items


class DynamoTests(ICacheConformance, MotoMixin, SynchronousTestCase):
    """DynamoCache on moto_server passes the shared suite."""

    def setUp(self) -> None:
        self.connect()

    def make_cache(self) -> ICache:
        return self.started()


class PaginatedDynamoTests(ICacheConformance, MotoMixin, SynchronousTestCase):
    """DynamoCache passes the shared suite when every Scan and Query page holds one item, so
    each read must follow LastEvaluatedKey to the end."""

    def setUp(self) -> None:
        self.connect()

    def make_cache(self) -> ICache:
        cache = self.started()
        cache.page_size = 1
        return cache


class ThreadedDynamoTests(ICacheConformance, MotoMixin, TestCase):
    """DynamoCache passes the shared suite with boto3 on a real thread pool."""

    def setUp(self) -> None:
        self.connect()

    def make_cache(self) -> Deferred[ICache]:
        from twisted.internet import reactor

        pool = ThreadPoolService(reactor, "db", 4)  # type: ignore[arg-type]
        pool.startService()
        self.addCleanup(pool.stopService)
        runtime = Runtime(reactor=reactor, threads=lambda name, size: pool.run)
        cache = self.build(runtime=runtime)
        self.addCleanup(cache.stop)
        return cache.start().addCallback(lambda _: cache)


class TableTests(MotoMixin, SynchronousTestCase):
    """The tables: created on first start, in pypicloud's layout, found again later."""

    def setUp(self) -> None:
        self.connect()

    def test_created_on_first_start(self) -> None:
        """start() creates both tables (on-demand, ACTIVE) with pypicloud's keys and the
        name-index, and a #meta item saying the schema."""
        namespace = self.namespace()
        cache = self.started(namespace)
        self.assertEqual(
            (cache.files_table, cache.summary_table),
            (namespace + "DynamoPackage", namespace + "PackageSummary"),
        )
        files = self.admin.describe_table(TableName=cache.files_table)["Table"]
        self.assertEqual(files["TableStatus"], "ACTIVE")
        self.assertEqual(files["KeySchema"], [{"AttributeName": "filename", "KeyType": "HASH"}])
        self.assertEqual(files["BillingModeSummary"]["BillingMode"], "PAY_PER_REQUEST")
        [index] = files["GlobalSecondaryIndexes"]
        self.assertEqual(index["IndexName"], "name-index")
        self.assertEqual(index["KeySchema"], [{"AttributeName": "name", "KeyType": "HASH"}])
        self.assertEqual(index["Projection"]["ProjectionType"], "ALL")
        summaries = self.admin.describe_table(TableName=cache.summary_table)["Table"]
        self.assertEqual(summaries["KeySchema"], [{"AttributeName": "name", "KeyType": "HASH"}])
        meta = self.raw_item(cache.summary_table, {"name": {"S": META}})
        assert meta is not None
        self.assertEqual(meta["schema"], {"N": "1"})

    def test_tablenames_option(self) -> None:
        """db.tablenames names both tables, still after db.namespace."""
        namespace = self.namespace()
        cache = self.started(namespace, tablenames="Pkgs Sums")
        self.assertEqual(cache.files_table, namespace + "Pkgs")
        self.assertEqual(cache.summary_table, namespace + "Sums")
        for table in (namespace + "Pkgs", namespace + "Sums"):
            status = self.admin.describe_table(TableName=table)["Table"]["TableStatus"]
            self.assertEqual(status, "ACTIVE")

    def test_existing_tables_kept(self) -> None:
        """A second start (another process, a restart) uses the tables and data it finds."""
        namespace = self.namespace()
        first = self.started(namespace)
        self.successResultOf(first.save(every_field()))
        second = self.started(namespace)
        self.assertEqual(self.successResultOf(second.distinct()), ["zaphod-beeblebrox"])
        fetched = self.successResultOf(second.fetch(every_field().filename))
        assert fetched is not None
        self.assertEqual(fetched.to_record(), every_field().to_record())

    def test_foreign_table_refused(self) -> None:
        """A packages table without pypicloud's name-index fails start() with a ConfigError
        naming db.tablenames, and is left alone."""
        namespace = self.namespace()
        self.admin.create_table(
            TableName=namespace + "DynamoPackage",
            AttributeDefinitions=[{"AttributeName": "filename", "AttributeType": "S"}],
            KeySchema=[{"AttributeName": "filename", "KeyType": "HASH"}],
            BillingMode="PAY_PER_REQUEST",
        )
        cache = self.build(namespace)
        failure = self.failureResultOf(cache.start(), ConfigError)
        self.assertIn("db.tablenames", failure.value.message)
        self.assertIn("name-index", failure.value.message)
        table = self.admin.describe_table(TableName=namespace + "DynamoPackage")["Table"]
        self.assertEqual(table.get("GlobalSecondaryIndexes", []), [])

    def test_missing_table_reported(self) -> None:
        """A table deleted behind the cache's back makes reads fail with BackendUnavailable
        and the health check say so."""
        cache = self.started()
        self.admin.delete_table(TableName=cache.files_table)
        failure = self.failureResultOf(cache.fetch("pkg-1.0.tar.gz"), BackendUnavailable)
        self.assertIn("table is missing", failure.value.message)
        healthy, message = self.successResultOf(cache.check_health())
        self.assertTrue(healthy)  # the summaries table still answers
        self.admin.delete_table(TableName=cache.summary_table)
        healthy, message = self.successResultOf(cache.check_health())
        self.assertFalse(healthy)
        self.assertIn("missing", message)


class ItemTests(MotoMixin, SynchronousTestCase):
    """What the items hold: unicode, empty strings, large records, timestamps."""

    def setUp(self) -> None:
        self.connect()

    def assertNoEmptyStrings(self, value: Any) -> None:
        """No attribute value anywhere in ``value`` is an empty string (DynamoDB refused them,
        and still refuses them in keys)."""
        if isinstance(value, dict):
            self.assertNotEqual(value.get("S"), "", value)
            for inner in value.values():
                self.assertNoEmptyStrings(inner)
        elif isinstance(value, list):
            for inner in value:
                self.assertNoEmptyStrings(inner)

    def test_empty_summary(self) -> None:
        """A file with an empty summary (twine sends none) is stored without a summary
        attribute and without any empty string, and reads back with summary ""."""
        cache = self.started()
        file = make_file(summary="", yanked="", metadata={"description": "", "keywords": ""})
        self.successResultOf(cache.save(file))
        item = self.raw_item(cache.files_table, {"filename": {"S": file.filename}})
        assert item is not None
        self.assertNotIn("summary", item)
        self.assertNoEmptyStrings(item)
        for summary in self.raw_scan(cache.summary_table):
            self.assertNoEmptyStrings(summary)
        fetched = self.successResultOf(cache.fetch(file.filename))
        assert fetched is not None
        self.assertEqual(fetched.to_record(), file.to_record())
        [project] = self.successResultOf(cache.summary())
        self.assertEqual(project.summary, "")

    def test_unicode_stored_as_text(self) -> None:
        """Unicode summaries are stored as real text in the summary attributes, searchable,
        and the record keeps every non-ASCII character."""
        cache = self.started()
        file = every_field()
        self.successResultOf(cache.save(file))
        item = self.raw_item(cache.files_table, {"filename": {"S": file.filename}})
        assert item is not None
        self.assertEqual(item["summary"], {"S": "Ünïcödé ☃ summary — 包 🚀"})
        self.assertIn("Natural Language :: 日本語", item["record"]["S"])
        [project] = self.successResultOf(cache.summary())
        self.assertEqual(project.summary, "Ünïcödé ☃ summary — 包 🚀")
        found = self.successResultOf(cache.search({"summary": ["包 🚀"]}, "or"))
        self.assertEqual([f.filename for f in found], [file.filename])

    def test_timestamps_as_flywheel(self) -> None:
        """last_modified is Unix seconds with microseconds, as pypicloud's flywheel wrote it,
        and converts back exactly."""
        cache = self.started()
        file = make_file()
        self.successResultOf(cache.save(file))
        item = self.raw_item(cache.files_table, {"filename": {"S": file.filename}})
        assert item is not None
        self.assertEqual(item["last_modified"], {"N": "1714564800.123456"})
        self.assertEqual(decode_time(item["last_modified"]["N"]), T0)
        self.assertEqual(decode_time("1714564800"), T0.replace(microsecond=0))
        before = _dt.datetime(1969, 7, 20, 20, 17, 40, 5, tzinfo=UTC)
        self.assertEqual(decode_time(encode_time(before)), before)

    def test_large_record_compressed(self) -> None:
        """A record above 64 KiB (a long description) is stored compressed and reads back
        whole."""
        cache = self.started()
        file = make_file(metadata={"description": "A long README with ☃. " * 20_000})
        self.successResultOf(cache.save(file))
        item = self.raw_item(cache.files_table, {"filename": {"S": file.filename}})
        assert item is not None
        self.assertIn("record_z", item)
        self.assertNotIn("record", item)
        fetched = self.successResultOf(cache.fetch(file.filename))
        assert fetched is not None
        self.assertEqual(fetched.metadata, file.metadata)
        self.assertEqual(self.successResultOf(cache.all("pkg"))[0].metadata, file.metadata)

    def test_oversized_record_loses_description(self) -> None:
        """A record that would not fit DynamoDB's 400 KB item limit even compressed is
        cached without its long description; everything else is kept and the save succeeds."""
        cache = self.started()
        noise = base64.b64encode(os.urandom(450_000)).decode()
        file = make_file(summary="big", metadata={"description": noise, "requires_dist": ["attrs"]})
        self.successResultOf(cache.save(file))
        fetched = self.successResultOf(cache.fetch(file.filename))
        assert fetched is not None
        self.assertNotIn("description", fetched.metadata)
        self.assertEqual(fetched.metadata["requires_dist"], ["attrs"])
        self.assertEqual(fetched.summary, "big")
        self.assertEqual(fetched.sha256, file.sha256)


class SummaryTests(MotoMixin, SynchronousTestCase):
    """The per-project summary items stay right as files come and go."""

    def setUp(self) -> None:
        self.connect()

    def summary_item(self, cache: DynamoCache, name: str) -> dict[str, Any] | None:
        return self.raw_item(cache.summary_table, {"name": {"S": name}})

    def test_counts(self) -> None:
        """The summary item counts files and files per version; a version without files
        loses its count and a project without files loses its item."""
        cache = self.started()
        sdist, wheel = make_file(version="1.0"), make_file(version="1.0", kind="wheel")
        newer = make_file(version="1.1", minutes=1)
        for f in (sdist, wheel, newer):
            self.successResultOf(cache.save(f))
        item = self.summary_item(cache, "pkg")
        assert item is not None
        self.assertEqual(item["file_count"], {"N": "3"})
        self.assertEqual((item["v:1.0"], item["v:1.1"]), ({"N": "2"}, {"N": "1"}))
        self.successResultOf(cache.delete(newer))
        item = self.summary_item(cache, "pkg")
        assert item is not None
        self.assertNotIn("v:1.1", item)
        self.assertEqual(item["file_count"], {"N": "2"})
        self.successResultOf(cache.delete(sdist))
        self.successResultOf(cache.delete(wheel))
        self.assertIsNone(self.summary_item(cache, "pkg"))
        self.assertEqual(self.successResultOf(cache.summary()), [])

    def test_saving_again_counts_once(self) -> None:
        """Saving the same filename again (yanking, say) does not count it twice."""
        cache = self.started()
        file = make_file()
        for _ in range(3):
            self.successResultOf(cache.save(attrs.evolve(file, yanked="bad")))
        item = self.summary_item(cache, "pkg")
        assert item is not None
        self.assertEqual((item["file_count"], item["v:1.0"]), ({"N": "1"}, {"N": "1"}))

    def test_version_changed_in_place(self) -> None:
        """Saving a filename again with another version moves its count to that version."""
        cache = self.started()
        self.successResultOf(cache.save(make_file(version="1.0", filename="pkg.tar.gz")))
        self.successResultOf(cache.save(make_file(version="2.0", filename="pkg.tar.gz")))
        item = self.summary_item(cache, "pkg")
        assert item is not None
        self.assertNotIn("v:1.0", item)
        [project] = self.successResultOf(cache.summary())
        self.assertEqual((project.stable, project.unstable), ("2.0", "2.0"))

    def test_project_changed_in_place(self) -> None:
        """Saving a filename again under another project moves it: the old project goes."""
        cache = self.started()
        self.successResultOf(cache.save(make_file("old", filename="x-1.0.tar.gz")))
        self.successResultOf(cache.save(make_file("new", filename="x-1.0.tar.gz")))
        self.assertEqual(self.successResultOf(cache.distinct()), ["new"])
        self.assertEqual(self.successResultOf(cache.all("old")), [])

    def test_newest_deleted(self) -> None:
        """Deleting the latest upload makes the one before it the project's last_modified and
        summary."""
        cache = self.started()
        files = [make_file(version=f"1.{i}", minutes=i, summary=f"s{i}") for i in range(3)]
        for f in files:
            self.successResultOf(cache.save(f))
        self.successResultOf(cache.delete(files[2]))
        [project] = self.successResultOf(cache.summary())
        self.assertEqual(project.last_modified, files[1].upload_time)
        self.assertEqual(project.summary, "s1")
        self.assertEqual(project.unstable, "1.1")

    def test_newest_saved_older(self) -> None:
        """Saving the latest upload again with an earlier time hands last_modified to the
        file that is now the latest."""
        cache = self.started()
        first = make_file(version="1.0", minutes=5, summary="first")
        second = make_file(version="1.1", minutes=10, summary="second")
        self.successResultOf(cache.save(first))
        self.successResultOf(cache.save(second))
        self.successResultOf(cache.save(attrs.evolve(second, upload_time=T0, summary="back")))
        [project] = self.successResultOf(cache.summary())
        self.assertEqual(project.last_modified, first.upload_time)
        self.assertEqual(project.summary, "first")

    def test_older_upload_does_not_take_over(self) -> None:
        """A file uploaded earlier than the newest (a reload, a backfill) leaves the
        project's last_modified and summary alone."""
        cache = self.started()
        self.successResultOf(cache.save(make_file(version="2.0", minutes=10, summary="new")))
        self.successResultOf(cache.save(make_file(version="1.0", minutes=1, summary="old")))
        [project] = self.successResultOf(cache.summary())
        self.assertEqual(project.summary, "new")
        self.assertEqual(project.last_modified, T0 + _dt.timedelta(minutes=10))


class ManyItemsTests(MotoMixin, SynchronousTestCase):
    """More items than one request may carry: batches of 25 writes and 100 reads, and pages."""

    def setUp(self) -> None:
        self.connect()

    def test_many_files(self) -> None:
        """A reload of 230 files over 12 projects writes them all in batches (in both modes),
        and reads page through them; a search matching all of them fetches more than 100."""
        files = [
            make_file(f"proj{i % 12}", f"1.{i}", minutes=i, summary=f"common {i}")
            for i in range(230)
        ]
        for graceful in (False, True):
            cache = self.started()
            cache.page_size = 7
            self.successResultOf(cache.save(make_file("stale", "0.1")))
            self.successResultOf(cache.reload_from_storage(files, graceful))
            names = sorted({f.name for f in files})
            self.assertEqual(self.successResultOf(cache.distinct()), names)
            self.assertEqual(len(self.successResultOf(cache.summary())), 12)
            self.assertEqual(len(self.successResultOf(cache.all("proj3"))), 19)
            found = self.successResultOf(cache.search({"summary": ["common"]}, "or"))
            self.assertEqual(len(found), 230)
            self.assertEqual(len(self.raw_scan(cache.files_table)), 230)
            self.successResultOf(cache.clear_all())
            self.assertEqual(self.raw_scan(cache.files_table), [])
            self.assertEqual([i["name"]["S"] for i in self.raw_scan(cache.summary_table)], [META])

    def test_graceful_reload_keeps_unchanged(self) -> None:
        """A graceful reload rewrites only what changed: unchanged items keep their bytes
        and nothing is emptied first."""
        cache = self.started()
        keep, change = make_file("keep"), make_file("change", summary="old")
        self.successResultOf(cache.reload_from_storage([keep, change], False))
        before = self.raw_item(cache.files_table, {"filename": {"S": keep.filename}})
        self.successResultOf(
            cache.reload_from_storage([keep, attrs.evolve(change, summary="new")], True)
        )
        self.assertEqual(
            self.raw_item(cache.files_table, {"filename": {"S": keep.filename}}), before
        )
        [changed, _] = self.successResultOf(cache.summary())
        self.assertEqual((changed.name, changed.summary), ("change", "new"))


class PypicloudTablesTests(MotoMixin, SynchronousTestCase):
    """Tables written by pypicloud (flywheel) are adopted: readable at once, and kept right
    as files change."""

    def setUp(self) -> None:
        self.connect()
        self.ns = self.namespace()
        for table, key in (("DynamoPackage", "filename"), ("PackageSummary", "name")):
            extra: dict[str, Any] = {}
            attributes = [{"AttributeName": key, "AttributeType": "S"}]
            if key == "filename":
                attributes.append({"AttributeName": "name", "AttributeType": "S"})
                extra["GlobalSecondaryIndexes"] = [
                    {
                        "IndexName": "name-index",
                        "KeySchema": [{"AttributeName": "name", "KeyType": "HASH"}],
                        "Projection": {"ProjectionType": "ALL"},
                        "ProvisionedThroughput": {
                            "ReadCapacityUnits": 5,
                            "WriteCapacityUnits": 5,
                        },
                    }
                ]
            self.admin.create_table(
                TableName=self.ns + table,
                AttributeDefinitions=attributes,
                KeySchema=[{"AttributeName": key, "KeyType": "HASH"}],
                ProvisionedThroughput={"ReadCapacityUnits": 5, "WriteCapacityUnits": 5},
                **extra,
            )

    def put_package(self, name: str, version: str, filename: str, when: str, **more: Any) -> None:
        item: dict[str, Any] = {
            "filename": {"S": filename},
            "name": {"S": name},
            "version": {"S": version},
            "last_modified": {"N": when},
            **more,
        }
        self.admin.put_item(TableName=self.ns + "DynamoPackage", Item=item)

    def put_summary(self, name: str, summary: str, when: str) -> None:
        self.admin.put_item(
            TableName=self.ns + "PackageSummary",
            Item={"name": {"S": name}, "summary": {"S": summary}, "last_modified": {"N": when}},
        )

    def write_pypicloud_data(self) -> None:
        data = {
            "M": {
                "hash_sha256": {"S": "ab" * 32},
                "hash_md5": {"S": "cd" * 16},
                "uploader": {"S": "alice"},
                "requires_python": {"S": ">=3.8"},
                "downloads": {"N": "7"},
            }
        }
        self.put_package(
            "my-pkg", "1.0", "my_pkg-1.0.tar.gz", "1600000000.5", summary={"S": "Mine"}, data=data
        )
        self.put_package("my-pkg", "1.1b1", "my_pkg-1.1b1.tar.gz", "1600000100")
        # flywheel before 0.5 kept the dict as JSON text
        legacy = {"S": '{"hash_sha256": "' + "ef" * 32 + '"}'}
        self.put_package("other", "3.0", "other-3.0.tar.gz", "1500000000", data=legacy)
        self.put_summary("my-pkg", "Mine", "1600000100")
        self.put_summary("other", "Other", "1500000000")

    def test_read(self) -> None:
        """Files pypicloud cached are readable: names, versions, times, summaries and the
        digests it kept in ``data``; summaries count its files."""
        self.write_pypicloud_data()
        cache = self.started(self.ns)
        self.assertEqual(self.successResultOf(cache.distinct()), ["my-pkg", "other"])
        fetched = self.successResultOf(cache.fetch("my_pkg-1.0.tar.gz"))
        assert fetched is not None
        self.assertEqual((fetched.name, fetched.version), ("my-pkg", "1.0"))
        self.assertEqual(fetched.sha256, "ab" * 32)
        self.assertEqual(fetched.md5, "cd" * 16)
        self.assertEqual(fetched.uploader, "alice")
        self.assertEqual(fetched.requires_python, ">=3.8")
        self.assertEqual(fetched.metadata, {"downloads": 7})
        self.assertEqual(fetched.summary, "Mine")
        self.assertEqual(
            fetched.upload_time, _dt.datetime(2020, 9, 13, 12, 26, 40, 500000, tzinfo=UTC)
        )
        self.assertEqual(
            sorted(f.version for f in self.successResultOf(cache.all("my-pkg"))), ["1.0", "1.1b1"]
        )
        summaries = self.successResultOf(cache.summary())
        self.assertEqual([s.name for s in summaries], ["my-pkg", "other"])
        self.assertEqual((summaries[0].stable, summaries[0].unstable), ("1.0", "1.1b1"))
        self.assertEqual(summaries[1].summary, "")  # from the file, which has none
        other = self.successResultOf(cache.fetch("other-3.0.tar.gz"))
        assert other is not None
        self.assertEqual(other.sha256, "ef" * 32)
        found = self.successResultOf(cache.search({"summary": ["mine"]}, "or"))
        self.assertEqual([f.filename for f in found], ["my_pkg-1.0.tar.gz"])

    def test_changes_after_adoption(self) -> None:
        """Saving and deleting files keeps the adopted counts right, down to the last file."""
        self.write_pypicloud_data()
        cache = self.started(self.ns)
        self.successResultOf(cache.save(make_file("my-pkg", "2.0", filename="my_pkg-2.0.tar.gz")))
        for filename, version in (
            ("my_pkg-1.0.tar.gz", "1.0"),
            ("my_pkg-1.1b1.tar.gz", "1.1b1"),
        ):
            self.successResultOf(cache.delete(make_file("my-pkg", version, filename=filename)))
        [summary, _] = self.successResultOf(cache.summary())
        self.assertEqual((summary.stable, summary.unstable), ("2.0", "2.0"))
        self.successResultOf(cache.delete(make_file("my-pkg", "2.0", filename="my_pkg-2.0.tar.gz")))
        self.assertEqual(self.successResultOf(cache.distinct()), ["other"])

    def test_summary_written_by_pypicloud_later(self) -> None:
        """A summary item pypicloud writes while this cache runs (a mixed fleet during an
        upgrade) lists its project, and the next save or delete counts it afresh."""
        cache = self.started(self.ns)
        self.successResultOf(cache.save(make_file("mixed", "1.0")))
        self.put_package("mixed", "1.1", "mixed-1.1.tar.gz", "1800000000")
        self.put_summary("mixed", "from pypicloud", "1800000000")
        self.assertEqual(self.successResultOf(cache.distinct()), ["mixed"])
        [summary] = self.successResultOf(cache.summary())
        self.assertEqual(summary.unstable, "1.1")
        self.successResultOf(cache.save(make_file("mixed", "1.2")))
        item = self.raw_item(cache.summary_table, {"name": {"S": "mixed"}})
        assert item is not None
        self.assertEqual(item["file_count"], {"N": "3"})
        self.put_summary("mixed", "again", "1800000000")
        for version in ("1.0", "1.1", "1.2"):
            self.successResultOf(cache.delete(make_file("mixed", version)))
        self.assertEqual(self.successResultOf(cache.distinct()), [])


class VersionTokenTests(MotoMixin, SynchronousTestCase):
    """The version token: one cheap read, changed by every write of any process, answered
    once it has settled."""

    def setUp(self) -> None:
        self.connect()
        self.now = 1000.0

    def clocked(self, namespace: str) -> DynamoCache:
        cache = self.started(namespace)
        cache._clock = lambda: self.now
        return cache

    def settled(self, cache: DynamoCache) -> object:
        """The token once this process has seen it for settle_seconds."""
        self.successResultOf(cache.version_token())
        self.now += cache.settle_seconds
        return self.successResultOf(cache.version_token())

    def test_changes_with_every_write(self) -> None:
        """Every save, delete, clear and reload changes the token, including those made by
        another cache on the same tables; reads leave it alone."""
        namespace = self.namespace()
        cache, other = self.clocked(namespace), self.started(namespace)
        seen = [self.settled(cache)]
        self.assertEqual(self.settled(cache), seen[0])
        for write in (
            lambda: cache.save(make_file()),
            lambda: other.save(make_file(version="2.0")),
            lambda: other.delete(make_file()),
            lambda: cache.reload_from_storage([make_file("a")], True),
            lambda: cache.reload_from_storage([make_file("b")], False),
            cache.clear_all,
        ):
            self.successResultOf(write())
            self.successResultOf(cache.distinct())
            self.successResultOf(cache.all("pkg"))
            token = self.settled(cache)
            self.assertNotIn(token, seen)
            seen.append(token)
        self.assertIsNotNone(seen[-1])

    def test_withheld_until_settled(self) -> None:
        """A new token is answered as None until this process has seen it for
        settle_seconds (the name index may still lag the change)."""
        cache = self.clocked(self.namespace())
        before = self.settled(cache)
        self.successResultOf(cache.save(make_file()))
        self.assertIsNone(self.successResultOf(cache.version_token()))
        self.now += cache.settle_seconds - 0.5
        self.assertIsNone(self.successResultOf(cache.version_token()))
        self.now += 0.5
        after = self.successResultOf(cache.version_token())
        self.assertNotEqual(after, before)
        self.assertIsNotNone(after)

    def test_memoized_sees_other_process(self) -> None:
        """Behind MemoizedCache, a file saved by another process appears once the token has
        settled."""
        namespace = self.namespace()
        cache, other = self.clocked(namespace), self.started(namespace)
        memo = MemoizedCache(cache)
        self.successResultOf(cache.save(make_file("a")))
        self.now += cache.settle_seconds
        self.successResultOf(memo.distinct())  # token seen
        self.now += cache.settle_seconds
        self.assertEqual(self.successResultOf(memo.distinct()), ["a"])  # memoised
        self.successResultOf(other.save(make_file("b")))
        self.assertEqual(self.successResultOf(memo.distinct()), ["a", "b"])
        self.now += cache.settle_seconds
        self.assertEqual(self.successResultOf(memo.distinct()), ["a", "b"])


class ConcurrencyTests(MotoMixin, TestCase):
    """Saves and deletes racing on one project, on a real thread pool, keep exact counts."""

    def setUp(self) -> None:
        self.connect()

    async def _race(self) -> None:
        from twisted.internet import reactor

        pool = ThreadPoolService(reactor, "db", 8)  # type: ignore[arg-type]
        pool.startService()
        self.addCleanup(pool.stopService)
        runtime = Runtime(reactor=reactor, threads=lambda name, size: pool.run)
        cache = self.build(runtime=runtime)
        self.addCleanup(cache.stop)
        await cache.start()
        files = [make_file(version=f"1.{i % 4}", filename=f"pkg-{i}.tar.gz") for i in range(12)]
        # Each file saved twice at once: 24 racing writes of 12 distinct files.
        results = await DeferredList([cache.save(f) for f in files * 2], consumeErrors=True)
        self.assertEqual([ok for ok, _ in results], [True] * 24, results)
        item = self.raw_item(cache.summary_table, {"name": {"S": "pkg"}})
        assert item is not None
        self.assertEqual(item["file_count"], {"N": "12"})
        self.assertEqual({item[f"v:1.{i}"]["N"] for i in range(4)}, {"3"})
        results = await DeferredList([cache.delete(f) for f in files * 2], consumeErrors=True)
        self.assertEqual([ok for ok, _ in results], [True] * 24, results)
        self.assertEqual(await cache.distinct(), [])
        self.assertEqual(self.raw_scan(cache.files_table), [])
        self.assertIsNone(self.raw_item(cache.summary_table, {"name": {"S": "pkg"}}))

    def test_racing_writes(self) -> None:
        """24 concurrent saves (each file twice) count 12 files; 24 concurrent deletes leave
        no file and no summary."""
        return Deferred.fromCoroutine(self._race())  # type: ignore[return-value]


class OptionTests(SynchronousTestCase):
    """Reading the db.* options (no service needed)."""

    def build(self, **raw: str) -> DynamoCache:
        return DynamoCache.from_config(parse(**raw), Runtime.synchronous())

    def endpoint(self, cache: DynamoCache) -> str:
        return str(cache._client.meta.endpoint_url)

    def test_endpoint_url(self) -> None:
        """db.host, db.port and db.secure make the endpoint URL; port 8000 by default."""
        self.assertEqual(endpoint_url("localhost", 8000, False), "http://localhost:8000")
        self.assertEqual(endpoint_url("db.local", 443, True), "https://db.local:443")
        self.assertEqual(endpoint_url("::1", 8000, False), "http://[::1]:8000")
        self.assertEqual(endpoint_url("http://h:1234/", 8000, True), "http://h:1234")
        self.assertIsNone(endpoint_url(None, 8000, True))
        cache = self.build(host="localhost")
        self.assertEqual(self.endpoint(cache), "http://localhost:8000")
        cache = self.build(host="dynamo.internal", port="8443", secure="true")
        self.assertEqual(self.endpoint(cache), "https://dynamo.internal:8443")
        self.assertIn("db.host", cache.hint)

    def test_region(self) -> None:
        """db.region_name picks the AWS endpoint; with db.host alone the region is us-east-1,
        as pypicloud did."""
        cache = self.build(region_name="eu-west-1")
        self.assertEqual(cache._client.meta.region_name, "eu-west-1")
        self.assertIn("dynamodb.eu-west-1.amazonaws.com", self.endpoint(cache))
        self.assertEqual(self.build(host="localhost")._client.meta.region_name, "us-east-1")
        self.assertEqual(
            self.build(host="localhost", region_name="ap-south-1")._client.meta.region_name,
            "ap-south-1",
        )

    def test_region_required(self) -> None:
        """Without db.region_name, db.host or an AWS-configured region, start-up stops with a
        message naming db.region_name."""
        environ = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        environ["AWS_CONFIG_FILE"] = environ["AWS_SHARED_CREDENTIALS_FILE"] = "/nonexistent"
        self.patch(os, "environ", environ)
        error = self.assertRaises(ConfigError, self.build)
        self.assertIn("db.region_name", error.message)
        environ["AWS_DEFAULT_REGION"] = "us-west-2"
        self.assertEqual(self.build()._client.meta.region_name, "us-west-2")

    def test_table_names(self) -> None:
        """Tables are DynamoPackage and PackageSummary after db.namespace (a plain prefix, as
        flywheel joined it); db.tablenames must name two valid tables."""
        cache = self.build(region_name="us-east-1")
        self.assertEqual((cache.files_table, cache.summary_table), DynamoCache.Options().tablenames)
        cache = self.build(region_name="us-east-1", namespace="prod.", tablenames="P\n S")
        self.assertEqual((cache.files_table, cache.summary_table), ("prod.P", "prod.S"))
        error = self.assertRaises(ConfigError, parse, tablenames="one two three")
        self.assertIn("db.tablenames", error.message)
        error = self.assertRaises(
            ConfigError, self.build, region_name="us-east-1", tablenames="ok has/slash"
        )
        self.assertIn("db.namespace/db.tablenames", error.message)

    def test_bad_values(self) -> None:
        """A bad port or boolean, half a key pair or an unknown option stops start-up with
        a message naming the option; no secret appears in it."""
        for raw, option in (
            ({"port": "eighty"}, "db.port"),
            ({"port": "70000"}, "db.port"),
            ({"secure": "maybe"}, "db.secure"),
            ({"table_name": "x"}, "db.table_name"),
        ):
            error = self.assertRaises(ConfigError, parse, **raw)
            self.assertIn(option, error.message)
        error = self.assertRaises(
            ConfigError, self.build, region_name="us-east-1", aws_secret_access_key="s3cr3t!"
        )
        self.assertIn("db.aws_access_key_id", error.message)
        self.assertNotIn("s3cr3t!", error.message)
        options = parse(aws_access_key_id="AKID", aws_secret_access_key="s3cr3t!")
        self.assertEqual(options.aws_secret_access_key, "s3cr3t!")
        self.assertNotIn("s3cr3t!", repr(options))


class UnreachableTests(SynchronousTestCase):
    """An endpoint that cannot be reached fails fast with BackendUnavailable."""

    def build(self) -> DynamoCache:
        options = parse(
            host="127.0.0.1",
            port=str(closed_port()),
            aws_access_key_id="AKIDEXAMPLE",
            aws_secret_access_key="wJalrXUtnFEMI-secret",
            namespace="ppc-test-unreachable-",
        )
        return DynamoCache.from_config(options, Runtime.synchronous())

    def test_fails_fast(self) -> None:
        """start(), reads and writes fail within seconds with a one-line BackendUnavailable
        naming the endpoint and the options to check, never the secret key."""
        cache = self.build()
        began = time.monotonic()
        for call in (
            cache.start,
            lambda: cache.fetch("pkg-1.0.tar.gz"),
            lambda: cache.save(make_file()),
            cache.distinct,
            cache.version_token,
        ):
            failure = self.failureResultOf(call(), BackendUnavailable)
            message = failure.value.message
            self.assertIn("127.0.0.1", message)
            self.assertIn("db.host", message)
            self.assertNotIn("wJalrXUtnFEMI-secret", message)
            self.assertNotIn("\n", message)
        self.assertLess(time.monotonic() - began, 15)

    def test_silent_endpoint(self) -> None:
        """An endpoint that accepts connections but never answers fails with
        BackendUnavailable once the read timeout and the limited retries are spent."""
        with socket.socket() as server:
            server.bind(("127.0.0.1", 0))
            server.listen(8)
            url = f"http://127.0.0.1:{server.getsockname()[1]}"
            client = boto3.client(
                "dynamodb",
                endpoint_url=url,
                region_name="us-east-1",
                aws_access_key_id="AKIDEXAMPLE",
                aws_secret_access_key="wJalrXUtnFEMI-secret",
                config=Config(
                    connect_timeout=0.5,
                    read_timeout=0.5,
                    retries={"max_attempts": 2, "mode": "standard"},
                ),
            )
            self.addCleanup(client.close)
            cache = DynamoCache(
                client=client,
                run=Runtime.synchronous().threads("db", 1),
                files_table="f-DynamoPackage",
                summary_table="f-PackageSummary",
                where=url,
                hint="check db.host, db.port and db.secure",
            )
            began = time.monotonic()
            failure = self.failureResultOf(cache.fetch("pkg-1.0.tar.gz"), BackendUnavailable)
            self.assertLess(time.monotonic() - began, 10)
        self.assertIn(f"{url} is unreachable", failure.value.message)
        self.assertIn("timeout", failure.value.message.lower())

    def test_health(self) -> None:
        """check_health() reports an unreachable endpoint as unhealthy with the reason."""
        healthy, message = self.successResultOf(self.build().check_health())
        self.assertFalse(healthy)
        self.assertIn("unreachable", message)

"""Packaging for pypicloud-tx."""

from setuptools import find_packages, setup

setup(
    name="pypicloud-tx",
    version="0.1.0",
    description="A private Python package index on Twisted and Klein, compatible with pypicloud",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.11",
    package_dir={"": "src", "twisted": "twisted"},
    packages=find_packages("src") + ["twisted.plugins"],
    package_data={
        "pypicloud_tx": ["web/templates/*.html", "web/ui/static/*.css", "web/ui/static/*.js", "py.typed", "scripts/templates/*.jinja2"]
    },
    install_requires=[
        "twisted[tls]>=24.7",
        "klein>=24.8",
        "treq>=24.9",
        "txredisapi>=1.4.10",
        "boto3>=1.34",
        "libpass>=1.9",
        # hash formats operators paste into user.* lines (pypicloud wrote sha*_crypt)
        "bcrypt>=4.1",
        "argon2-cffi>=23.1",
        "jinja2>=3.1",
        "attrs>=23.1",
        "packaging>=24.0",
        "sqlalchemy>=2.0",
        "multipart>=1.2",
        "zope.interface>=6.0",
        # the web interface renders long descriptions as PyPI does (Markdown needs [md])
        "readme-renderer[md]>=42.0",
        # /metrics (docs/observability.md)
        "prometheus-client>=0.20",
    ],
    extras_require={
        "postgresql": ["psycopg[binary]>=3.1"],
        "mysql": ["pymysql>=1.1"],
        "ldap": ["ldap3>=2.9"],
        "gcs": ["google-cloud-storage>=2.14"],
        "test": [
            "hypothesis>=6.100",
            "twine>=6.0",
            "uv>=0.5",
            "pip>=24.0",
            "psycopg[binary]>=3.1",
            "ldap3>=2.9",
            "pymysql>=1.1",
            "google-cloud-storage>=2.14",
            # test_dists builds sdists with --no-build-isolation (bdist_wheel needs 70.1)
            "setuptools>=70.1",
            # .ci/run's lint step (also tox -e lint / -e mypy)
            "ruff>=0.6",
            "mypy>=1.11",
            "mypy-zope>=1.0",
            # tests/browser drive Debian's chromium (never a downloaded browser)
            "playwright>=1.40",
            # tests/test_docs.py renders the generated configuration reference
            "sphinx>=7.2",
            "myst-parser>=3.0",
        ],
        # the site in docs/ (tox -e docs; .ci/run builds it with warnings as errors)
        "docs": ["sphinx>=7.2", "myst-parser>=3.0"],
    },
    entry_points={
        "console_scripts": [
            "pypicloud-tx = pypicloud_tx.scripts.cli:main",
            "ppc-gen-password = pypicloud_tx.scripts.cli:gen_password_alias",
            "ppc-export = pypicloud_tx.scripts.cli:export_alias",
            "ppc-import = pypicloud_tx.scripts.cli:import_alias",
            "ppc-migrate = pypicloud_tx.scripts.cli:migrate_alias",
            "ppc-make-config = pypicloud_tx.scripts.cli:make_config_alias",
        ]
    },
    classifiers=[
        "Framework :: Twisted",
        "Programming Language :: Python :: 3",
        "Topic :: System :: Software Distribution",
    ],
)

"""The sample access configuration of pypicloud's manual ("1.6.2 Config File"), verbatim.

The seed copy of the manual is a PDF-to-text conversion: it wraps the long hashes (``↳``/``↪``)
and confuses look-alike glyphs in two of them (``hp01x`` for ``hp0lx``, ``Qjz9eRNx`` for
``Qjz9eRNX``, ``IY1OC`` for ``IYlOC``).  The hashes below are the manual's own, which verify
with the passwords its comments give; ``SEED_TEXT_HASHES`` are the seed's glyphs, joined.
"""

from __future__ import annotations

import configparser

PASSWORDS = {"stevearc": "gunface", "dsa": "paranoia", "donlan": "osptony"}

HASHES = {
    "stevearc": "$5$rounds=80000$yiWi67QBJLDTvbI/$d6qIG/bIoM3hp0lxH8v/vzxg8Qc4CJbxbxiUH4MlnE7",
    "dsa": "$5$rounds=80000$U/lot7eW6gFvuvna$KDyrQvi40XXWzMRkBq1Z/0odJEXzqUVNaPIArL/W0s6",
    "donlan": "$5$rounds=80000$Qjz9eRNXrybydMz.$PoD.5vAR9Z2IYlOCPYbza1cKvQ.8kuz1cP0zKl314g0",
}

SEED_TEXT_HASHES = {
    "stevearc": "$5$rounds=80000$yiWi67QBJLDTvbI/$d6qIG/bIoM3hp01xH8v/vzxg8Qc4CJbxbxiUH4MlnE7",
    "dsa": "$5$rounds=80000$U/lot7eW6gFvuvna$KDyrQvi40XXWzMRkBq1Z/0odJEXzqUVNaPIArL/W0s6",
    "donlan": "$5$rounds=80000$Qjz9eRNxrybydMz.$PoD.5vAR9Z2IY1OCPYbza1cKvQ.8kuz1cP0zKl314g0",
}

CONFIG = f"""\
[pypicloud]
pypi.storage = memory
pypi.db = memory

# USERS
# user: stevearc, pass: gunface
user.stevearc = {HASHES["stevearc"]}
# user: dsa, pass: paranoia
user.dsa = {HASHES["dsa"]}
# user: donlan, pass: osptony
user.donlan = {HASHES["donlan"]}

# GROUPS
group.sharkfest =
    stevearc
    dsa
group.brotatos =
    donlan
    dsa

# PACKAGES
package.django_unchained.user.stevearc = rw
package.django_unchained.group.sharkfest = rw

package.polite_requests.user.dsa = rw
package.polite_requests.group.authenticated = r
package.polite_requests.group.brotatos = rw

package.pyramid_head.group.brotatos = rw
package.pyramid_head.group.everyone = r
"""

#: The manual's table: who has what on which package ("everyone" is an anonymous caller).
TABLE = {
    "stevearc": {"django_unchained": "rw", "polite_requests": "r", "pyramid_head": "r"},
    "dsa": {"django_unchained": "rw", "polite_requests": "rw", "pyramid_head": "rw"},
    "donlan": {"django_unchained": "", "polite_requests": "rw", "pyramid_head": "rw"},
    "everyone": {"django_unchained": "", "polite_requests": "", "pyramid_head": "r"},
}


def raw_options(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The [pypicloud] section of :data:`CONFIG` as flat options, plus ``extra``."""
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(CONFIG)
    return {**dict(parser.items("pypicloud")), **(extra or {})}

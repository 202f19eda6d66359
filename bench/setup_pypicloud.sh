#!/usr/bin/env bash
# Create a virtualenv holding pypicloud 1.3.12 (the reference implementation) for bench/run.py.
#
#   bash bench/setup_pypicloud.sh [VENV_DIR]      (default: bench/.pypicloud-venv)
#
# pypicloud 1.3.12 needs SQLAlchemy<2 and calls inspect.getargspec, which Python 3.11 removed;
# a sitecustomize.py in the venv puts back a compatible getargspec before pypicloud imports.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${1:-$here/.pypicloud-venv}"
python="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
"$venv/bin/pip" install -q --upgrade pip
"$venv/bin/pip" install -q 'pypicloud==1.3.12' 'SQLAlchemy<2' waitress

site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
cat > "$site/sitecustomize.py" <<'PY'
"""Python 3.11 removed inspect.getargspec; pypicloud 1.3.12 (via its deps) still calls it."""
import collections
import inspect

if not hasattr(inspect, "getargspec"):
    ArgSpec = collections.namedtuple("ArgSpec", "args varargs keywords defaults")

    def getargspec(func):
        spec = inspect.getfullargspec(func)
        return ArgSpec(spec.args, spec.varargs, spec.varkw, spec.defaults)

    inspect.getargspec = getargspec
PY

"$venv/bin/python" -c 'import pypicloud, sqlalchemy; print("pypicloud", pypicloud.__version__, "SQLAlchemy", sqlalchemy.__version__)'

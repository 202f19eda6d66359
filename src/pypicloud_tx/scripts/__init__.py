"""The ``pypicloud-tx`` command line and pypicloud's ``ppc-*`` aliases."""

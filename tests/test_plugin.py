"""``twist`` finds the ``pypicloud`` plugin."""

from __future__ import annotations

from twisted.application.service import IServiceMaker
from twisted.plugin import getPlugins
from twisted.trial.unittest import SynchronousTestCase

import pypicloud_tx.tap


class PluginTests(SynchronousTestCase):
    """The ServiceMaker in twisted/plugins/pypicloud_tx_plugin.py."""

    def test_found(self) -> None:
        """getPlugins(IServiceMaker) yields exactly one ``pypicloud`` tap, pointing at
        pypicloud_tx.tap's Options and makeService."""
        makers = [m for m in getPlugins(IServiceMaker) if m.tapname == "pypicloud"]
        self.assertEqual(len(makers), 1)
        maker = makers[0]
        self.assertIs(maker.options, pypicloud_tx.tap.Options)
        self.assertIs(maker.makeService, pypicloud_tx.tap.makeService)
        self.assertTrue(maker.description)

"""Reading the INI file into a typed, frozen :class:`~pypicloud_tx.config.model.Settings`."""

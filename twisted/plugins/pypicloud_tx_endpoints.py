"""Makes ``--listen reuseport:port=N`` available (``pypicloud_tx/reuseport.py``)."""

from pypicloud_tx.reuseport import ReusePortParser

reuseport = ReusePortParser()

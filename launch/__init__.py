"""Entry points and launchers: the `flashsale` command (cli.py) and its dev supervisor, the
embedded servers, and the process launchers of the tests and the bench. Imports go one way:
this layer may import any package; nothing outside launch/, tests/ and bench/ imports it."""

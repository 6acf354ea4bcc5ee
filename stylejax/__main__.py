from stylejax.cli import entry

entry()

from hpsearch.cli import entry

entry()

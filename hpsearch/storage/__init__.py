"""Storage: where studies live, and how hpsearch keeps them whole.

store      the storage to use (--storage, $HPSEARCH_STORAGE, the journal file), opened and checked
journal    the journal file: what counts as one, its locks, writes that fail cleanly, repair
redact     passwords never leave the process
"""

"""Bad input, tried broadly: each malformed invocation gives one line on stderr, the right exit status
(2 for the user's mistake, 1 for a runtime failure), no traceback, and never a password."""
from __future__ import annotations

import os
from urllib.parse import quote

import pytest

from helpers import run

SECRET = "s3cr3t-Pa55"
REFUSED = f"postgresql://me:{SECRET}@127.0.0.1:1/db"  # nothing listens on port 1
POSTGRES = os.environ.get("HPSEARCH_TEST_POSTGRES")

# (id, arguments, exit status); files named in arguments are written by _files below
CASES = [
    ("reversed-range", ["grid", "--lr", "1e-1:1e-3:3"], 2),
    ("lr-zero", ["grid", "--lr", "0"], 2),
    ("lr-negative", ["grid", "--lr", "-0.1,0.1"], 2),
    ("lr-range-from-zero", ["random", "--lr", "0:1"], 2),
    ("momentum-one", ["grid", "--momentum", "1"], 2),
    ("momentum-above-one", ["grid", "--momentum", "1.5"], 2),
    ("momentum-negative", ["random", "--momentum", "-0.1:0.9"], 2),
    ("batch-size-zero", ["grid", "--batch-size", "0"], 2),
    ("batch-size-fractional", ["grid", "--batch-size", "32.5"], 2),
    ("batch-size-range-not-powers-of-two", ["grid", "--batch-size", "30:100"], 2),
    ("weight-decay-negative", ["grid", "--weight-decay", "-1e-4"], 2),
    ("weight-decay-log-range-from-zero", ["grid", "--weight-decay", "0:1e-2:3"], 2),
    ("not-a-number", ["grid", "--lr", "abc"], 2),
    ("empty-values", ["grid", "--lr", ""], 2),
    ("empty-item", ["grid", "--lr", "1e-3,,1e-2"], 2),
    ("grid-range-without-count", ["grid", "--lr", "1e-4:1e-1"], 2),
    ("count-below-two", ["grid", "--lr", "1e-4:1e-1:1"], 2),
    ("fractional-count", ["grid", "--lr", "1e-4:1e-1:2.5"], 2),
    ("two-ranges", ["grid", "--lr", "1e-4:1e-3:2,1e-2:1e-1:2"], 2),
    ("four-part-range", ["grid", "--lr", "1:2:3:4"], 2),
    ("values-beside-a-range", ["random", "--weight-decay", "1e-5,1e-4:1e-2"], 2),
    ("unknown-task", ["grid", "--task", "nosuch"], 2),
    ("missing-task-file", ["grid", "--task", "nowhere.py:make"], 2),
    ("data-file-wrong-suffix", ["grid", "--data", "x.txt"], 2),
    ("epochs-zero", ["grid", "--epochs", "0"], 2),
    ("epochs-not-integer", ["grid", "--epochs", "two"], 2),
    ("trials-zero", ["random", "--trials", "0"], 2),
    ("unknown-device", ["grid", "--device", "tpu"], 2),
    ("bad-study-name", ["grid", "--study", "bad name!"], 2),
    ("jobs-zero", ["grid", "--jobs", "0"], 2),
    ("retries-negative", ["grid", "--retries", "-1"], 2),
    ("unknown-option", ["grid", "--learning-rate", "0.1"], 2),
    ("unknown-command", ["gird"], 2),
    ("unknown-pruner", ["grid", "--prune", "sometimes"], 2),
    ("report-without-journal", ["report", "coarse"], 2),
    ("report-unknown-study", ["report", "nosuch", "--storage", "empty.journal"], 2),
    ("refine-unknown-study", ["refine", "--from", "nosuch", "--storage", "empty.journal"], 2),
    ("test-unknown-study", ["test", "--study", "nosuch", "--storage", "empty.journal"], 2),
    ("storage-is-a-folder", ["grid", "--storage", "folder"], 2),
    ("config-missing", ["grid", "--config", "missing.toml"], 2),
    ("config-malformed-toml", ["grid", "--config", "broken.toml"], 2),
    ("config-unknown-key", ["grid", "--config", "unknown.toml"], 2),
    ("repair-a-database", ["repair", "--storage", REFUSED], 2),
    ("repair-missing-journal", ["repair", "--storage", "missing.journal"], 2),
    ("storage-refused-with-password", ["grid", "--storage", REFUSED, "--epochs", "1"], 1),
    ("report-storage-refused-with-password", ["report", "coarse", "--storage", REFUSED], 1),
    ("storage-unknown-driver-with-password", ["grid", "--storage", f"nodb://me:{SECRET}@127.0.0.1/db"], 2),
    # the storage must be a regular file (or not exist yet), named by a non-empty path or a URL that can work
    ("storage-empty", ["grid", "--storage", ""], 2),
    ("storage-blank-report", ["report", "--storage", "  "], 2),
    ("storage-dev-null", ["grid", "--storage", "/dev/null"], 2),
    ("storage-dev-full", ["grid", "--storage", "/dev/full"], 2),
    ("storage-dev-null-report", ["report", "coarse", "--storage", "/dev/null"], 2),
    ("storage-trailing-slash", ["grid", "--storage", "newdir/"], 2),
    ("storage-folder-report", ["report", "--storage", "folder"], 2),
    ("storage-sqlite-on-a-device", ["grid", "--storage", "sqlite:////dev/full"], 2),
    ("storage-sqlite-is-a-folder", ["grid", "--storage", "sqlite:///folder"], 2),
    ("storage-sqlite-in-memory", ["grid", "--storage", "sqlite://"], 2),
    ("storage-sqlite-memory-name", ["random", "--storage", "sqlite:///:memory:"], 2),
    ("report-sqlite-missing", ["report", "--storage", "sqlite:///nowhere/x.db"], 2),
    ("storage-unknown-scheme", ["grid", "--storage", "foo://x"], 2),
    ("storage-driver-not-installed", ["grid", "--storage", f"sqlite+pysqlcipher://:{SECRET}@/x.db"], 2),
    ("jobs-on-a-database-without-lock", ["grid", "--jobs", "2", "--storage", f"oracle+oracledb://me:{SECRET}@127.0.0.1:1/x"], 2),
    # every form of password in a URL stays hidden, whoever echoes it
    ("storage-password-with-at", ["grid", "--storage", f"postgresql://me:p@{SECRET}@127.0.0.1:1/db"], 2),
    ("storage-password-in-query", ["report", "--storage", f"postgresql://127.0.0.1:1/db?user=me&password={SECRET}"], 1),
    ("storage-pwd-in-query-any-case", ["grid", "--storage", f"postgresql://127.0.0.1:1/db?user=me&PWD={SECRET}"], 1),
    ("storage-password-percent-encoded", ["grid", "--storage", f"postgresql://me:{quote(SECRET + '/?')}@127.0.0.1:1/db"], 1),
    ("storage-user-with-at", ["report", "x", "--storage", f"postgresql://me@corp:{SECRET}@127.0.0.1:1/db"], 1),
    ("torn-journal", ["report", "coarse", "--storage", "torn.journal"], 1),
    ("batch-size-1e20", ["grid", "--batch-size", "1e20"], 2),
    ("epochs-beyond-bounds-dry-run", ["grid", "--epochs", "99999999999999999999", "--dry-run"], 2),
    ("seed-negative", ["grid", "--seed", "-5"], 2),
    ("seed-beyond-2-to-the-32", ["tpe", "--seed", "4294967296"], 2),
    ("trials-beyond-bounds", ["random", "--trials", "99999999999"], 2),
    ("range-count-beyond-bounds", ["random", "--lr", "1e-4:1e-1:99999999999999999999"], 2),
    ("report-top-beyond-bounds", ["report", "coarse", "--top", "99999999999999999999999"], 2),
]


def _files(folder) -> None:
    (folder / "folder").mkdir()
    (folder / "empty.journal").write_bytes(b"")
    (folder / "torn.journal").write_bytes(b'{"op_code":0,"worker_id":"w","study_na')
    (folder / "broken.toml").write_text('command = "grid"\nlr = [0.1, \n')
    (folder / "unknown.toml").write_text('learning_rate = "0.1"\n')


@pytest.mark.parametrize("args, code", [pytest.param(a, c, id=i) for i, a, c in CASES])
def test_bad_input_gives_one_line_and_its_exit_status(workdir, args, code):
    _files(workdir)
    result = run(*args)
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert "Traceback" not in result.output and "internal error" not in result.stderr
    assert SECRET not in result.output


def test_the_table_is_broad():
    assert len(CASES) >= 30 and len({i for i, _, _ in CASES}) == len(CASES)


@pytest.mark.skipif(not POSTGRES, reason="no PostgreSQL server: .ci/run starts one and sets HPSEARCH_TEST_POSTGRES")
def test_a_wrong_postgresql_password_is_one_line_and_never_shown(workdir):
    scheme, rest = POSTGRES.split("://", 1)
    user, after = rest.split(":", 1)
    wrong = f"{scheme}://{user}:{SECRET}@{after.split('@', 1)[1]}"
    for args in (["grid", "--storage", wrong, "--epochs", "1"], ["report", "--storage", wrong]):
        result = run(*args)
        assert result.exit_code == 1
        assert result.stderr.count("\n") == 1 and "password authentication failed" in result.stderr
        assert SECRET not in result.output and "***" in result.stderr

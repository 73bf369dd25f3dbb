"""A pytest plugin: the end of every run lists every skipped test, one line each with its
reason, under "skipped: N" (pytest's `-ra` folds skips of one place and reason into one line;
this names each test, a module skipped at collection included). conftest.py registers it; a
run elsewhere can load it with `-p skip_summary`."""

SKIPPED_PREFIX = "Skipped: "


def skipped(reports):
    """(node id, reason) of each skipped test or module, in the order they ran, once each."""
    seen = {}
    for report in reports:
        longrepr = report.longrepr
        if isinstance(longrepr, tuple) and len(longrepr) == 3:
            reason = str(longrepr[2])
        else:
            reason = str(longrepr)
        seen.setdefault(report.nodeid, reason.removeprefix(SKIPPED_PREFIX))
    return list(seen.items())


def pytest_terminal_summary(terminalreporter):
    listed = skipped(terminalreporter.stats.get("skipped", []))
    terminalreporter.section(f"skipped: {len(listed)}")
    for nodeid, reason in listed:
        terminalreporter.write_line(f"{nodeid}: {reason}")

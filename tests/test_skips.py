"""No silent skips: every skip is listed at the end of the run with its reason (skip_summary.py),
and a package the `test` extra installs is required, not skipped for (helpers.require)."""

import os
import subprocess
import sys
import textwrap

import helpers
import pytest
from helpers import ROOT

TINY = {
    "test_tiny.py": """
        import pytest

        @pytest.fixture
        def needs_a_server():
            pytest.skip("no server in a fixture")

        @pytest.mark.skip(reason="a marker")
        def test_marked():
            pass

        @pytest.mark.skipif(True, reason="a condition")
        def test_conditional():
            pass

        def test_in_the_body():
            pytest.skip("in the body")

        def test_in_a_fixture(needs_a_server):
            pass

        def test_importorskip():
            pytest.importorskip("no_such_module_anywhere")

        @pytest.mark.parametrize("n", [1, 2, 3])
        def test_parametrized(n):
            if n > 1:
                pytest.skip("the same reason twice")

        def test_passes():
            pass
    """,
    "test_module_skip.py": """
        import pytest

        pytest.skip("the whole module", allow_module_level=True)

        def test_never_collected():
            pass
    """,
}
SKIPS = {
    "test_module_skip.py": "the whole module",
    "test_tiny.py::test_marked": "a marker",
    "test_tiny.py::test_conditional": "a condition",
    "test_tiny.py::test_in_the_body": "in the body",
    "test_tiny.py::test_in_a_fixture": "no server in a fixture",
    "test_tiny.py::test_importorskip": "could not import 'no_such_module_anywhere'",
    "test_tiny.py::test_parametrized[2]": "the same reason twice",
    "test_tiny.py::test_parametrized[3]": "the same reason twice",
}


def test_every_skip_is_listed_with_its_reason(tmp_path):
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    for name, code in TINY.items():
        (tmp_path / name).write_text(textwrap.dedent(code))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tests")}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "skip_summary", "-p", "no:cacheprovider", "-ra"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "2 passed, 8 skipped" in out
    section = out.split("= skipped: 8 =")[1].split("= short test summary info =")[0]
    listed = dict(line.split(": ", 1) for line in section.splitlines() if ": " in line)
    # one line per skipped test, node id and reason, whatever raised the skip; -ra folds the
    # two parametrized skips into one "[2]" line
    assert listed.keys() == SKIPS.keys()
    for nodeid, reason in SKIPS.items():
        assert listed[nodeid].startswith(reason), nodeid
    assert "SKIPPED [2] test_tiny.py" in out


def test_a_missing_package_of_the_test_extra_fails_naming_it(monkeypatch):
    monkeypatch.delenv(helpers.WITHOUT_ENV, raising=False)
    with pytest.raises(pytest.fail.Exception) as failed:
        helpers.missing("onnxruntime")
    message = str(failed.value)
    assert "the `test` extra installs it (extra `bench`)" in message
    assert "pip install -e '.[test]'" in message and f"{helpers.WITHOUT_ENV}=bench" in message
    with pytest.raises(pytest.fail.Exception, match=r"needs Keras .*extra `keras`"):
        helpers.missing("keras", helpers.KERAS_REASON)
    # left out on purpose (as `make test-core` does): a skip, with the reason
    monkeypatch.setenv(helpers.WITHOUT_ENV, "keras keras-cv,bench")
    with pytest.raises(pytest.skip.Exception, match=r"needs onnxruntime \(.* leaves out `bench`"):
        helpers.missing("onnxruntime")
    with pytest.raises(pytest.skip.Exception, match="needs Keras"):
        helpers.missing("keras", helpers.KERAS_REASON)
    with pytest.raises(pytest.fail.Exception):
        helpers.missing("hypothesis")  # the `test` extra itself is not left out
    with pytest.raises(pytest.skip.Exception, match="needs tf_keras"):
        helpers.missing("tf_keras")  # no part of the test extra: a skip, as before
    assert helpers.require("json").dumps([]) == "[]"


@pytest.mark.skipif(sys.version_info < (3, 11), reason="tomllib: Python 3.11")
def test_the_required_packages_are_the_test_extra():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]

    def names(extra):
        for requirement in extras[extra]:
            name = requirement.split(";")[0].split("=")[0].split(">")[0].split("[")[0].strip()
            if name == "torch-mobilenets":
                inner = requirement.split("[")[1].split("]")[0].split(",")
                yield from (n for e in inner for n in names(e.strip()))
            else:
                yield name

    declared = set(names("test")) - {"pytest"}
    module_of = {"tensorflow-cpu": "tensorflow", "keras-cv": "keras_cv"}
    assert {module_of.get(n, n) for n in declared} == set(helpers.TEST_EXTRA)

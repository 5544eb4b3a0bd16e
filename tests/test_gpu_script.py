"""benchmarks/run_gpu.sh, the one run that a lent GPU gets: every step names a benchmark script that exists and
arguments that script accepts, and the steps' time limits fit in one device call (600 s). A typo there would cost
a whole GPU run, which no CPU run of the benchmarks would show."""

import importlib
import shlex
import sys

import pytest
from conftest import REPO

sys.path.insert(0, str(REPO))
from benchmarks import common  # noqa: E402

SCRIPT = REPO / "benchmarks" / "run_gpu.sh"
DEVICE_CALL_LIMIT_S = 600


def steps() -> list[tuple[int, str, list[str]]]:
    """``(limit, script, args)`` of every ``step`` line of run_gpu.sh, continuation lines joined."""
    text = SCRIPT.read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        if line.startswith("step "):
            words = shlex.split(line.replace('"$OUT_DIR', '"OUT_DIR'))
            out.append((int(words[1]), words[2], words[3:]))
    return out


class Parsed(Exception):
    """Raised in place of the benchmark's set-up: its arguments parsed."""


def test_the_steps_fit_in_one_device_call():
    limits = [limit for limit, _, _ in steps()]
    assert len(limits) >= 7
    assert sum(limits) <= DEVICE_CALL_LIMIT_S


@pytest.mark.parametrize("step", steps(), ids=lambda s: " ".join([s[1].split("/")[-1], *s[2][:4]]))
def test_each_step_runs_a_script_that_accepts_its_arguments(step, monkeypatch):
    _, path, args = step
    assert (REPO / path).is_file(), path
    module = importlib.import_module(path.removesuffix(".py").replace("/", "."))

    def stop(parsed):
        raise Parsed(parsed)

    monkeypatch.setattr(common, "setup", stop)
    with pytest.raises(Parsed) as parsed:
        module.main(args)
    assert parsed.value.args[0].device == "cuda"

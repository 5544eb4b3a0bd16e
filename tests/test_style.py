"""One spelling of equation citations in the code: ``eq. (4.123)``, ``eqs. (4.20)–(4.24)``, ``eqs. (3.62), (A.38)``."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: "eq. 4.123", "eqs. 4.11, 4.19", "Eq. A.38": a number that follows "eq." without its parenthesis
UNPARENTHESISED = re.compile(r"\b[Ee]qs?\. [0-9A-Z]+(\.[0-9]+)?\b")


def code_files():
    this = Path(__file__).resolve()  # its own examples are the bad spellings
    return sorted(p for folder in ("src", "tests", "benchmarks", "scripts") for p in (REPO / folder).rglob("*.py") if p != this)


def test_every_equation_citation_in_the_code_is_parenthesised():
    found = [f"{path.relative_to(REPO)}:{number}: {line.strip()}"
             for path in code_files() for number, line in enumerate(path.read_text().splitlines(), 1)
             if UNPARENTHESISED.search(line)]
    assert not found, "cite equations as eq. (4.123):\n" + "\n".join(found[:20])


def test_the_check_finds_an_unparenthesised_citation():
    assert UNPARENTHESISED.search('"""Posterior variance, eq. 4.21."""')
    assert UNPARENTHESISED.search("eqs. 4.20-4.24")
    assert not UNPARENTHESISED.search('"""Posterior variance, eq. (A.21)."""')
    assert not UNPARENTHESISED.search("eqs. (4.11), (4.19)")

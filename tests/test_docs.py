"""The documentation says what the repository measured and what it configures, and cannot drift from either.

- Every headline figure of README.md and docs/ equals the value in the results file it cites
  (benchmarks/results/headline.json lists them), and the README quotes no other measured number.
- Every relative link and image of README.md and docs/*.md resolves, anchors included.
- Every option list (the comments of conf/*.yaml's defaults, the --help templates, the README's group table, the
  docs' tables of schedules, weightings and parameterizations) names exactly the options of its conf/ folder, so a
  new option file fails here until it is named everywhere.
- Every ``python train.py|eval.py|sample.py`` command of README.md and docs/*.md (and every example of the README's
  group table) composes with Hydra, and the train commands pass start-up validation (no data is read, no run is
  made); placeholders become a dummy checkpoint path, or every option of their group.
"""

from __future__ import annotations

import json
import re
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import pytest
import yaml
from conftest import REPO, compose_config
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

CONF = REPO / "conf"
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
HEADLINES = json.loads((REPO / "benchmarks" / "results" / "headline.json").read_text())["figures"]
#: pages whose ``python train.py|eval.py|sample.py`` commands are composed
COMMAND_PAGES = ("README.md", *(str(p.relative_to(REPO)) for p in sorted((REPO / "docs").glob("*.md"))))
#: conf/ folders that need no row in the README's group table: set by another choice, or Hydra's own, or eval.py's
NOT_IN_THE_TABLE = {"hydra", "dataset_defaults", "dataset_model", "ode"}
#: option-list members that are not files: ``group=null`` switches the group off
NOT_A_FILE = {"null"}


# ---------------------------------------------------------------------------------------------------------------
# reading markdown


def without_code(text: str) -> str:
    """``text`` with fenced blocks and inline code spans blanked (links and numbers there are not prose)."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`]*`", "", text)


def cells(line: str) -> list[str]:
    """The cells of a markdown table row (``\\|`` is a pipe inside a cell), without bold and code marks."""
    parts = re.split(r"(?<!\\)\|", line.strip().strip("|"))
    return [part.replace("\\|", "|").replace("**", "").strip() for part in parts]


def table_rows(text: str) -> list[list[str]]:
    return [cells(line) for line in text.splitlines() if line.lstrip().startswith("|")]


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    heading = re.sub(r"[`*_]", lambda m: "_" if m.group() == "_" else "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", heading).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M)
    return {slug(m.group(1)) for m in re.finditer(r"^#+\s+(.*)$", text, flags=re.M)}


def token_in(figure: str, text: str) -> bool:
    """``figure`` occurs in ``text`` as a whole number (not as the start of a longer one)."""
    return re.search(rf"(?<![\d.]){re.escape(figure)}(?![\d])", text) is not None


# ---------------------------------------------------------------------------------------------------------------
# headline figures


def rounded(value: str, like: str) -> str:
    """``value`` rounded half up to as many decimals as ``like`` has."""
    places = len(like.split(".")[1]) if "." in like else 0
    return str(Decimal(value.replace(",", "")).quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP))


def source_values(entry: dict) -> list[str]:
    """The strings the entry's file gives for its figure: a table cell, a JSON key (± se_key), or a regex group."""
    path = REPO / entry["file"]
    text = path.read_text()
    if "key" in entry:
        data = json.loads(text)

        def get(key: str):
            node = data
            for part in key.split("."):
                node = node[int(part)] if isinstance(node, list) else node[part]
            return node

        figure_parts = entry["figure"].split(" ± ")
        value = rounded(repr(get(entry["key"])), figure_parts[0])
        if "se_key" in entry:
            value += " ± " + rounded(repr(get(entry["se_key"])), figure_parts[1])
        return [value]
    if "pattern" in entry:
        return [m.group(1) for m in re.finditer(entry["pattern"], text)]
    rows = [row for row in table_rows(text) if row[0].replace("`", "") == entry["row"].replace("`", "").replace("**", "")]
    assert rows, f"{entry['file']} has no table row {entry['row']!r}"
    return [row[entry["column"]] for row in rows if len(row) > entry["column"]]


def matches(figure: str, value: str, is_rounded: bool) -> bool:
    if not is_rounded:
        return token_in(figure, value)
    parts = figure.split(" ± ")
    for m in re.finditer(r"(-?[\d,]*\.?\d+)(?:\s*±\s*([\d.]+))?", value):
        found = rounded(m.group(1), parts[0])
        if len(parts) == 2:
            if m.group(2) is None:
                continue
            found += " ± " + rounded(m.group(2), parts[1])
        if found == figure:
            return True
    return False


@pytest.mark.parametrize("entry", HEADLINES, ids=[f"{e['page']}:{e['figure']}" for e in HEADLINES])
def test_a_headline_figure_is_on_its_page_and_equals_its_results_file(entry):
    page = (REPO / entry["page"]).read_text()
    text = entry.get("text", entry["figure"])
    assert entry["figure"] in text, f"headline.json: the text {text!r} does not contain its figure {entry['figure']!r}"
    assert token_in(text, page) if text == entry["figure"] else text in page, (
        f"{entry['page']} no longer says {text!r}: update the page or benchmarks/results/headline.json")
    values = source_values(entry)
    assert any(matches(entry["figure"], value, entry.get("rounded", False)) for value in values), (
        f"{entry['page']} says {entry['figure']} but {entry['file']} gives {values}")


def test_the_readme_quotes_no_number_that_is_not_a_cited_figure():
    """Every decimal number of the README's prose and tables is one of its headline figures (code is exempt)."""
    prose = without_code((REPO / "README.md").read_text())
    prose = re.sub(r"(eq\.|Table|§)\s*\(?[\d.]+\)?", " ", prose)  # the paper's equation, table and section numbers
    cited = sorted({e.get("text", e["figure"]) for e in HEADLINES if e["page"] == "README.md"}, key=len, reverse=True)
    for text in cited:
        prose = prose.replace(text, " ")
    loose = re.findall(r"(?<![\w.])\d+\.\d+", prose)
    assert not loose, f"README.md quotes {loose} without a source: add them to benchmarks/results/headline.json"


# ---------------------------------------------------------------------------------------------------------------
# links


def relative_links(page: Path) -> list[str]:
    found = re.findall(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", without_code(page.read_text()))
    return [link for link in found if not re.match(r"[a-z]+:", link)]


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(REPO)) for p in PAGES])
def test_every_relative_link_and_image_resolves(page):
    broken = []
    for link in relative_links(page):
        target, _, anchor = link.partition("#")
        path = (page.parent / target).resolve() if target else page
        if not path.exists():
            broken.append(f"{link} (no file {path.relative_to(REPO) if path.is_relative_to(REPO) else path})")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            broken.append(f"{link} (no heading #{anchor} in {path.name})")
    assert not broken, f"{page.relative_to(REPO)}: broken links: {broken}"


def test_a_broken_link_is_found(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Title\n[a](missing.md) [b](#title) ![c](figures/none.png) [d](https://example.org) `[e](no.md)`\n")
    assert relative_links(page) == ["missing.md", "#title", "figures/none.png"]
    assert anchors(page) == {"title"}


# ---------------------------------------------------------------------------------------------------------------
# option lists


def options(group: str) -> set[str]:
    """The choosable options of conf/<group>/: its yaml files, less a base that every other option builds on
    (trainer/default.yaml)."""
    files = {path.stem: OmegaConf.load(path) for path in (CONF / group).glob("*.yaml")}
    built_on = {stem: {item for item in node.get("defaults", []) if isinstance(item, str)} for stem, node in files.items()}
    bases = {stem for stem in files if len(files) > 2 and all(stem in built_on[other] for other in files if other != stem)}
    return set(files) - bases


def test_options_are_the_files_less_the_bases():
    assert options("trainer") == {"cpu", "gpu", "ddp", "ddp_cpu"}  # trainer/default.yaml is every trainer's base
    assert "sigmoid" in options("weighting") and options("ode/solver") >= {"rk4"}


DEFAULTS_LINE = re.compile(r"^\s*-\s*(?:override\s+)?(?:optional\s+)?([\w/]+)(?:@[\w.]+)?:\s*\S+\s*#\s*(.*)$")


def commented_option_lists() -> list[tuple[str, str, list[str]]]:
    """(config file, group, options named) for every defaults line whose comment lists options as ``a | b | c``."""
    found = []
    for name in ("train", "eval", "sample"):
        for line in (CONF / f"{name}.yaml").read_text().splitlines():
            m = DEFAULTS_LINE.match(line)
            if m and "|" in m.group(2) and (CONF / m.group(1)).is_dir():
                named = [re.match(r"\s*([\w]*)", part).group(1) for part in m.group(2).split("|")]
                found.append((name, m.group(1), named))
    return found


@pytest.mark.parametrize("config,group,named", commented_option_lists(),
                         ids=[f"{c}.yaml:{g}" for c, g, _ in commented_option_lists()])
def test_a_defaults_comment_names_every_option_of_its_group(config, group, named):
    assert set(named) - NOT_A_FILE == options(group), (
        f"conf/{config}.yaml's comment on {group} names {sorted(set(named))}; conf/{group}/ has {sorted(options(group))}")


def test_the_main_groups_carry_their_option_list():
    listed = {group for config, group, _ in commented_option_lists() if config == "train"}
    assert listed >= {"dataset", "model", "schedule", "weighting", "parameterization", "sampler", "trainer", "logger",
                      "debug"}


def help_group_lines(template: str) -> dict[str, str]:
    """The ``== Configuration groups ==`` section of a help template: group → its description (continuations joined)."""
    section = template.split("== Configuration groups", 1)[1].split("==", 2)[1]
    described: dict[str, str] = {}
    group = None
    for line in section.splitlines():
        m = re.match(r"^  (\S+)\s{2,}(.*)$", line)
        if m:
            group = m.group(1)
            described[group] = m.group(2)
        elif group and line.startswith("     ") and line.strip():
            described[group] += " " + line.strip()
        else:
            group = None
    return described


def help_template(name: str) -> str:
    return yaml.safe_load((CONF / "hydra" / "help" / f"{name}.yaml").read_text())["template"]


HELP_LINES = [(name, group, text) for name in ("train", "eval", "sample")
              for group, text in help_group_lines(help_template(name)).items()
              if (CONF / group).is_dir()]


@pytest.mark.parametrize("name,group,text", HELP_LINES, ids=[f"{n}:{g}" for n, g, _ in HELP_LINES])
def test_a_help_line_that_lists_options_lists_them_all(name, group, text):
    """A description may mention one or two options; one that names three or more is a list and names them all."""
    named = set(re.findall(r"\b[a-z][a-z0-9_]*\b", text)) & options(group)
    assert len(named) < 3 or named == options(group), (
        f"conf/hydra/help/{name}.yaml lists {sorted(named)} for {group}; conf/{group}/ has {sorted(options(group))}")


def test_train_help_prints_the_options_from_the_folders():
    """Hydra fills $APP_CONFIG_GROUPS from the folders (tests/test_cli.py runs --help and checks its lines)."""
    assert "$APP_CONFIG_GROUPS" in help_template("train")


def readme_group_table() -> dict[str, tuple[list[str], str]]:
    """The README's group table: group → (its backticked options, its example)."""
    text = (REPO / "README.md").read_text().split("## Configuration", 1)[1].split("\n## ", 1)[0]
    table = {}
    for line in text.splitlines():
        if line.startswith("| `"):
            raw = re.split(r"(?<!\\)\|", line.strip().strip("|"))
            group = raw[0].strip().strip("`")
            table[group] = (re.findall(r"`([^`]+)`", raw[1]), re.findall(r"`([^`]+)`", raw[2]))
    return table


def test_the_readme_group_table_names_every_option_of_every_group():
    table = readme_group_table()
    groups = {p.name for p in CONF.iterdir() if p.is_dir()} - NOT_IN_THE_TABLE
    assert set(table) == groups, f"README's group table has {sorted(table)}; conf/ has {sorted(groups)}"
    wrong = {g: sorted(set(named)) for g, (named, _) in table.items() if set(named) - NOT_A_FILE != options(g)}
    assert not wrong, f"README's group table names {wrong}; the folders have {({g: sorted(options(g)) for g in wrong})}"


DOC_TABLES = (("docs/usage.md", "schedule"), ("docs/usage.md", "weighting"), ("docs/usage.md", "parameterization"))


@pytest.mark.parametrize("page,group", DOC_TABLES, ids=[f"{p}:{g}" for p, g in DOC_TABLES])
def test_a_table_of_a_groups_options_has_a_row_per_option(page, group):
    rows = table_rows((REPO / page).read_text())
    start = next(i for i, row in enumerate(rows) if row[0] == group)
    named = set()
    for row in rows[start + 2:]:
        if not row[0].startswith("`"):
            break
        named.add(row[0].strip("`"))
    assert named == options(group), f"{page}: the {group} table names {sorted(named)}; conf/{group}/ has {sorted(options(group))}"


# ---------------------------------------------------------------------------------------------------------------
# commands


def documented_commands() -> list[tuple[str, str]]:
    """(page, command) for every ``python train.py|eval.py|sample.py ...`` in a code block or code span."""
    found = []
    for name in COMMAND_PAGES:
        text = (REPO / name).read_text()
        blocks = re.findall(r"^```(?:bash)?\n(.*?)^```", text, flags=re.S | re.M)
        spans = [" ".join(span.split()) for span in re.findall(r"`([^`]+)`", re.sub(r"^```.*?^```", "", text,
                                                                                          flags=re.S | re.M))]
        lines = [line for block in blocks for line in re.sub(r"\\\n\s*", " ", block).splitlines()]
        for chunk in lines + spans:
            for part in chunk.split("#", 1)[0].split("&&"):
                part = part.strip()
                if (re.match(r"python (train|eval|sample)\.py\b", part) and (name, part) not in found
                        and not any(word.startswith(("[", "--")) for word in part.split())):  # usage lines, --help
                    found.append((name, part))
    for group, (_, examples) in readme_group_table().items():
        script = "sample" if group == "sampling_schedule" else "train"
        found += [("README.md", f"python {script}.py {example}") for example in examples if "=" in example]
    return found


def compositions(command: str) -> tuple[str, list[list[str]]]:
    """The config name and the override lists a command composes: placeholders filled, a sweep's values each once."""
    words = command.split()
    config = words[1].removesuffix(".py")
    overrides = []
    for word in words[2:]:
        if word in ("-m", "--multirun"):
            continue
        word = re.sub(r"^ckpt_path=.*$", "ckpt_path=/nonexistent/checkpoints/last.ckpt", word)
        key, _, value = word.partition("=")
        if re.fullmatch(r"<[^>]*>", value) and (CONF / key).is_dir():  # group=<name>: every option of the group
            word = f"{key}={','.join(sorted(options(key)))}"
        overrides.append(re.sub(r"<[^>]*>", "0", word).replace("=...", "=0"))
    parsed = OverridesParser.create().parse_overrides(overrides)
    fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
    sweeps = [(o.get_key_element(), list(o.sweep_string_iterator())) for o in parsed if o.is_sweep_override()]
    runs = [fixed + [f"{key}={values[0]}" for key, values in sweeps]]
    for i, (key, values) in enumerate(sweeps):
        for value in values[1:]:
            runs.append(fixed + [f"{k}={v[0]}" for k, v in sweeps[:i] + sweeps[i + 1:]] + [f"{key}={value}"])
    return config, runs


COMMANDS = documented_commands()


def test_commands_are_found_and_placeholders_filled():
    assert any(cmd.startswith("python eval.py") for _, cmd in COMMANDS) and len(COMMANDS) > 10
    config, runs = compositions("python train.py -m weighting=elbo,sigmoid seed=0,1 ckpt_path=<run>/last.ckpt")
    assert config == "train" and len(runs) == 3
    assert all("ckpt_path=/nonexistent/checkpoints/last.ckpt" in run for run in runs)
    assert len(compositions("python train.py experiment=<name>")[1]) == len(options("experiment"))


@pytest.mark.parametrize("page,command", [  # a command that composes many configs (group=<name>) takes long
    pytest.param(p, c, id=f"{p}:{c}", marks=[pytest.mark.slow] if len(compositions(c)[1]) > 4 else []) for p, c in COMMANDS])
def test_a_documented_command_composes(page, command, tmp_path, monkeypatch):
    from vdmlab.cli.validate import validate_config

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    config, runs = compositions(command)
    for i, overrides in enumerate(runs):
        cfg = compose_config(tmp_path / f"run{i}", overrides, config)
        if config == "train":
            validate_config(cfg)

"""The CLI's first hour: --home anywhere, --version, a closed pipe, tables and --json, `score -`,
`--title`, the hint for many photos, and the settings (checked at start-up, shown with secrets masked)."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from markguard.serving.cli import main
from markguard.serving.commands import score as score_command
from markguard.serving.settings import Settings

REPO = Path(__file__).resolve().parents[2]
MARKGUARD = str(Path(sys.executable).parent / "markguard")
MILK = "Milk/Arla-Standard-Milk"


@pytest.fixture()
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A home named only by --home (MARKGUARD_HOME points elsewhere, so a wrong default would show)."""
    monkeypatch.setenv("MARKGUARD_HOME", str(tmp_path / "not-this-one"))
    monkeypatch.delenv("MARKGUARD_DATABASE_URL", raising=False)
    return tmp_path / "home"


def _out(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_home_before_or_after_the_command(home: Path, tmp_path: Path, capsys) -> None:
    assert _out(capsys, "--home", str(home), "brand", "add", "Arla")[0] == 0
    assert _out(capsys, "brand", "add", "Oatly", "--home", str(home))[0] == 0
    for argv in (["--home", str(home), "brand", "list", "--json"], ["brand", "list", "--json", "--home", str(home)]):
        code, out, _ = _out(capsys, *argv)
        assert code == 0 and [json.loads(line)["name"] for line in out.splitlines()] == ["Arla", "Oatly"]
    assert not (tmp_path / "not-this-one").exists()
    with pytest.raises(SystemExit) as exc:
        main(["--home", str(home), "brand", "list", "--home", str(tmp_path / "other")])
    assert exc.value.code == 2 and "--home given twice" in capsys.readouterr().err


def test_version(capsys) -> None:
    assert _out(capsys, "--version") == (0, f"markguard {version('markguard')}\n", "")
    proc = subprocess.run([MARKGUARD, "--version"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == f"markguard {version('markguard')}"


def test_brand_list_is_a_table_for_people_and_json_for_scripts(home: Path, capsys) -> None:
    code, _, err = _out(capsys, "brand", "list", "--home", str(home))
    assert code == 0 and "no brands yet" in err
    _out(capsys, "brand", "add", "God Morgon", "--home", str(home))
    _out(capsys, "brand", "update", "God Morgon", "--review-at", "0.3", "--takedown-at", "0.9", "--home", str(home))
    _, table, _ = _out(capsys, "brand", "list", "--home", str(home))
    header, row = table.splitlines()
    assert header.split() == ["BRAND", "PRODUCTS", "GENUINE", "COUNTERFEIT", "REVIEW/TAKEDOWN", "AT", "SERIALS"]
    assert re.fullmatch(r"God Morgon +0 +0 +0 +0\.3/0\.9 +-", row)
    _, lines, _ = _out(capsys, "brand", "list", "--json", "--home", str(home))
    assert json.loads(lines)["review_at"] == 0.3


def test_model_list_is_a_table_for_people_and_json_for_scripts(home: Path, capsys) -> None:
    _, _, err = _out(capsys, "model", "list", "--home", str(home))
    assert "no models yet" in err
    _, init, _ = _out(capsys, "model", "init", "--home", str(home))
    tag = json.loads(init)["model"]
    _, table, _ = _out(capsys, "model", "list", "--home", str(home))
    header, row = table.splitlines()
    assert header.split() == ["TAG", "REGISTERED", "(UTC)", "METRICS"]
    assert row.startswith(f"*  {tag}  ") and "risk AUC 0." in row and len(row) < 300
    _, lines, _ = _out(capsys, "model", "list", "--json", "--home", str(home))
    [model] = [json.loads(line) for line in lines.splitlines()]
    assert model["tag"] == tag and model["promoted"] is True and "grocery_val" in model["metrics"]


def test_a_closed_pipe_ends_quietly(home: Path, capsys) -> None:
    """`markguard brand list | head -1` with more output than a pipe holds: no BrokenPipeError traceback."""
    from markguard.serving.brands import add_brand
    from markguard.serving.state.home import Home

    opened = Home(home)
    with opened.sessions.begin() as session:
        for i in range(1200):  # ~85 KB of table, more than the 64 KB a pipe buffers
            add_brand(session, f"Brand {i:05d}")
    opened.close()
    for extra in ("", " --json"):
        proc = subprocess.run(["bash", "-c", f"set -o pipefail; '{MARKGUARD}' brand list{extra} --home '{home}' | head -1"],
                              capture_output=True, text=True, timeout=120)
        assert proc.stdout.count("\n") == 1 and proc.stdout.strip(), proc.stdout[:200]
        assert proc.stderr == "", proc.stderr  # no traceback, no "Exception ignored"
        assert proc.returncode == 141  # what a shell reports for a writer stopped by SIGPIPE


def test_score_reads_paths_from_stdin_takes_a_title_and_hints_at_serve(
    home: Path, grocery: Path, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    iconic = next((grocery / "iconic" / "Packages" / MILK).glob("*_Iconic.jpg"))
    photos = sorted((grocery / "val" / "Packages" / MILK).glob("*.jpg"))[:2]
    _out(capsys, "brand", "add", "Arla", "--home", str(home))
    assert _out(capsys, "enroll", "Arla", str(iconic), "--home", str(home))[0] == 0
    monkeypatch.setattr(score_command, "_MANY", 2)
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"{photos[0]}\n\n{photos[1]}\n"))
    code, out, err = _out(capsys, "score", "-", "--title", "Arla mjölk 1 l", "--listing", "L-1", "--no-ocr",
                          "--home", str(home))
    assert code == 0, err
    results = [json.loads(line) for line in out.splitlines()]
    assert [r["image"] for r in results] == [str(p) for p in photos]  # in stdin's order, blank line skipped
    assert all(r["claimed"]["title"] == "Arla mjölk 1 l" for r in results)
    assert "hint: scoring 2 photos" in err and "markguard serve" in err
    from markguard.serving.state.home import Home
    from markguard.serving.state.schema import Listing

    opened = Home(home)
    with opened.sessions() as session:
        assert session.query(Listing).filter(Listing.listing_id == "L-1").count() == 2
    opened.close()
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    code, _, err = _out(capsys, "score", "-", "--home", str(home))
    assert code == 2 and "stdin was empty" in err
    code, _, err = _out(capsys, "score", str(photos[0]), "--title", "x" * 201, "--home", str(home))
    assert code == 2 and "--title is longer than 200" in err


def test_a_bad_setting_stops_every_command_with_one_line(home: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MARKGUARD_RATE", "-1")
    code, out, err = _out(capsys, "brand", "list", "--home", str(home))
    assert code == 2 and out == "" and not home.exists()
    assert err.count("\n") == 1 and err.startswith("markguard: error: bad environment: ")
    assert "MARKGUARD_RATE (got '-1'): Input should be greater than 0" in err
    monkeypatch.setenv("MARKGUARD_RATE", "5")
    monkeypatch.setenv("MARKGUARD_DATABASE_URL", "mysql://root:hunter2@127.0.0.1/mg")
    code, _, err = _out(capsys, "brand", "list", "--home", str(home))
    assert code == 2 and "MARKGUARD_DATABASE_URL" in err and "hunter2" not in err


def test_config_show_masks_secrets(capsys, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MARKGUARD_DATABASE_URL", "postgresql+psycopg://mg:hunter2@127.0.0.1:5432/markguard")
    monkeypatch.setenv("MARKGUARD_WORKERS", "3")
    monkeypatch.setenv("MARKGUARD_SHARED_DATA", str(tmp_path))  # the old name of MARKGUARD_DATA
    monkeypatch.delenv("MARKGUARD_DATA", raising=False)
    code, table, _ = _out(capsys, "config", "show")
    assert code == 0 and "hunter2" not in table
    rows = {line.split()[0]: line.split()[1:] for line in table.splitlines()[1:]}
    assert set(rows) == {f"MARKGUARD_{name.upper()}" for name in Settings.model_fields}
    assert rows["MARKGUARD_DATABASE_URL"][:2] == ["postgresql+psycopg://mg:***@127.0.0.1:5432/markguard", "environment"]
    assert rows["MARKGUARD_WORKERS"][:2] == ["3", "environment"]
    assert rows["MARKGUARD_DATA"][:2] == [str(tmp_path), "environment"]
    assert rows["MARKGUARD_MAX_BATCH"][:2] == ["4", "default"]
    _, as_json, _ = _out(capsys, "config", "show", "--json")
    values = json.loads(as_json)
    assert values["database_url"] == "postgresql+psycopg://mg:***@127.0.0.1:5432/markguard" and values["workers"] == 3


def test_every_variable_is_named_in_settings_and_in_the_readme() -> None:
    """A MARKGUARD_* name anywhere in the package is a setting (or the old name of one) and has a README row."""
    used = set()
    for folder in ("vision", "training", "serving", "datasets"):
        for path in (REPO / folder).rglob("*.py"):
            used |= set(re.findall(r"\bMARKGUARD_[A-Z_]+[A-Z]\b", path.read_text()))
    fields = {f"MARKGUARD_{name.upper()}" for name in Settings.model_fields}
    caps = {name for name in used if name.startswith("MARKGUARD_CAP_")}  # one family: serving/caps.py
    assert used - fields - caps <= {"MARKGUARD_SHARED_DATA"}, used - fields
    readme = (REPO / "README.md").read_text()
    assert "MARKGUARD_CAP_<NAME>" in readme
    table_rows = set(re.findall(r"^\| `(MARKGUARD_[A-Z_]+)` \|", readme, re.MULTILINE))
    assert fields <= table_rows, fields - table_rows


def test_a_missing_command_module_fails_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    """A listed command module that cannot be imported is a broken install: the parser refuses to build
    rather than quietly dropping its commands."""
    from markguard.serving import cli

    monkeypatch.setattr(cli, "COMMAND_MODULES", (*cli.COMMAND_MODULES, "markguard.serving.commands.not_there"))
    with pytest.raises(ModuleNotFoundError, match="not_there"):
        cli.build_parser()

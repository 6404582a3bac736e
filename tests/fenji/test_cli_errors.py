"""Every `fenji` command ends a failure in one readable line and a non-zero exit code, never a
traceback, and creates or deletes nothing on the way (the real CLI, real DuckDB and MLflow files)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fenji.cli import app


def csv(prefix: str = "e", rows: int = 40) -> str:
    return ("encounter_id,age,sex,sbp,heart_rate,spo2,avpu,complaint,referred_up\n"
            + "".join(f"{prefix}{i},{40 + i % 40},M,130,80,97,A,fever,{i % 2}\n" for i in range(rows)))


CSV = csv()


def run(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(app, list(args), env=env)


def assert_one_error_line(result, code: int | None = None, *, says: str = "") -> str:
    """The command failed with exactly one ``error:`` line on stderr, and no traceback anywhere."""
    assert result.exit_code != 0, result.output
    if code is not None:
        assert result.exit_code == code, result.output
    assert "Traceback" not in result.output, result.output
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), result.exception
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert says in lines[0], lines[0]
    return lines[0]


@pytest.fixture()
def export(tmp_path) -> Path:
    path = tmp_path / "export.csv"
    path.write_text(CSV, encoding="utf-8")
    return path


@pytest.fixture()
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("FENJI_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("FENJI_MLFLOW_URI", raising=False)
    return tmp_path / "home"


# -- fenji node ingest ----------------------------------------------------------------------------

def test_ingest_task_naming_a_folder(tmp_path, export):
    (tmp_path / "tasks").mkdir()
    result = run("node", "ingest", "--site-dir", str(tmp_path / "site"), "--task", str(tmp_path / "tasks"),
                 "--input", str(export))
    assert_one_error_line(result, 2, says="is a folder")
    assert not (tmp_path / "site").exists()


def test_ingest_mapping_naming_a_folder(tmp_path, export):
    result = run("node", "ingest", "--site-dir", str(tmp_path / "site"), "--task", "referral_risk",
                 "--input", str(export), "--mapping", str(tmp_path))
    assert_one_error_line(result, 3, says="is a folder")
    assert not (tmp_path / "site").exists()


def test_ingest_site_dir_naming_a_file(tmp_path, export):
    (tmp_path / "site").write_text("not a folder")
    result = run("node", "ingest", "--site-dir", str(tmp_path / "site"), "--task", "referral_risk",
                 "--input", str(export))
    assert_one_error_line(result, 5, says="is a file")
    assert (tmp_path / "site").read_text() == "not a folder"


@pytest.mark.parametrize("what", ["missing", "folder"])
def test_ingest_bad_input_leaves_no_new_site_behind(tmp_path, what):
    bad = tmp_path / "exports"
    if what == "folder":
        bad.mkdir()
    result = run("node", "ingest", "--site-dir", str(tmp_path / "sites" / "new"), "--task", "referral_risk",
                 "--input", str(bad))
    assert_one_error_line(result, 4, says=str(bad))
    assert not (tmp_path / "sites").exists()


def test_ingest_failure_into_a_new_site_removes_the_site_it_created(tmp_path):
    unreadable = tmp_path / "export.csv"
    unreadable.write_bytes(b"")  # no header: the ingest fails after the store was opened
    result = run("node", "ingest", "--site-dir", str(tmp_path / "new"), "--task", "referral_risk",
                 "--input", str(unreadable))
    assert_one_error_line(result)
    assert not (tmp_path / "new").exists()


def _ingested_site(tmp_path: Path, export: Path) -> Path:
    site = tmp_path / "sites" / "clinic"
    result = run("node", "ingest", "--site-dir", str(site), "--task", "referral_risk", "--input", str(export))
    assert result.exit_code == 0, result.output
    return site


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_ingest_into_a_corrupt_or_truncated_store(tmp_path, export, damage):
    site = _ingested_site(tmp_path, export)
    db = site / "site.duckdb"
    data = db.read_bytes()
    db.write_bytes(b"\0garbage" * 512 if damage == "garbage" else data[: len(data) // 2])
    other = tmp_path / "more.csv"
    other.write_text(csv("f"), encoding="utf-8")
    result = run("node", "ingest", "--site-dir", str(site), "--task", "referral_risk", "--input", str(other))
    assert_one_error_line(result, says="site.duckdb")
    assert db.exists()  # an existing site is never removed


# -- fenji sim ------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", ["missing", "file", "empty", "corrupt", "no-data-for-task"])
def test_sim_sites_dir(tmp_path, export, home, case):
    sites = tmp_path / "sites"
    task = "referral_risk"
    if case == "file":
        sites.write_text("x")
    elif case == "empty":
        sites.mkdir()
    elif case == "corrupt":
        (sites / "clinic").mkdir(parents=True)
        (sites / "clinic" / "site.duckdb").write_bytes(b"\0garbage" * 512)
    elif case == "no-data-for-task":
        _ingested_site(tmp_path, export)
        task = "triage"
    result = run("sim", "--task", task, "--sites-dir", str(sites), "--rounds", "1", env={"FENJI_MIN_SITES": "1"})
    assert_one_error_line(result)
    assert not home.exists()  # nothing was trained, registered or audited


@pytest.mark.parametrize("args", [
    ["--task", "no_such_task"],
    ["--json", "."],
    ["--dp-epsilon", "0"],
    ["--dp-delta", "2"],
])
def test_sim_bad_options_fail_before_the_run(tmp_path, export, home, args):
    _ingested_site(tmp_path, export)
    base = {"--task": "referral_risk", "--sites-dir": str(tmp_path / "sites"), "--rounds": "1"}
    base.update(dict(zip(args[::2], args[1::2])))
    result = run("sim", *[x for kv in base.items() for x in kv], env={"FENJI_MIN_SITES": "1"})
    assert_one_error_line(result)
    assert not home.exists()


def test_sim_bad_setting_in_the_environment(tmp_path, export):
    _ingested_site(tmp_path, export)
    result = run("sim", "--task", "referral_risk", "--sites-dir", str(tmp_path / "sites"),
                 env={"FENJI_MIN_SITES": "three"})
    assert_one_error_line(result, says="FENJI_MIN_SITES")


# -- fenji demo -----------------------------------------------------------------------------------

def test_demo_never_deletes_a_folder_it_did_not_make(tmp_path, home):
    workdir = tmp_path / "mine"
    workdir.mkdir()
    (workdir / "notes.txt").write_text("keep me")
    assert_one_error_line(run("demo", "--workdir", str(workdir), "--rounds", "1"), says="was not made by")
    assert (workdir / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in workdir.iterdir()) == ["notes.txt"]


def test_demo_checks_every_option_before_touching_its_own_folder(tmp_path, home):
    workdir = tmp_path / "fenji-demo"
    (workdir / "sites" / "clinic").mkdir(parents=True)
    (workdir / ".fenji-demo").write_text("made by fenji demo")
    (workdir / "sites" / "clinic" / "site.duckdb").write_text("an earlier demo's store")
    result = run("demo", "--workdir", str(workdir), "--tasks", "triage,diagnosis,refferal_risk")
    assert_one_error_line(result, 2, says="refferal_risk")
    assert (workdir / "sites" / "clinic" / "site.duckdb").read_text() == "an earlier demo's store"


def test_demo_workdir_naming_a_file(tmp_path, home):
    (tmp_path / "f").write_text("x")
    assert_one_error_line(run("demo", "--workdir", str(tmp_path / "f")), says="is a file")
    assert (tmp_path / "f").read_text() == "x"


def test_demo_replaces_only_its_own_outputs_in_a_folder_it_marked(tmp_path, home):
    from coordinator.settings import CoordinatorSettings
    from fenji.demo import _claim_workdir, _clear_demo_outputs

    workdir = tmp_path / "fenji-demo"
    (workdir / "sites" / "old").mkdir(parents=True)
    (workdir / "exports").mkdir()
    (workdir / "demo-triage.json").write_text("{}")
    (workdir / "my-notes.txt").write_text("keep me")
    (workdir / ".fenji-demo").write_text("")
    _claim_workdir(workdir, CoordinatorSettings())
    _clear_demo_outputs(workdir)
    assert sorted(p.name for p in workdir.iterdir()) == [".fenji-demo", "my-notes.txt"]


# -- fenji coordinator promote -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def registry_template(tmp_path_factory) -> Path:
    """A real MLflow registry with two versions of fenji-referral_risk (made once: creating the
    schema takes seconds; each test gets its own copy)."""
    import mlflow

    folder = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model("fenji-referral_risk")
    for digest in ("a" * 64, "b" * 64):
        client.create_model_version("fenji-referral_risk", source=str(folder), tags={"bundle-sha256": digest})
    return folder / "mlflow.db"


@pytest.fixture()
def registry(home, registry_template):
    """That registry, as FENJI_HOME's."""
    import mlflow

    home.mkdir(parents=True)
    shutil.copyfile(registry_template, home / "mlflow.db")
    uri = f"sqlite:///{(home / 'mlflow.db').resolve()}"
    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


def _alias_version(client, alias: str = "production") -> str | None:
    import mlflow

    try:
        return client.get_model_version_by_alias("fenji-referral_risk", alias).version
    except mlflow.exceptions.MlflowException:
        return None


def test_promote_with_a_torn_audit_log_changes_nothing_and_says_how_to_repair(registry, home):
    promote = ["coordinator", "promote", "--task", "referral_risk", "--actor", "commission:li", "--version"]
    assert run(*promote, "1").exit_code == 0
    audit = home / "audit.jsonl"
    audit.write_bytes(audit.read_bytes() + b'{"seq": 2, "at": "2026-')  # a crash mid-write
    before = audit.read_bytes()
    line = assert_one_error_line(run(*promote, "2"), 8, says="torn tail at entry 2")
    assert "head -n 1" in line  # the repair hint
    assert str(_alias_version(registry)) == "1"  # the promotion did not take effect unaudited
    assert audit.read_bytes() == before


def test_promote_is_audited_and_names_its_registry(registry, home):
    result = run("coordinator", "promote", "--task", "referral_risk", "--version", "2", "--actor", "commission:li")
    assert result.exit_code == 0, result.output
    assert f"Model registry: sqlite:///{(home / 'mlflow.db').resolve()}" in result.stdout
    [entry] = [json.loads(line) for line in (home / "audit.jsonl").read_text().splitlines()]
    assert entry["action"] == "promotion" and entry["details"]["version"] == "2"
    assert entry["details"]["bundle_sha256"] == "b" * 64 and str(_alias_version(registry)) == "2"


def test_promote_is_refused_where_the_governance_service_runs(registry, home, monkeypatch):
    """One person with a shell must not move the alias past the four-eyes rule and its countersigned chain."""
    monkeypatch.delenv("FENJI_COORDINATOR_DB", raising=False)
    assert run("coordinator", "init").exit_code == 0
    result = run("coordinator", "promote", "--task", "referral_risk", "--version", "2", "--actor", "commission:li")
    assert_one_error_line(result, says="two different commissioners")
    assert _alias_version(registry) is None and not (home / "audit.jsonl").exists()


@pytest.mark.parametrize("args, says", [
    (["--task", "referral_risk", "--version", "9"], "no version 9"),
    (["--task", "triage", "--version", "1"], "no model fenji-triage"),
    (["--task", "referral risk", "--version", "1"], "not a task name"),
    (["--task", "referral_risk", "--version", "latest"], "version number"),
    (["--task", "referral_risk", "--version", "1", "--alias", "latest"], "alias"),
])
def test_promote_bad_inputs(registry, home, args, says):
    assert_one_error_line(run("coordinator", "promote", "--actor", "x", *args), says=says)
    assert not (home / "audit.jsonl").exists() and _alias_version(registry) is None


def test_promote_without_a_registry_creates_none(home):
    result = run("coordinator", "promote", "--task", "referral_risk", "--version", "1", "--actor", "x")
    assert_one_error_line(result, 7, says="no model registry at")
    assert not home.exists()


# -- fenji node serve / node token ----------------------------------------------------------------

@pytest.mark.parametrize("case", ["missing", "file", "no-models-anywhere"])
def test_serve_refuses_before_serving(tmp_path, home, case):
    site = tmp_path / "site"
    if case == "file":
        site.write_text("x")
    elif case == "no-models-anywhere":
        site.mkdir()
    # An unbindable host: should the command ever get as far as serving, it stops rather than hangs.
    result = run("node", "serve", "--site-dir", str(site), "--host", "256.256.256.256")
    assert_one_error_line(result)
    assert not home.exists()


@pytest.mark.parametrize("case", ["list-missing", "create-in-a-file", "corrupt-token-file"])
def test_token_commands(tmp_path, case):
    site = tmp_path / "site"
    if case == "list-missing":
        args = ["list", "--site-dir", str(site)]
    elif case == "create-in-a-file":
        site.write_text("x")
        args = ["create", "--site-dir", str(site), "--role", "doctor", "--name", "Dr Wang"]
    else:
        site.mkdir()
        (site / "access_tokens.json").write_text('{"tokens": [{"tok')
        args = ["create", "--site-dir", str(site), "--role", "doctor", "--name", "Dr Wang"]
    assert_one_error_line(run("node", "token", *args))


# -- fenji bench ----------------------------------------------------------------------------------

@pytest.mark.parametrize("args, says", [
    (["nope", "--json", "{tmp}/x.json"], "unknown benchmark"),
    (["scale", "--json", "{tmp}/x.json", "--sites", "ten"], "--sites"),
    (["he-overhead", "--json", "{tmp}/x.json", "--sizes", "1000,-5"], "--sizes"),
    (["he-overhead", "--json", "{tmp}"], "is a folder"),
    (["serving", "--json", "{tmp}/file.txt/x.json"], "is a file"),
])
def test_bench_bad_options_fail_before_running(tmp_path, args, says):
    (tmp_path / "file.txt").write_text("x")
    result = run("bench", *[a.format(tmp=tmp_path) for a in args])
    assert_one_error_line(result, says=says)
    assert not (tmp_path / "x.json").exists()


# -- the last resort ------------------------------------------------------------------------------

def test_an_unexpected_exception_is_one_internal_error_line(monkeypatch):
    import models.spec

    def broken() -> list[str]:
        raise RuntimeError("the task folder vanished\nsecond line")

    monkeypatch.setattr(models.spec, "builtin_tasks", broken)
    result = run("tasks")
    assert result.exit_code == 70 and "Traceback" not in result.output
    assert result.stderr.strip().splitlines() == [
        "internal error: RuntimeError: the task folder vanished (run with --verbose for the traceback: "
        "fenji --verbose …)"]
    verbose = run("--verbose", "tasks")
    assert isinstance(verbose.exception, RuntimeError)  # --verbose lets the traceback through


def test_usage_errors_stay_click_usage_errors(tmp_path):
    result = run("demo", "--rounds", "0")
    assert result.exit_code == 2 and "Traceback" not in result.output and "--rounds" in result.output



def test_the_old_promote_name_still_works_and_says_the_new_one(registry, home):
    result = run("models", "promote", "--task", "referral_risk", "--version", "2", "--actor", "commission:li")
    assert result.exit_code == 0, result.output
    assert "now `fenji coordinator promote`" in result.stderr
    assert str(_alias_version(registry)) == "2"

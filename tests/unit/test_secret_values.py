"""Secrets out of services.yaml (`{from_env: NAME}`, `{from_file: PATH}`): where they are
said, how they are read at deploy time, and that they print as `<secret>` everywhere
but in the env file."""
from __future__ import annotations

import dataclasses
import io
import json
import os
import textwrap

import pytest

from deploytools import lock, render, report, venv
from deploytools.config import parse, secrets
from deploytools.errors import ConfigError

TEXT = """\
hosts:
  web-0: {address: 10.0.0.10}
services:
  vault:
    kind: flask
    repo: /r/vault.git
    hosts: [web-0]
    app: vault:app
    port: 8000
    env:
      PLAIN: "010"
      SECRET_KEY: {from_env: VAULT_SECRET_KEY}
      DATABASE_URL: {from_file: secrets/db.url}
      HOME_FILE:
        from_file: ~/vault.token
"""


@pytest.fixture
def svc(tmp_path):
    (tmp_path / "secrets").mkdir()
    return parse(TEXT, str(tmp_path / "services.yaml")).service("vault")


def test_a_secret_says_where_it_is_said_and_not_what_it_is(svc, tmp_path):
    env = svc.env
    assert env["PLAIN"] == "010"
    assert env["SECRET_KEY"] == secrets.Secret("from_env", "VAULT_SECRET_KEY")
    assert (env["SECRET_KEY"].line, env["DATABASE_URL"].line, env["HOME_FILE"].line) == (12, 13, 14)
    assert env["SECRET_KEY"].path == str(tmp_path / "services.yaml")
    # A file: relative to services.yaml's directory; `~` expanded.
    assert env["DATABASE_URL"].ref == str(tmp_path / "secrets" / "db.url")
    assert env["HOME_FILE"].ref == os.path.expanduser("~/vault.token")
    assert secrets.masked(env) == {"PLAIN": "010", "SECRET_KEY": "<secret>",
                                   "DATABASE_URL": "<secret>", "HOME_FILE": "<secret>"}
    assert secrets.described(env).startswith(
        "PLAIN=010 SECRET_KEY=<secret> (from_env VAULT_SECRET_KEY) DATABASE_URL=<secret> "
        f"(from_file {tmp_path}/secrets/db.url)")


def test_resolved_values_show_only_in_the_env_file(svc, tmp_path):
    (tmp_path / "secrets" / "db.url").write_text("postgres://u:FILE-VALUE@db/x\n\n")
    home = tmp_path / "token"
    home.write_text("HOME-VALUE")
    svc = dataclasses.replace(svc, env=type(svc.env)(
        dict(svc.env, HOME_FILE=secrets.Secret("from_file", str(home)))))
    resolved = secrets.resolve(svc, {"VAULT_SECRET_KEY": "ENV-VALUE with 'quotes' $(x)"})
    values = ("ENV-VALUE", "FILE-VALUE", "HOME-VALUE")
    shown = [str(resolved.env["SECRET_KEY"]), repr(resolved.env["SECRET_KEY"]),
             f"{resolved.env['DATABASE_URL']}", repr(resolved), repr(resolved.env),
             json.dumps(dict(resolved.env), default=str), secrets.described(resolved.env),
             json.dumps(secrets.masked(resolved.env))]
    assert not [s for s in shown for v in values if v in s], shown
    assert str(resolved.env["SECRET_KEY"]) == "<secret>"
    assert resolved == svc  # the same settings: a value is not part of a comparison

    host = parse(TEXT, str(tmp_path / "services.yaml")).hosts["web-0"]
    env_file = render.release_files(resolved, host, "/srv/vault", "R", "c" * 40)[0]
    assert env_file.path == ".deploy/env" and env_file.mode == 0o600
    lines = env_file.content.splitlines()
    assert "SECRET_KEY='ENV-VALUE with '\"'\"'quotes'\"'\"' $(x)'" in lines
    assert "DATABASE_URL=postgres://u:FILE-VALUE@db/x" in lines  # trailing newlines dropped
    assert "HOME_FILE=HOME-VALUE" in lines and "PLAIN=010" in lines


def test_an_unresolved_secret_is_never_rendered(svc, tmp_path):
    host = parse(TEXT, str(tmp_path / "services.yaml")).hosts["web-0"]
    with pytest.raises(RuntimeError, match="not resolved"):
        render.release_files(svc, host, "/srv/vault", "R", "c" * 40)


def test_a_service_without_secrets_is_resolved_as_it_is(tmp_path):
    text = TEXT.split("    env:")[0]
    svc = parse(text, str(tmp_path / "services.yaml")).service("vault")
    assert secrets.resolve(svc, {}) is svc


def test_every_missing_secret_is_named_in_one_error_with_its_line(svc, tmp_path):
    (tmp_path / "secrets" / "db.url").mkdir()  # a directory, not a file
    with pytest.raises(ConfigError) as info:
        secrets.resolve(svc, {})
    err = info.value
    assert (err.path, err.line) == (str(tmp_path / "services.yaml"), 12)
    text = str(err)
    assert text.startswith(f"{tmp_path}/services.yaml:12: services.vault.env.SECRET_KEY: the "
                           "environment variable VAULT_SECRET_KEY is not set here: export it "
                           "before deploying (export VAULT_SECRET_KEY=...")
    assert "nothing was touched" in text and "\n" not in text  # one paragraph
    assert f"Also services.vault.env.DATABASE_URL (line 13): {tmp_path}/secrets/db.url is a " \
           "directory" in text
    assert "Also services.vault.env.HOME_FILE (line 14): the file " in text


@pytest.mark.parametrize("content,why", [
    (b"", "is empty"),
    (b"\n", "is empty"),
    (b"one\ntwo\n", "holds more than one line"),
    (b"\xff\xfe", "is not UTF-8 text"),
])
def test_a_file_that_is_not_one_line_of_text_is_refused(svc, tmp_path, content, why):
    (tmp_path / "secrets" / "db.url").write_bytes(content)
    home = tmp_path / "t"
    home.write_text("ok")
    svc = dataclasses.replace(svc, env=type(svc.env)(
        dict(svc.env, HOME_FILE=secrets.Secret("from_file", str(home)))))
    with pytest.raises(ConfigError, match=why) as info:
        secrets.resolve(svc, {"VAULT_SECRET_KEY": "k"})
    assert info.value.line == 13


def test_an_empty_environment_variable_is_refused(svc):
    with pytest.raises(ConfigError, match="the environment variable VAULT_SECRET_KEY is empty"):
        secrets.resolve(dataclasses.replace(svc, env=type(svc.env)(
            {"SECRET_KEY": svc.env["SECRET_KEY"]})), {"VAULT_SECRET_KEY": ""})


def test_a_secret_is_refused_where_a_plain_string_is_needed(tmp_path):
    text = TEXT.replace("      PLAIN: \"010\"\n", "      PLAIN: {from_env: [A]}\n")
    with pytest.raises(ConfigError, match="from_env takes the name of an environment variable") \
            as info:
        parse(text, str(tmp_path / "services.yaml"))
    assert info.value.line == 11
    text = textwrap.dedent(TEXT).replace("      PLAIN: \"010\"\n", "      PLAIN: {}\n")
    with pytest.raises(ConfigError, match="got no key"):
        parse(text, str(tmp_path / "services.yaml"))


@pytest.mark.parametrize("name, value, shown", [
    ("DEBUG", "0", "0"),
    ("DJANGO_SETTINGS_MODULE", "airship.settings", "airship.settings"),
    ("SECRET_KEY", "s3cr3t", "<hidden>"),           # a secret's name, written in plain text
    ("DB_PASSWORD", "hunter2", "<hidden>"),
    ("STRIPE_API_TOKEN", "tok", "<hidden>"),
    ("DATABASE_URL", "postgres://app:pw@db/app", "postgres://app:<hidden>@db/app"),
    ("CACHE_URL", "redis://:pw@cache:6379/0", "redis://:<hidden>@cache:6379/0"),
    ("SITE_URL", "https://example.com/a@b", "https://example.com/a@b"),  # no userinfo
    ("MAIL_URL", "smtp://user@mail:25", "smtp://user@mail:25"),          # no password
])
def test_plan_and_status_hide_a_secret_written_in_plain_text(name, value, shown):
    assert secrets.shown(name, value) == shown
    assert secrets.masked({name: value}) == {name: shown}


PIP_ENV_TEXT = """\
hosts:
  web-0: {address: 10.0.0.10}
defaults:
  pip_env:
    PIP_INDEX_URL: {from_env: INDEX_URL}
    UV_INDEX_URL: {from_env: INDEX_URL}
services:
  vault:
    kind: flask
    repo: /r/vault.git
    hosts: [web-0]
    app: vault:app
    port: 8000
    env:
      SECRET_KEY: {from_env: VAULT_SECRET_KEY}
"""


def test_pip_env_secrets_are_read_with_the_others_and_setup_reads_only_them(tmp_path):
    svc = parse(PIP_ENV_TEXT, str(tmp_path / "services.yaml")).service("vault")
    assert svc.pip_env["PIP_INDEX_URL"].line == 5
    with pytest.raises(ConfigError) as e:
        secrets.resolve(svc, {})
    assert "services.vault.env.SECRET_KEY: the environment variable VAULT_SECRET_KEY" in str(e.value)
    assert "Also services.vault.pip_env.PIP_INDEX_URL (line 5): the environment variable " \
           "INDEX_URL is not set here" in str(e.value)
    url = "https://__token__:s3cr3t@pypi.example.com/simple/"
    only = secrets.resolve(svc, {"INDEX_URL": url}, settings=("pip_env",))  # what setup reads
    assert venv.pip_environment(only) == {"PIP_INDEX_URL": url, "UV_INDEX_URL": url}
    assert str(only.pip_env["PIP_INDEX_URL"]) == "<secret>" and url not in repr(only)
    with pytest.raises(RuntimeError, match="not resolved"):
        render.service_env(only, None, "/srv/vault", "R", "c")  # the app's env was not read


@pytest.mark.parametrize("name", ["PATH", "HOME", "LD_PRELOAD", "BASH_ENV", "IFS"])
def test_pip_env_refuses_the_names_the_staging_program_needs(tmp_path, name):
    text = PIP_ENV_TEXT.replace("PIP_INDEX_URL:", f"{name}:")
    with pytest.raises(ConfigError) as e:
        parse(text, str(tmp_path / "services.yaml"))
    assert f"services.yaml:5: defaults.pip_env: {name} is not for pip_env" in str(e.value)


def test_what_hosts_print_shows_a_read_secret_as_secret(tmp_path):
    svc = parse(PIP_ENV_TEXT, str(tmp_path / "services.yaml")).service("vault")
    token = 'to"ken\\' + "x" * 8
    secrets.resolve(svc, {"INDEX_URL": token, "VAULT_SECRET_KEY": "abc"})
    out = io.StringIO()
    report.Reporter(stream=out).event("staged", f"  web-0: pip said {token}")
    report.Reporter(json_mode=True, stream=out).event("staged", "x", output=f"ERROR {token}")
    lines = out.getvalue().splitlines()
    assert lines[0] == "  web-0: pip said <secret>"
    assert json.loads(lines[1])["output"] == "ERROR <secret>"
    script = lock.history_append_script("/srv/vault", {"error": f"pip: {token}"})
    assert token not in script and json.dumps(token)[1:-1] not in script
    assert report.redact("abc 1 abc") == "abc 1 abc"  # too short to hide: it would garble


@pytest.mark.parametrize("pip_args, warned", [
    ("--index-url https://__token__:abc@pypi.example.com/simple/", True),
    ("--extra-index-url https://deploy-token@pypi.example.com/simple/", True),
    ("--index-url https://pypi.example.com/simple/ --find-links /w", False),
    ("", False),
])
def test_credentials_in_pip_args_are_warned_about(tmp_path, pip_args, warned):
    svc = dataclasses.replace(parse(PIP_ENV_TEXT, str(tmp_path / "services.yaml"))
                              .service("vault"), pip_args=pip_args)
    warning = secrets.pip_args_warning(svc)
    assert (warning is not None) == warned
    if warned:
        assert warning.startswith("services.vault.pip_args holds a URL's credentials")
        assert "pip_env" in warning and "abc" not in warning

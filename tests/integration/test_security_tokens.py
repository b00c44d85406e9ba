"""Tokens: created by an admin (API or CLI), shown once, stored as a hash, revoked at once."""

from __future__ import annotations

from click.testing import CliRunner
from sqlalchemy import create_engine, text

from orchestrator import cli


def test_admin_creates_lists_and_revokes_tokens(api, database_url):
    created = api.post("/tokens", json={"role": "operator", "name": "ci bot"})
    assert created.status_code == 201, created.get_json()
    body = created.get_json()
    secret, token_id = body["token"], body["id"]
    assert token_id.startswith("tok_") and secret.startswith("sy_")
    assert body["role"] == "operator" and body["revoked_at"] is None

    bot = api.as_(secret)
    assert bot.get("/runs?limit=1").status_code == 200
    assert bot.get("/tokens").status_code == 403  # an operator does not manage tokens

    listed = {t["id"]: t for t in api.get("/tokens").get_json()["tokens"]}
    assert listed[token_id]["name"] == "ci bot" and "token" not in listed[token_id]
    assert secret not in api.get("/tokens").get_data(as_text=True)
    engine = create_engine(database_url)
    with engine.connect() as conn:
        row = conn.execute(text("SELECT * FROM api_tokens WHERE id = :id"), {"id": token_id}).mappings().one()
    engine.dispose()
    assert secret not in {str(v) for v in row.values()}  # only its hash is stored

    revoked = api.delete(f"/tokens/{token_id}")
    assert revoked.status_code == 200 and revoked.get_json()["revoked_at"]
    refused = bot.get("/runs?limit=1")
    assert refused.status_code == 401 and refused.get_json()["error"]["code"] == "unauthorized"
    assert api.delete("/tokens/tok_nope").status_code == 404


def test_token_body_is_validated(api):
    for body in ({"role": "root"}, {}, {"role": "viewer", "extra": 1}, {"role": "viewer", "name": 5}):
        response = api.post("/tokens", json=body)
        assert response.status_code == 400, body
        assert response.get_json()["error"]["code"] == "invalid_request"


def test_cli_lists_and_revokes(api, settings):
    env = {"SWITCHYARD_DATABASE_URL": settings.database_url, "SWITCHYARD_BROKER_URL": settings.broker_url}
    runner = CliRunner()
    made = runner.invoke(cli.main, ["token", "create", "--tenant", "acme", "--role", "viewer", "--name", "cli"], env=env)
    assert made.exit_code == 0, made.output
    secret = made.output.strip()
    assert api.as_(secret).get("/runs?limit=1").status_code == 200

    listing = runner.invoke(cli.main, ["token", "list", "--tenant", "acme"], env=env)
    assert listing.exit_code == 0 and secret not in listing.output
    token_id = next(line.split("\t")[0] for line in listing.output.splitlines() if "\tcli\t" in line)
    assert token_id.startswith("tok_")

    revoked = runner.invoke(cli.main, ["token", "revoke", token_id], env=env)
    assert revoked.exit_code == 0, revoked.output
    assert api.as_(secret).get("/runs?limit=1").status_code == 401
    assert runner.invoke(cli.main, ["token", "revoke", "tok_nope"], env=env).exit_code != 0


def test_with_a_token_cache_a_revoked_token_works_until_its_entry_expires_and_no_longer(api, settings, app_for):
    """SWITCHYARD_TOKEN_CACHE_S trades the revocation's immediacy for a lookup per request: within the
    cache's time a revoked token still works in a process that looked it up, after it answers 401."""
    from tests.integration.conftest import Api, wait_for

    secret = api.post("/tokens", json={"role": "viewer", "name": "cached"}).get_json()
    cached = Api(app_for(settings.model_copy(update={"token_cache_s": 3.0})).test_client(), secret["token"])
    assert cached.get("/runs?limit=1").status_code == 200  # looked up, and kept
    assert cached.as_("sy_unknown").get("/runs?limit=1").status_code == 401  # an unknown token is never kept
    assert api.delete(f"/tokens/{secret['id']}").status_code == 200
    assert cached.get("/runs?limit=1").status_code == 200  # the process's entry, not yet expired
    refused = wait_for(lambda: (r := cached.get("/runs?limit=1")).status_code == 401 and r, 10,
                       "the cached token's entry to expire", interval=0.1)
    assert refused.get_json()["error"]["code"] == "unauthorized"
    assert api.as_(secret["token"]).get("/runs?limit=1").status_code == 401  # no cache: refused at once

    # Revoked through the process that keeps it: refused there at once.
    other = api.post("/tokens", json={"role": "admin", "name": "cached admin"}).get_json()
    admin = Api(cached.client, other["token"])
    assert admin.get("/runs?limit=1").status_code == 200  # kept
    assert admin.delete(f"/tokens/{other['id']}").status_code == 200
    assert admin.get("/runs?limit=1").status_code == 401

"""The demo's own state: the scoring service token it keeps for the user."""

from __future__ import annotations

from cli import demo
from closedloop.settings import Settings


def test_the_kept_token_is_private_from_its_creation_and_kept_across_runs(settings: Settings) -> None:
    said: list[str] = []
    first = demo._with_serving_token(settings, said.append)
    token_file = settings.state_dir / "serving-token"
    assert token_file.stat().st_mode & 0o777 == 0o600
    assert settings.state_dir.stat().st_mode & 0o777 == 0o700
    assert first.serving_token is not None and len(first.serving_token.get_secret_value()) >= 32
    again = demo._with_serving_token(settings, said.append)
    assert again.serving_token == first.serving_token
    assert said[-1] == f"scoring service token: {token_file} (export CLOSEDLOOP_SERVING_TOKEN=$(cat {token_file}))"

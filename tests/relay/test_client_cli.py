"""The client's command line takes every tunnel token the app hands out."""

import argparse

from intunnel.client import cli
from intunnel.security import new_tunnel_token


def test_tunnel_tokens_never_look_like_an_option():
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    for _ in range(2000):  # a leading "-" came up about once in 64 tokens
        token = new_tunnel_token()
        assert not token.startswith("-")
        assert parser.parse_args(["3000", "--server", "http://localhost:8080", "--token", token]).token == token

"""`kiban dev-cluster` flags map onto the node pool."""

import argparse

import pytest

from kiban_dev.devcluster import cli


def parse(argv):
    parser = argparse.ArgumentParser(prog="kiban")
    cli.register(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["dev-cluster", *argv])


def test_defaults_are_the_default_pool_with_the_leaderworkerset_controller():
    args = parse([])
    assert cli.pool_from_args(args) == {"h100": 4, "l4": 3, "a100-mig": 1, "cpu": 1}
    assert args.func is cli.run
    assert args.leaderworkerset is True
    assert parse(["--no-leaderworkerset"]).leaderworkerset is False


def test_node_counts_are_flags():
    assert cli.pool_from_args(parse(["--h100", "5", "--a100-mig", "0"])) == {
        "h100": 5, "l4": 3, "a100-mig": 0, "cpu": 1}


def test_negative_count_is_refused(capsys):
    with pytest.raises(SystemExit):
        parse(["--l4", "-2"])
    assert "--l4: node count must be >= 0" in capsys.readouterr().err


def test_empty_pool_exits_with_a_clear_message(capsys):
    code = cli.run(parse(["--h100", "0", "--l4", "0", "--a100-mig", "0", "--cpu", "0"]))
    assert code == 2
    assert "node pool is empty" in capsys.readouterr().err

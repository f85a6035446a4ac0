"""Flags generated from config dataclasses: names, types, help and defaults come from the dataclass, once."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest

from nessa.cli import build_parser, main
from nessa.cli.options import Flag, Parser, add_config_flags, attribute_docs, byte_size, given, human_bytes
from nessa.services.storage.config import DaemonConfig


@dataclasses.dataclass
class Example:
    """An example config.

    Attributes:
        name: what to call it, with ``markup``
            over two lines.
        size_bytes: how big.
        ratio: a fraction.
        verbose: say more.
        cache: keep a cache.
        where: a directory.
    """

    name: str
    size_bytes: int = 4 << 20
    ratio: float = 0.5
    verbose: bool = False
    cache: bool = True
    where: Path | None = None
    secret: str = dataclasses.field(default="x", metadata={"help": "from metadata"})


def _parser(**flags: Flag) -> argparse.ArgumentParser:
    p = Parser(prog="t")
    add_config_flags(p, Example, flags)
    return p


def test_attribute_docs_reads_the_google_attributes_section_without_markup() -> None:
    docs = attribute_docs(Example)
    assert docs["name"] == "what to call it, with markup over two lines"
    assert docs["ratio"] == "a fraction"
    assert "secret" not in docs


def test_only_the_flags_typed_reach_the_dataclass_so_its_defaults_apply() -> None:
    args = _parser().parse_args(["--name", "n", "--size-bytes", "512MiB", "--no-cache", "--where", "/tmp"])
    fields = given(args, Example)
    assert fields == {"name": "n", "size_bytes": 512 << 20, "cache": False, "where": Path("/tmp")}
    built = Example(**fields)
    assert built.ratio == 0.5 and built.verbose is False and built.secret == "x"


def test_help_shows_each_default_from_the_field() -> None:
    text = " ".join(_parser().format_help().split())
    assert "--size-bytes SIZE_BYTES how big (default: 4 MiB)" in text
    assert "--ratio RATIO a fraction (default: 0.5)" in text
    assert "--verbose, --no-verbose say more (default: off)" in text
    assert "--secret SECRET from metadata (default: x)" in text
    assert "--name NAME what to call it" in text


def test_a_field_without_default_is_required_and_flags_can_be_renamed_or_hidden(
    capsys: pytest.CaptureFixture[str],
) -> None:
    p = _parser(ratio=Flag(names=("--share",), choices=(0.25, 0.5)), secret=Flag(hidden=True))
    assert given(p.parse_args(["--name", "a", "--share", "0.25"]), Example) == {"name": "a", "ratio": 0.25}
    with pytest.raises(SystemExit) as exc:
        p.parse_args(["--secret", "s", "--name", "a"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit):
        p.parse_args([])
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "t: error: the following arguments are required: --name (see t --help)"


def test_byte_sizes_and_their_text() -> None:
    assert byte_size("1048576") == 1 << 20
    assert byte_size("4M") == byte_size("4MiB") == byte_size("4 mib") == 4 << 20
    assert byte_size("1.5GiB") == 3 << 29
    with pytest.raises(argparse.ArgumentTypeError, match="not a size"):
        byte_size("lots")
    assert human_bytes(1536) == "1.5 KiB" and human_bytes(12) == "12 B"


def test_every_daemon_config_field_has_a_serve_flag() -> None:
    p = build_parser("serve")
    serve = p._subparsers._group_actions[0].choices["serve"]  # type: ignore[union-attr]
    dests = {a.dest for a in serve._actions}
    assert {f.name for f in dataclasses.fields(DaemonConfig)} <= dests
    args = p.parse_args(["serve", "--data-dir", "d", "--max-message-bytes", "8MiB", "--no-warmup", "--grace", "2"])
    assert given(args, DaemonConfig) == {
        "data_dir": Path("d"),
        "max_message_bytes": 8 << 20,
        "warmup": False,
        "grace_seconds": 2.0,
    }


def test_train_flags_come_from_train_config() -> None:
    from nessa.trainer.config import TrainConfig

    p = build_parser("train")
    args = p.parse_args(
        ["train", "--target", "h:1", "--dataset", "d", "--test-dataset", "t", "--eval-batch-size", "64",
         "--no-pipeline", "--option", "optimizer=stochastic", "--option", "epsilon=0.2"]
    )  # fmt: skip
    fields = given(args, TrainConfig)
    assert fields == {
        "target": "h:1",
        "dataset": "d",
        "test_dataset": "t",
        "eval_batch_size": 64,
        "pipeline": False,
        "options": [("optimizer", "stochastic"), ("epsilon", 0.2)],
    }


def test_methods_lists_each_method_with_its_inputs_and_options(capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from nessa.selection import available

    assert main(["methods", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert set(listed) == set(available())
    assert listed["craig"]["requires"] == available()["craig"]["requires"]
    assert listed["craig"]["daemon"] == "yes, with a pushed proxy" and listed["random"]["daemon"].startswith("yes")
    assert listed["sas"]["daemon"].startswith("no: needs groups")  # default options need latent classes
    assert main(["methods", "craig"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("craig: ") and "  needs:   labels, gradients" in out and "budget_rule" in out
    assert main(["methods", "magic"]) == 2
    assert capsys.readouterr().err.startswith("nessa methods: error: unknown method 'magic'")

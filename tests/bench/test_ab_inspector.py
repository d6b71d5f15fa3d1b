"""bench/ab_inspector.py: its side syntax, a short run of two sides on a tiny bundle, and the
check that sides decide alike."""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "ab_inspector.py"


def load_bench():
    # imported by its own name: the spawned workers import the module to find their target
    if str(BENCH.parent) not in sys.path:
        sys.path.insert(0, str(BENCH.parent))
    return importlib.import_module("ab_inspector")


def test_side_syntax():
    parse = load_bench().parse_side
    assert parse("new") == ("new", None, {}, None)
    assert parse("old=/tmp/old/python") == ("old", "/tmp/old/python", {}, None)
    assert parse("s0:AUTOWELD_POOL_SPIN_US=0,X=1") == (
        "s0", None, {"AUTOWELD_POOL_SPIN_US": "0", "X": "1"}, None
    )  # fmt: skip
    assert parse("q=/t/python@/b/int8:X=1") == ("q", "/t/python", {"X": "1"}, "/b/int8")
    with pytest.raises(argparse.ArgumentTypeError, match="no name"):
        parse("=/tmp/x")
    with pytest.raises(argparse.ArgumentTypeError, match="not VAR=VALUE"):
        parse("a:NOVALUE")


def test_sides_run_and_must_agree(tiny_bundle, image_dir, capsys):
    bench = load_bench()
    argv = ["--bundle", str(tiny_bundle), "--images", str(image_dir), "--blocks", "2"]
    argv += ["--threads", "1", "--side", "a", "--side", "b:AUTOWELD_POOL_SPIN_US=0"]
    assert bench.main(argv) == 0
    out = capsys.readouterr().out
    assert "| a |" in out and "| b |" in out and "same decisions on every side" in out
    runs = {"a": {"decisions": ["PASS", "FAIL"]}, "b": {"decisions": ["PASS", "FAIL"]}}
    bundles = {"a": "fp32", "b": "fp32", "c": "fp32", "q": "int8", "r": "int8"}
    assert bench.disagreeing(runs, bundles) == []
    runs["c"] = {"decisions": ["PASS", "PASS"]}
    assert bench.disagreeing(runs, bundles) == ["c"]
    # a side on another bundle may decide otherwise; a disagreement on one bundle still counts
    runs["q"] = {"decisions": ["FAIL", "FAIL"]}
    assert bench.disagreeing(runs, bundles) == ["c"]
    runs["r"] = {"decisions": ["FAIL", "PASS"]}
    assert bench.disagreeing(runs, bundles) == ["c", "r"]

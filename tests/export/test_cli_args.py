import pytest

from autoweld.cli.export import build_parser


def test_defaults_and_overrides_parse():
    args = build_parser().parse_args(["--category", "weld"])
    assert args.out == "bundles" and args.models is None and args.backbone is None
    args = build_parser().parse_args(
        ["--category", "bottle", "--models", "patchcore, feature_ae", "--coreset-ratio", "0.25",
         "--coreset-max", "5000", "--image-size", "256", "-vv"]
    )  # fmt: skip
    assert args.models == ["patchcore", "feature_ae"]
    assert args.coreset_ratio == 0.25 and args.coreset_max == 5000
    assert args.image_size == 256 and args.verbose == 2


@pytest.mark.parametrize(
    "bad",
    [
        [],  # --category is required
        ["--category", "weld", "--coreset-ratio", "1.5"],
        ["--category", "weld", "--coreset-max", "0"],
        ["--category", "weld", "--image-size", "abc"],
        ["--category", "weld", "--models", ","],
        ["--category", "weld", "--weights", "w.pth", "--random-weights"],
    ],
)
def test_bad_arguments_exit_with_usage_error(bad, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(bad)
    assert exit_info.value.code == 2
    assert "error" in capsys.readouterr().err

import pytest

from autoweld.export.recipes import list_recipes, resolve_recipe

MVTEC = (
    "bottle cable capsule carpet grid hazelnut leather metal_nut pill screw tile toothbrush "
    "transistor wood zipper"
).split()


def test_weld_and_all_mvtec_categories_are_shipped():
    shipped = set(list_recipes())
    assert {"weld", "default", *MVTEC} <= shipped


@pytest.mark.parametrize("category", ["weld", *MVTEC])
def test_every_recipe_resolves_to_lite0_by_default_and_has_the_paper_profile(category):
    recipe = resolve_recipe(category)
    assert recipe.backbone == "efficientnet_lite0"
    assert recipe.models == ["patchcore"]
    assert recipe.mean == (0.5, 0.5, 0.5)
    assert recipe.head_settings["patchcore"]["coreset_max"] <= 16_000
    paper = resolve_recipe(category, backbone="wide_resnet50_2")
    assert paper.profile == "wide_resnet50_2"
    assert paper.image_size == 224
    assert paper.mean == (0.485, 0.456, 0.406)
    settings = paper.head_settings["patchcore"]
    assert settings["coreset_ratio"] == 0.01
    assert settings["embedding_dim"] == 1024
    assert settings["reweight_neighbours"] == 9
    assert paper.scoring["map_sigma"] == 4.0


def test_weld_defaults_are_the_tuned_ones():
    weld = resolve_recipe("weld")
    assert weld.preprocess["clahe"] is False
    assert weld.image_size == 256
    assert weld.head_settings["patchcore"]["coreset_max"] == 16000
    assert resolve_recipe("bottle").image_size == 224


def test_preprocess_values_come_from_the_recipe(tmp_path):
    own = tmp_path / "own.toml"
    own.write_text(
        'profile = "p"\n[preprocess]\nclahe = true\nclip_limit = 3.5\ntile_grid = [4, 6]\n'
        '[p]\nbackbone = "resnet18"\nimage_size = 64\nmean = [0.1, 0.2, 0.3]\n'
        'std = [0.4, 0.5, 0.6]\nmodels = ["patchcore"]\nlayers = ["layer1", "layer2"]\n'
    )
    recipe = resolve_recipe("anything", recipe=own)
    assert recipe.preprocess == {
        "clahe": True,
        "clip_limit": 3.5,
        "tile_grid": [4, 6],
        "sigma": 0.0,
    }
    assert recipe.mean == (0.1, 0.2, 0.3) and recipe.std == (0.4, 0.5, 0.6)
    assert recipe.layers == ["layer1", "layer2"]
    assert recipe.calibration["threshold_method"] == "best_f1"


def test_cli_values_override_the_recipe():
    recipe = resolve_recipe(
        "weld",
        image_size=128,
        models=["patchcore"],
        seed=7,
        head_overrides={"patchcore": {"coreset_ratio": 0.5, "coreset_max": None}},
    )
    assert recipe.image_size == 128
    assert recipe.seed == 7
    assert recipe.head_settings["patchcore"]["coreset_ratio"] == 0.5
    assert recipe.head_settings["patchcore"]["coreset_max"] == 16000  # None leaves it alone


def test_backbone_without_a_profile_gets_its_own_normalisation():
    recipe = resolve_recipe("weld", backbone="resnet18")
    assert recipe.backbone == "resnet18"
    assert recipe.profile == "efficientnet_lite0"
    assert recipe.mean == (0.485, 0.456, 0.406)


def test_unknown_category_falls_back_to_the_default_recipe():
    recipe = resolve_recipe("my_parts")
    assert recipe.category == "my_parts"
    assert recipe.source.endswith("default.toml")


def test_bad_recipes_are_rejected(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(
        'category = "x"\nprofile = "p"\n[p]\nbackbone = "resnet18"\nimage_size = 64\n'
        'mean = [0.5, 0.5, 0.5]\nstd = [0.5, 0.5, 0.5]\nmodels = ["patchcore"]\n'
        'colour = "red"\n'
    )
    with pytest.raises(ValueError, match="unknown key"):
        resolve_recipe("x", recipe=bad)
    broken = tmp_path / "broken.toml"
    broken.write_text("profile = [")
    with pytest.raises(ValueError, match="not valid TOML"):
        resolve_recipe("x", recipe=broken)
    with pytest.raises(ValueError, match="multiple of 8"):
        resolve_recipe("weld", image_size=100)
    with pytest.raises(ValueError, match="not found"):
        resolve_recipe("x", recipe="no_such_recipe")

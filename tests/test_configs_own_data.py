"""Configs for your own data (issue 23): the neutral ones hold the paper's settings and resolve against an
indexed folder; every smoke-scale config says so in its name."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cromss.config import load_config
from cromss.training import PretrainConfig
from tests.generic_data import make_synthetic

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))


def _is_smoke(data: dict) -> bool:
    trainer = data.get("trainer") or {}
    epochs = trainer.get("max_epochs", data.get("epochs"))
    return trainer.get("limit_train_batches") is not None or (epochs is not None and epochs < 10)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(ROOT / "configs")))
def test_smoke_scale_configs_are_named_as_such(path):
    data = yaml.safe_load(path.read_text()) or {}
    if "experiment" in data or path.parent.name == "experiments":
        return  # experiment grids, not training configs
    assert _is_smoke(data) == path.stem.endswith("-smoke"), path


def test_neutral_pretrain_config_is_the_papers_and_resolves(tmp_path):
    from cromss.training.run import resolve_config

    paper = load_config(PretrainConfig, ROOT / "configs" / "pretrain" / "cromss-midf-13b.yaml")
    root = make_synthetic(tmp_path / "mydata", {"s2": ["B2", "B3", "B4", "B8"], "s1": ["VV", "VH"]},
                          ["water", "land", "urban"], [2, 2, 1, 3], size=16, seed=1)
    cfg = load_config(PretrainConfig, ROOT / "configs" / "own-data" / "pretrain-cromss-midf.yaml",
                      [f"data.root={root}"])
    for section in ("method", "optim"):
        mine, theirs = vars(getattr(cfg, section)), vars(getattr(paper, section))
        differ = {k for k in mine if mine[k] != theirs[k]}
        assert differ <= {"sync_selection"}, (section, differ)  # the documented choice: exact global thresholds
    for key in ("crop_size", "batch_size", "flip_p", "rotate_p", "augment", "random_season", "persistent_workers"):
        assert getattr(cfg.data, key) == getattr(paper.data, key), key
    for key in ("encoder", "fusion", "decoder_channels", "head_kernel"):
        assert getattr(cfg.model, key) == getattr(paper.model, key), key
    assert cfg.trainer.max_epochs == paper.trainer.max_epochs == 200 and cfg.trainer.limit_train_batches is None
    resolved = resolve_config(cfg)  # modalities, bands and classes from the indexed folder
    assert sorted(resolved.model.modalities) == ["s1", "s2"] and resolved.model.num_classes == 3
    assert resolved.data.bands == {"s2": ["B2", "B3", "B4", "B8"], "s1": ["VV", "VH"]}


def test_neutral_finetune_config_is_the_papers_recipe():
    from cromss.transfer.config import FinetuneConfig

    paper = load_config(FinetuneConfig, ROOT / "configs" / "finetune" / "dw-deeplabv3plus.yaml")
    cfg = load_config(FinetuneConfig, ROOT / "configs" / "own-data" / "finetune-deeplabv3plus.yaml")
    for key in ("framework", "encoder", "lr", "lr_schedule", "epochs", "seeds", "dice"):
        assert getattr(cfg, key) == getattr(paper, key), key
    assert cfg.data.kind == "generic"


def test_readme_three_commands_use_the_neutral_configs():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### Your own data in three commands", 1)[1].split("###", 1)[0]
    assert "configs/own-data/pretrain-cromss-midf.yaml" in section
    assert "configs/own-data/finetune-deeplabv3plus.yaml" in section
    assert "smoke" not in section.split("```bash", 1)[1].split("```", 1)[0]
    for path in ("configs/own-data/pretrain-cromss-midf.yaml", "configs/own-data/finetune-deeplabv3plus.yaml"):
        assert (ROOT / path).is_file()

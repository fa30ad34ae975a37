"""Configs are validated before any work starts: one clear ConfigError naming the key (issue 7).

Each case goes through ``cromss.config.load_config`` (YAML file + dotted overrides) and, for the
commands, through the CLI: exit status 2, the message on stderr, no traceback.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cromss.cli import main as cli_main
from cromss.config import load_config
from cromss.data import DataConfig
from cromss.errors import ConfigError
from cromss.models import ModelConfig
from cromss.training import PretrainConfig

ROOT = Path(__file__).resolve().parents[1]
PRETRAIN_DEMO = ROOT / "configs" / "demo" / "pretrain-cromss-midf.yaml"
FINETUNE_DEMO = ROOT / "configs" / "demo" / "finetune-dw.yaml"


def _key(key: str) -> str:
    """A pattern matching ``key`` as a whole config key: 'lr' matches "'lr'" or "optim.lr", never 'min_lr',
    'lr_schedule' or any other word that merely contains it."""
    return rf"(?<![\w]){re.escape(key)}(?![\w])"


def _yaml(tmp_path: Path, data: dict, name: str = "cfg.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


# ----------------------------------------------------------------------------- DataConfig / ModelConfig
DATA_CASES = [
    ({"kind": "nol", "bacth_size": 4}, "bacth_size"),  # unknown key (typo)
    ({"batch_size": "eight"}, "batch_size"),  # wrong type
    ({"batch_size": 2.5}, "batch_size"),  # float for an int
    ({"augment": "yes"}, "augment"),  # string for a bool
    ({"modalities": "s1"}, "modalities"),  # scalar for a list
    ({"kind": "sentinel"}, "data.kind"),
    ({"s2_bands": 12}, "data.s2_bands"),
    ({"batch_size": 0}, "data.batch_size"),
    ({"val_fraction": 1.0}, "data.val_fraction"),
    ({"rotate_p": 1.5}, "data.rotate_p"),
    ({"season": 4}, "data.season"),
    ({"modalities": ["s1", "s3"]}, "data.modalities"),
    ({"crop_size": 0}, "data.crop_size"),
]


@pytest.mark.parametrize(("data", "key"), DATA_CASES, ids=[k for _, k in DATA_CASES])
def test_data_config_errors_name_the_key(tmp_path, data, key):
    with pytest.raises(ConfigError, match=_key(key)):
        load_config(DataConfig, _yaml(tmp_path, data))


MODEL_CASES = [
    ({"encoderr": "resnet18"}, "encoderr"),
    ({"num_classes": "nine"}, "num_classes"),
    ({"decoder_channels": [16, 8]}, "model.decoder_channels"),
    ({"fusion": "early"}, "model.fusion"),
    ({"s2_bands": 10}, "model.s2_bands"),
    ({"num_classes": 0}, "model.num_classes"),
    ({"head_kernel": 2}, "model.head_kernel"),
    ({"encoder": "resnet9000"}, "model.encoder"),
    # an unset model.modalities is filled from the data when a run resolves its config (and refused
    # there for 'single' with two modalities); set explicitly, the model section refuses it itself
    ({"fusion": "single", "modalities": ["s1", "s2"]}, "model.modalities"),
]


@pytest.mark.parametrize(("data", "key"), MODEL_CASES, ids=[k for _, k in MODEL_CASES])
def test_model_config_errors_name_the_key(tmp_path, data, key):
    with pytest.raises(ConfigError, match=_key(key)):
        load_config(ModelConfig, _yaml(tmp_path, data))


# ----------------------------------------------------------------------------- PretrainConfig
PRETRAIN_CASES = [
    (["method.beta=0.9", "method.mu=0.2"], "method.beta"),  # beta + mu > 1
    (["method.alpha0=0"], "method.alpha0"),  # alpha0 not in (0, 1]
    (["method.alpha0=1.01"], "method.alpha0"),
    (["method.alpha0=-0.5"], "method.alpha0"),
    (["method.alpha0=half"], "method.alpha0"),  # wrong type
    (["model.num_classes=13"], "model.num_classes"),  # class count != DW label table (9)
    (["data.kind=osm"], "model.num_classes"),  # label table of 13 classes, model of 9
    (["data.s2_bands=9"], "s2_bands"),  # band count != the model's S2 input channels
    (["model.s2_bands=9"], "s2_bands"),
    (["data.modalities=[s2]"], "modalities"),  # model wants S1 too
    (["trainer.max_epochs=0"], "trainer.max_epochs"),
    (["trainer.max_epochs=ten"], "trainer.max_epochs"),
    (["optim.lr=-1"], "optim.lr"),
    (["optim.lr=fast"], "optim.lr"),
    (["method.sigma=0"], "method.sigma"),
    (["method.selection=maybe"], "method.selection"),
    (["method.alhpa0=0.4"], "method.alhpa0"),  # unknown key
    (["trainer.limit_train_batches=0"], "trainer.limit_train_batches"),
    (["unknown_section.x=1"], "unknown_section"),
]


@pytest.mark.parametrize(("overrides", "key"), PRETRAIN_CASES, ids=[" ".join(o) for o, _ in PRETRAIN_CASES])
def test_pretrain_config_errors_name_the_key(overrides, key):
    with pytest.raises(ConfigError, match=_key(key)):
        load_config(PretrainConfig, PRETRAIN_DEMO, overrides)


def test_pretrain_config_error_from_yaml_file(tmp_path):
    data = yaml.safe_load(PRETRAIN_DEMO.read_text())
    data["method"]["beta"] = 0.95
    with pytest.raises(ConfigError, match=r"method\.beta.*0\.95 \+ 0\.15 > 1"):
        load_config(PretrainConfig, _yaml(tmp_path, data))
    data["method"]["beta"] = 0.05
    data["trainer"]["max_epochs"] = [30]
    with pytest.raises(ConfigError, match=r"trainer\.max_epochs.*expected an integer"):
        load_config(PretrainConfig, _yaml(tmp_path, data))


def test_bad_yaml_and_missing_file_name_the_file(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="broken.yaml is not valid YAML"):
        load_config(PretrainConfig, broken)
    with pytest.raises(ConfigError, match="config file not found: .*nope.yaml"):
        load_config(PretrainConfig, tmp_path / "nope.yaml")
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="list.yaml must hold a mapping"):
        load_config(PretrainConfig, listing)


# ----------------------------------------------------------------------------- FinetuneConfig
FINETUNE_CASES = [
    (["num_classes=8"], "num_classes"),  # class count != DW table (9)
    (["data.kind=osm"], "num_classes"),  # demo sets num_classes 9; OSM has 13
    (["data.kind=nol"], "data.kind"),
    (["s2_bands=12"], "s2_bands"),
    (["lr=0"], "lr"),
    (["framework=segformer"], "framework"),
    (["modality=s3"], "modality"),
    (["epochs=zero"], "epochs"),
    (["seeds=0"], "seeds"),
    (["frozne=true"], "frozne"),
    (["data.val_fraction=0"], "data.val_fraction"),
]


@pytest.mark.parametrize(("overrides", "key"), FINETUNE_CASES, ids=[" ".join(o) for o, _ in FINETUNE_CASES])
def test_finetune_config_errors_name_the_key(overrides, key):
    from cromss.transfer import FinetuneConfig

    with pytest.raises(ConfigError, match=_key(key)):
        load_config(FinetuneConfig, FINETUNE_DEMO, overrides)


# ----------------------------------------------------------------------------- through the CLI
CLI_CASES = [
    (["pretrain", "--config", str(PRETRAIN_DEMO), "method.alpha0=0"], "method.alpha0"),
    (["pretrain", "--config", str(PRETRAIN_DEMO), "method.beta=0.9", "method.mu=0.2"], "method.beta"),
    (["pretrain", "--config", str(PRETRAIN_DEMO), "model.num_classes=5"], "model.num_classes"),
    (["pretrain", "--config", str(PRETRAIN_DEMO), "data.s2_bands=9"], "s2_bands"),
    (["pretrain", "--config", str(PRETRAIN_DEMO), "data.batchsize=3"], "data.batchsize"),
    (["pretrain", "--config", str(PRETRAIN_DEMO), "--print-config", "optim.lr=abc"], "optim.lr"),
    (["pretrain", "--config", "/nonexistent/cfg.yaml"], "config file not found"),
    (["finetune", "--config", str(FINETUNE_DEMO), "num_classes=4"], "num_classes"),
    (["finetune", "--config", str(FINETUNE_DEMO), "data.kind=nol"], "data.kind"),
    (["finetune", "--config", str(FINETUNE_DEMO), "lr=-1"], "lr"),
]


@pytest.mark.parametrize(("argv", "key"), CLI_CASES, ids=[" ".join(a[3:]) or a[2] for a, _ in CLI_CASES])
def test_cli_config_errors_exit_2_with_one_line(capsys, argv, key):
    status = cli_main(argv)
    captured = capsys.readouterr()
    assert status == 2
    assert captured.err.startswith("cromss: error: ")
    assert re.search(_key(key), captured.err), captured.err
    assert "Traceback" not in captured.err + captured.out
    assert captured.err.count("\n") == 1  # one line, not a dump


@pytest.mark.parametrize("command", ["pretrain", "finetune"])
def test_cli_subprocess_exit_2_no_traceback(tmp_path, command):
    config = PRETRAIN_DEMO if command == "pretrain" else FINETUNE_DEMO
    override = "method.alpha0=2" if command == "pretrain" else "num_classes=3"
    result = subprocess.run(
        [sys.executable, "-m", "cromss", command, "--config", str(config), override],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert override.split("=")[0] in result.stderr
    assert not (tmp_path / "demo").exists() and not (tmp_path / "runs").exists()  # no work was started

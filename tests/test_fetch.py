"""``cromss fetch`` against a loopback hub: download, verify, unpack, inspect, fine-tune by name, faults.

The test starts an http.server on 127.0.0.1 (random port) that answers like the Hugging Face Hub
(``HEAD``/``GET /datasets/<repo>/resolve/<revision>/<file>`` with ``X-Repo-Commit``, ``X-Linked-Etag``,
``X-Linked-Size`` and ``Range`` support); ``HF_ENDPOINT`` points at it and ``HF_HOME`` is in tmp_path.
Nothing leaves the machine.
"""

from __future__ import annotations

import errno
import hashlib
import json
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
import torch

from cromss.cli import main
from cromss.fetch import ARTEFACTS, FetchError, resolve_weights
from cromss.fetch.registry import Artefact

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
REPO = "vikki23/NoLDO-S12"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


# ----------------------------------------------------------------------------- the loopback hub
class Hub:
    """Files served under one commit; knobs for the faults."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.etags: dict[str, str] = {}  # filename -> sha256 the hub reports (may lie: corruption)
        self.cut_first: set[str] = set()  # filenames whose first GET stops half-way
        self.log: list[tuple[str, str, str | None]] = []  # (method, filename, Range header)

    def add(self, filename: str, data: bytes) -> str:
        self.files[filename] = data
        self.etags[filename] = hashlib.sha256(data).hexdigest()
        return self.etags[filename]


def _handler(hub: Hub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # keep pytest output clean
            pass

        def _target(self) -> tuple[str, str] | None:
            prefix = f"/datasets/{REPO}/resolve/"
            path = unquote(self.path.split("?")[0])
            if not path.startswith(prefix):
                return None
            revision, _, filename = path[len(prefix):].partition("/")
            return revision, filename

        def _head(self, send_body: bool) -> None:
            target = self._target()
            filename = target[1] if target else ""
            hub.log.append((self.command, filename, self.headers.get("Range")))
            if target is None or target[0] not in ("main", COMMIT):
                self.send_response(404)
                self.send_header("X-Error-Code", "RevisionNotFound")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if filename not in hub.files:
                self.send_response(404)
                self.send_header("X-Error-Code", "EntryNotFound")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            data = hub.files[filename]
            start = 0
            ranged = self.headers.get("Range")
            if send_body and ranged and ranged.startswith("bytes="):
                start = int(ranged[len("bytes="):].split("-")[0])
            body = data[start:]
            self.send_response(206 if start else 200)
            self.send_header("X-Repo-Commit", COMMIT)
            self.send_header("X-Linked-Etag", f'"{hub.etags[filename]}"')
            self.send_header("X-Linked-Size", str(len(data)))
            self.send_header("ETag", f'"{hub.etags[filename]}"')
            self.send_header("Accept-Ranges", "bytes")
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not send_body:
                return
            if filename in hub.cut_first:
                hub.cut_first.discard(filename)
                self.wfile.write(body[: len(body) // 2])  # then drop the connection mid-body
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(body)

        def do_HEAD(self) -> None:  # noqa: N802 - http.server API
            self._head(send_body=False)

        def do_GET(self) -> None:  # noqa: N802
            self._head(send_body=True)

    return Handler


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    state = Hub()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    yield state
    server.shutdown()
    server.server_close()


# ----------------------------------------------------------------------------- published-style files
def _zip(tree: dict[str, bytes], path: Path) -> bytes:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in tree.items():
            zf.writestr(name, data)
    return path.read_bytes()


@pytest.fixture(scope="module")
def demo_src(tmp_path_factory) -> Path:
    from cromss.data.demo import make_demo

    out = tmp_path_factory.mktemp("dwsrc")
    make_demo(out, locations=2, size=64, seed=0, dw_train=6, dw_test=2, layouts=("lmdb",))
    return out


@pytest.fixture(scope="module")
def dw_zip(demo_src: Path) -> bytes:
    """ssl4eo_s12_dw.zip in the authors' folders: dw_train/{image_s1,image_s2,label_dw}/{s1_,s2_,dw_}<n>.tif."""
    out = demo_src
    tree = {}
    folders = {"s1": ("image_s1", "s1_"), "s2": ("image_s2", "s2_"), "label": ("label_dw", "dw_")}
    for split in ("train", "test"):
        for modality, (folder, prefix) in folders.items():
            for tif in sorted((out / "dw" / split / modality).glob("*.tif")):
                tree[f"ssl4eo_s12_dw/dw_{split}/{folder}/{prefix}{tif.name}"] = tif.read_bytes()
    return _zip(tree, out / "ssl4eo_s12_dw.zip")


@pytest.fixture(scope="module")
def official_ckpt(tmp_path_factory) -> tuple[bytes, dict[str, torch.Tensor]]:
    """weights-cromss-13B-midFusion-epoch=199.ckpt layout (net.encoder1 = S1, net.encoder = S2), ResNet-18."""
    import argparse

    import segmentation_models_pytorch as smp

    torch.manual_seed(3)
    unet = smp.Unet("resnet18", encoder_weights=None, in_channels=13, classes=9, decoder_channels=[32, 16, 16, 8, 8])
    s1 = smp.encoders.get_encoder("resnet18", in_channels=2, depth=5, weights=None)
    for module in (unet, s1):
        for sub in module.modules():
            if isinstance(sub, torch.nn.BatchNorm2d):
                sub.running_mean.uniform_(-0.5, 0.5)
    state = {}
    for prefix, module in (("net.encoder1.", s1), ("net.encoder.", unet.encoder), ("net.decoder.", unet.decoder),
                           ("net.segmentation_head.", unet.segmentation_head)):
        state.update({prefix + k: v.clone() for k, v in module.state_dict().items()})
    path = tmp_path_factory.mktemp("ckpt") / "weights.ckpt"
    torch.save({"epoch": 199, "state_dict": state,
                "hyper_parameters": {"args": argparse.Namespace(fusion_type="mid", n_classes=9)}}, path)
    return path.read_bytes(), {k[len("net.encoder."):]: v for k, v in state.items() if k.startswith("net.encoder.")}


def _label_tif(value_seed: int) -> bytes:
    import rasterio
    from rasterio.io import MemoryFile

    data = np.random.default_rng(value_seed).integers(0, 9, (1, 16, 16), dtype=np.uint8)
    with MemoryFile() as memfile:
        with memfile.open(driver="GTiff", width=16, height=16, count=1, dtype="uint8",
                          transform=rasterio.transform.from_origin(0, 0, 10, 10)) as dst:
            dst.write(data)
        return memfile.read()


# ----------------------------------------------------------------------------- the whole path
def test_fetch_verify_unpack_inspect_then_finetune_by_name(hub: Hub, dw_zip: bytes, official_ckpt, tmp_path: Path,
                                                          capsys) -> None:
    dw_sha = hub.add("ssl4eo_s12_dw.zip", dw_zip)
    ckpt_bytes, s2_encoder = official_ckpt
    ckpt_sha = hub.add("weights-cromss-13B-midFusion-epoch=199.ckpt", ckpt_bytes)
    dest = tmp_path / "data"

    assert main(["fetch", "noldo-s12/dw", "cromss/13b-midf", "--dest", str(dest)]) == 0
    out = capsys.readouterr().out
    layout = dest / "ssl4eo_s12_dw"
    assert f"sha256 {dw_sha} verified" in out and f"sha256 {ckpt_sha} verified" in out
    assert f"root: {layout}" in out and "--encoder cromss/13b-midf" in out
    # the authors' folders became the layout data.kind=dw reads, file for file
    for split, count in (("train", 6), ("test", 2)):
        for modality in ("s1", "s2", "label"):
            assert len(list((layout / split / modality).glob("*.tif"))) == count
    assert [p.name for p in dest.iterdir()] == ["ssl4eo_s12_dw"]  # no temporary folder left
    record = json.loads((layout / "cromss-fetch.json").read_text())
    assert record["commit"] == COMMIT and record["sha256"] == dw_sha and record["size"] == len(dw_zip)
    manifest = json.loads((tmp_path / "hf_home" / "hub" / "cromss-fetch.json").read_text())
    assert manifest["cromss/13b-midf"]["commit"] == COMMIT and manifest["cromss/13b-midf"]["sha256"] == ckpt_sha

    assert main(["data", "inspect", str(layout)]) == 0
    assert "dw dataset (geotiff layout)" in capsys.readouterr().out

    # the name works where a weight path is accepted; the file comes from the cache (no new GET)
    gets_before = sum(1 for m, _, _ in hub.log if m == "GET")
    import segmentation_models_pytorch as smp

    from cromss.weights import load_into

    model = smp.FPN("resnet18", encoder_weights=None, in_channels=13, classes=9)
    info = load_into(model, "cromss/13b-midf", modality="s2")
    assert info["layout"] == "cromss-official-mid"
    for key, value in s2_encoder.items():
        assert torch.equal(model.encoder.state_dict()[key], value), key

    torch.manual_seed(0)
    code = main([
        "finetune", "--config", str(CONFIGS / "demo" / "finetune-dw.yaml"), "--encoder", "cromss/13b-midf",
        "--modality", "s2", "--seeds", "1", "--frozen", f"output_dir={tmp_path / 'runs'}", f"data.root={layout}",
        "epochs=1", "encoder=resnet18", "trainer.enable_progress_bar=false", "trainer.limit_train_batches=1",
        "data.batch_size=4",
    ])
    assert code == 0
    run = tmp_path / "runs" / "demo-dw" / "13b-midf" / "frozen" / "seed0"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["encoder_source"] == "cromss/13b-midf"
    best = torch.load(run / "checkpoints" / "best.ckpt", weights_only=False)["state_dict"]
    for key, value in s2_encoder.items():  # frozen: the published S2 encoder, bit for bit
        assert torch.equal(best[f"model.encoder.{key}"], value), key

    exported = tmp_path / "s2.safetensors"
    assert main(["export-encoder", "cromss/13b-midf", "--modality", "s2", str(exported)]) == 0
    from safetensors.torch import load_file

    tensors = load_file(str(exported))
    assert all(torch.equal(tensors[k], v) for k, v in s2_encoder.items() if k in tensors)
    assert set(tensors) >= {k for k in s2_encoder if not k.endswith("num_batches_tracked")}
    assert main(["analyze", "weight-kl", "cromss/13b-midf", str(run), "--out", str(tmp_path / "kl")]) == 0
    kl = json.loads((tmp_path / "kl" / "weight_kl.json").read_text())
    assert next(iter(kl.values()))["encoder"]["kl"] == pytest.approx(0.0, abs=1e-12)  # frozen encoder
    assert sum(1 for m, _, _ in hub.log if m == "GET") == gets_before


def test_interrupted_transfer_resumes_with_range(hub: Hub, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    from cromss.fetch import fetch_file

    # huggingface_hub keeps what it received in whole chunks (10 MB); small chunks keep the file small
    chunk = 64 * 1024
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", chunk)
    data = np.random.default_rng(0).integers(0, 256, 300_000, dtype=np.uint8).tobytes()
    sha = hub.add("blob.bin", data)
    hub.cut_first.add("blob.bin")
    fetched = fetch_file(Artefact("test/blob", "weights", "blob.bin", "test"))
    assert Path(fetched.path).read_bytes() == data
    assert fetched.sha256 == sha and fetched.commit == COMMIT
    gets = [r for m, f, r in hub.log if m == "GET" and f == "blob.bin"]
    kept = (len(data) // 2) // chunk * chunk  # whole chunks received before the cut
    assert kept > 0 and gets[0] is None and gets[1] == f"bytes={kept}-"  # resumed, not restarted


def test_corrupted_file_is_refused_and_removed(hub: Hub, tmp_path: Path, capsys) -> None:
    good = b"published bytes" * 1000
    hub.add("weights-cromss-9B-lateFusion-epoch=199.ckpt", good)
    served = good[:-1] + b"X"  # one byte flipped on the way
    hub.files["weights-cromss-9B-lateFusion-epoch=199.ckpt"] = served
    assert main(["fetch", "cromss/9b-latef"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cromss/9b-latef" in err
    assert hashlib.sha256(good).hexdigest() in err and hashlib.sha256(served).hexdigest() in err
    blobs = list((tmp_path / "hf_home" / "hub").rglob("blobs/*"))
    assert blobs == []  # nothing unverified stays in the cache
    manifest = tmp_path / "hf_home" / "hub" / "cromss-fetch.json"
    assert not manifest.exists() or "cromss/9b-latef" not in json.loads(manifest.read_text())


def test_offline_cold_cache_fails_in_one_line_and_warm_cache_needs_no_network(
        hub: Hub, official_ckpt, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    hub.add("weights-cromss-13B-lateFusion-epoch=199.ckpt", official_ckpt[0])
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["fetch", "cromss/13b-latef"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "HF_HUB_OFFLINE=1" in err and "cromss/13b-latef" in err
    with pytest.raises(FetchError, match="not in the cache"):
        resolve_weights("cromss/13b-latef")
    assert hub.log == []  # offline really means no request

    monkeypatch.delenv("HF_HUB_OFFLINE")
    path = resolve_weights("cromss/13b-latef")
    requests = len(hub.log)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_weights("cromss/13b-latef") == path
    assert Path(path).read_bytes() == official_ckpt[0]
    assert len(hub.log) == requests


def test_unreachable_hub_with_cold_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys) -> None:
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert main(["fetch", "cromss/9b-midf"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot be reached" in err and "cromss/9b-midf" in err


def test_full_disk_while_unpacking_leaves_nothing(hub: Hub, dw_zip: bytes, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    import cromss.fetch.unpack as unpack

    hub.add("ssl4eo_s12_dw.zip", dw_zip)
    written = []

    def full_after_three(source, target) -> None:
        if len(written) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        written.append(1)
        target.write(source.read())

    monkeypatch.setattr(unpack, "_copy_member", full_after_three)
    dest = tmp_path / "data"
    (dest / "other").mkdir(parents=True)  # a neighbour that must survive
    old = dest / "ssl4eo_s12_dw"  # an older unpacked release must survive a failed update
    old.mkdir()
    (old / "cromss-fetch.json").write_text(json.dumps({"sha256": "0" * 64}))
    assert main(["fetch", "noldo-s12/dw", "--dest", str(dest)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no space left on device" in err and "noldo-s12/dw" in err
    assert sorted(p.name for p in dest.iterdir()) == ["other", "ssl4eo_s12_dw"]
    assert [p.name for p in old.iterdir()] == ["cromss-fetch.json"]  # untouched, no half layout in it

    monkeypatch.setattr(unpack, "_copy_member", lambda s, t: t.write(s.read()))
    assert main(["fetch", "noldo-s12/dw", "--dest", str(dest)]) == 0  # the verified zip is reused
    assert (old / "train" / "label").is_dir()
    assert sorted(p.name for p in dest.iterdir()) == ["other", "ssl4eo_s12_dw"]
    assert sum(1 for m, _, _ in hub.log if m == "GET") == 1


def test_osm_archive_in_the_cromss_layout(hub: Hub, demo_src: Path, tmp_path: Path, capsys) -> None:
    tree = {str(p.relative_to(demo_src / "dw")): p.read_bytes() for p in (demo_src / "dw").rglob("*.tif")}
    hub.add("ssl4eo_s12_osm.zip", _zip(tree, tmp_path / "osm.zip"))  # DW ids 0..10 are valid OSM ids
    dest = tmp_path / "data"
    assert main(["fetch", "noldo-s12/osm", "--dest", str(dest)]) == 0
    out = capsys.readouterr().out
    assert "(osm tiles; train: 6, test: 2; bands s1: 2, s2: 13) - check passed" in out
    assert "configs/finetune/osm-fpn.yaml" in out and f"root: {dest / 'ssl4eo_s12_osm'}" in out


def test_nol_labels_become_the_dw_labels_tree(hub: Hub, tmp_path: Path, capsys) -> None:
    tree = {"ssl4eo_s12_nol/dw_complete_ids.csv": b"ids,sub1,sub2,sub3,sub4\n"}
    seasons = ["20200315T103021_20200315T103603_T32TLQ", "20200612T103031_20200612T103025_T32TLQ",
               "20200904T103019_20200904T103017_T32TLQ", "20201203T104421_20201203T104416_T32TLQ"]
    for i, sample_id in enumerate(("0000042", "0103711")):
        for k, season in enumerate(seasons):
            tree[f"ssl4eo_s12_nol/dw_noisy_labels/{sample_id}/{season}/label.tif"] = _label_tif(10 * i + k)
    for k, season in enumerate(seasons[:3]):  # an id with a missing season
        tree[f"ssl4eo_s12_nol/dw_noisy_labels/0200000/{season}/label.tif"] = _label_tif(50 + k)
    hub.add("ssl4eo_s12_nol.zip", _zip(tree, tmp_path / "nol.zip"))
    dest = tmp_path / "data"
    assert main(["fetch", "noldo-s12/nol-labels", "--dest", str(dest)]) == 0
    out = capsys.readouterr().out
    root = dest / "ssl4eo_s12_nol"
    assert "2 ids with 4 label seasons, 1 incomplete" in out and "assemble-nol" in out
    assert sorted(p.name for p in (root / "dw_labels" / "0000042").iterdir()) == [f"{s}.tif" for s in seasons]
    assert (root / "dw_complete_ids.csv").is_file()
    from cromss.curation import _count_label_files  # what assemble-nol counts per id

    assert _count_label_files(root / "dw_labels") == {"0000042": 4, "0103711": 4, "0200000": 3}


def test_refetch_reuses_cache_and_layout_and_unknown_revision_fails(hub: Hub, dw_zip: bytes, tmp_path: Path,
                                                                   capsys) -> None:
    hub.add("ssl4eo_s12_dw.zip", dw_zip)
    dest = tmp_path / "data"
    assert main(["fetch", "noldo-s12/dw", "--dest", str(dest)]) == 0
    marker = dest / "ssl4eo_s12_dw" / "train" / "label"
    inode = marker.stat().st_ino
    log_size = len(hub.log)
    assert main(["fetch", "noldo-s12/dw", "--dest", str(dest)]) == 0  # pinned commit cached: no request
    assert len(hub.log) == log_size and marker.stat().st_ino == inode  # the checked layout was kept
    capsys.readouterr()
    assert main(["fetch", "noldo-s12/osm", "--revision", "v9"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "noldo-s12/osm" in err and "@v9 not found" in err


def test_unknown_names_list_the_known_ones(capsys) -> None:
    assert main(["fetch", "cromss/13b-mid"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and all(name in err for name in ARTEFACTS)
    with pytest.raises(FetchError, match="cromss/13b-midf"):
        resolve_weights("cromss/13b-mid")
    assert resolve_weights("random") == "random" and resolve_weights("runs/x.ckpt") == "runs/x.ckpt"


def test_unsafe_archive_member_is_refused(hub: Hub, tmp_path: Path, capsys) -> None:
    hub.add("ssl4eo_s12_osm.zip", _zip({"../escape.tif": b"x", "osm_train/label_osm/osm_1.tif": b"x"},
                                       tmp_path / "evil.zip"))
    dest = tmp_path / "data"
    assert main(["fetch", "noldo-s12/osm", "--dest", str(dest)]) == 2
    assert "unsafe member path" in capsys.readouterr().err
    assert list(dest.iterdir()) == [] and not (tmp_path / "escape.tif").exists()


def test_list_shows_names_files_sizes_and_the_ssl4eo_note(hub: Hub, capsys) -> None:
    hub.add("weights-cromss-13B-midFusion-epoch=199.ckpt", b"0" * 2_500_000)
    assert main(["fetch", "--list"]) == 0
    out = capsys.readouterr().out
    for name, art in ARTEFACTS.items():
        assert name in out and art.filename in out
    line = next(x for x in out.splitlines() if x.startswith("cromss/13b-midf"))
    assert "2.5 MB" in line  # the size the hub reports
    assert "wangyi111/SSL4EO-S12" in out and "zarr" in out.lower() and "assemble-nol" in out

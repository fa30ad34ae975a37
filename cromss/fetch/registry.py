"""The published CromSS artefacts cromss can fetch by name, with what is known (and not known) about them.

Everything lives in the Hugging Face dataset repo ``vikki23/NoLDO-S12``. What is pinned: the repo,
the file name and the revision a fetch asks for (``Artefact.revision``). The commit hashes of that repo
could not be looked up when this registry was written (no network), so the default revision is the
branch ``main``; the commit it resolves to is recorded at the first fetch (``cromss-fetch.json`` in the
hub cache) and every later fetch or name lookup asks for exactly that commit. ``sha256`` is ``None``
for the same reason: the content is verified against the sha256 the hub reports for the resolved
commit (the LFS object id), not against a hash shipped with cromss.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Hub repository of the NoLDO-S12 release (data and weights).
NOLDO_REPO = "vikki23/NoLDO-S12"

CITATION = """\
@ARTICLE{liu-cromss,
  author={Liu, Chenying and Albrecht, Conrad M and Wang, Yi and Zhu, Xiao Xiang},
  journal={IEEE Transactions on Geoscience and Remote Sensing},
  title={CromSS: Cross-modal pretraining with noisy labels for remote sensing image segmentation},
  year={2025}}"""

#: Licence as declared on the NoLDO-S12 dataset card; the sources keep their own terms.
NOLDO_LICENCE = "MIT (NoLDO-S12 dataset card)"

#: Where the pretraining IMAGES are (the NoL zip holds labels and ids only), and what cromss reads.
SSL4EO_NOTE = """\
The pretraining images are SSL4EO-S12 itself; ssl4eo_s12_nol.zip holds only the noisy label masks
and their SSL4EO-S12 ids. SSL4EO-S12 is published (CC BY 4.0) as:
  * v1.0 on the Hugging Face Hub, dataset wangyi111/SSL4EO-S12: split tar.gz archives
    (s1_grd/, s2_l1c/, s2_l2a/; parts of ~48 GB each) of the GeoTIFF tree <id>/<season>/<band>.tif.
    cromss reads this tree once the parts are joined and unpacked and the S1 / S2 L1C folders are
    named (or linked as) s1/ and s2c/ (docs/data.md). The uint8 LMDBs of the CromSS runs
    (0k_251k_uint8_s1.lmdb, ..._s2c.lmdb) are not published: train from the tree, from a litdata
    stream (cromss data convert SRC OUT --to stream), or build LMDBs yourself.
  * v1.1, dataset embed2scale/SSL4EO-S12-v1.1: re-aligned S1/S2 as Zarr stores in zip files
    (*.zarr.zip). cromss does NOT read this format, and the NoL ids and masks were made for v1.0.
Then: cromss data assemble-nol --s1 SSL4EO/s1 --s2 SSL4EO/s2c --labels NOL/dw_labels --out REPORT
keeps the locations with all 4 seasons (103,793 in the paper)."""


@dataclass(frozen=True)
class Artefact:
    """One fetchable file of the release."""

    name: str
    kind: str  # 'weights' | 'dataset'
    filename: str
    description: str
    folder: str | None = None  # datasets: folder created under --dest
    data_kind: str | None = None  # datasets: 'dw' | 'osm' | 'nol-labels'
    repo_id: str = NOLDO_REPO
    repo_type: str = "dataset"
    revision: str = "main"
    sha256: str | None = None
    licence: str = NOLDO_LICENCE


ARTEFACTS: dict[str, Artefact] = {
    a.name: a
    for a in (
        Artefact(
            "noldo-s12/nol-labels", "dataset", "ssl4eo_s12_nol.zip",
            "SSL4EO-S12@NoL noisy Dynamic World label masks (4 seasons) + SSL4EO-S12 ids; no images",
            folder="ssl4eo_s12_nol", data_kind="nol-labels",
            licence=f"{NOLDO_LICENCE}; labels derived from Dynamic World (CC BY 4.0)",
        ),
        Artefact(
            "noldo-s12/dw", "dataset", "ssl4eo_s12_dw.zip",
            "SSL4EO-S12@DW downstream tiles: S1, S2, 9-class expert DW labels (3,574 train / 340 test)",
            folder="ssl4eo_s12_dw", data_kind="dw",
            licence=f"{NOLDO_LICENCE}; labels from Dynamic World (CC BY 4.0)",
        ),
        Artefact(
            "noldo-s12/osm", "dataset", "ssl4eo_s12_osm.zip",
            "SSL4EO-S12@OSM downstream tiles: S1, S2, 13-class OpenStreetMap labels (1,375 / 400)",
            folder="ssl4eo_s12_osm", data_kind="osm",
            licence=f"{NOLDO_LICENCE}; labels derived from OpenStreetMap (ODbL)",
        ),
        Artefact("cromss/13b-midf", "weights", "weights-cromss-13B-midFusion-epoch=199.ckpt",
                 "CromSS middle fusion, ResNet-50 U-Nets, S1 + 13-band S2, epoch 199"),
        Artefact("cromss/13b-latef", "weights", "weights-cromss-13B-lateFusion-epoch=199.ckpt",
                 "CromSS late fusion, ResNet-50 U-Nets, S1 + 13-band S2, epoch 199"),
        Artefact("cromss/9b-midf", "weights", "weights-cromss-9B-midFusion-epoch=199.ckpt",
                 "CromSS middle fusion, ResNet-50 U-Nets, S1 + 9-band S2, epoch 199"),
        Artefact("cromss/9b-latef", "weights", "weights-cromss-9B-lateFusion-epoch=199.ckpt",
                 "CromSS late fusion, ResNet-50 U-Nets, S1 + 9-band S2, epoch 199"),
    )
}

#: Name prefixes that mark a string as a fetch name rather than a path.
NAME_PREFIXES: tuple[str, ...] = ("cromss/", "noldo-s12/")


def known_names(kind: str | None = None) -> list[str]:
    """Registry names, optionally only of one kind ('weights' | 'dataset')."""
    return [n for n, a in ARTEFACTS.items() if kind is None or a.kind == kind]

"""A cheap noisy water label from Sentinel-2: NDWI = (B3 - B8) / (B3 + B8) > 0 (McFeeters 1996).

Usage: python docs/examples/ndwi_label.py S2_STACK.tif OUT.tif
The stack holds the 13 L1C bands B1..B12 (B3 is band 3, B8 band 8). Pixels without S2 data get 255,
which is outside the class table (ignored). Any label source works the same way: cromss only needs
a label GeoTIFF on the images' grid.
"""

import sys

import numpy as np
import rasterio

source, target = sys.argv[1], sys.argv[2]
with rasterio.open(source) as src:
    green, nir, profile = src.read(3).astype(np.float64), src.read(8).astype(np.float64), src.profile
    empty = (src.read() == (src.nodata if src.nodata is not None else 0)).all(axis=0)
label = (((green - nir) / np.maximum(green + nir, 1.0)) > 0).astype(np.uint8)
label[empty] = 255
profile.update(count=1, dtype="uint8", nodata=None)
with rasterio.open(target, "w", **profile) as dst:
    dst.write(label, 1)

"""The DN scale and the BOA offset of a product: from the option, else its metadata, else a default or an
error (see :mod:`hvaeseg.data.ingest`)."""

from __future__ import annotations

from collections.abc import Sequence

from hvaeseg.data.ingest._common import IngestError, _Layer, _number

#: default scale of L2A DN when a product does not say
L2A_SCALE_FACTOR = 1e-4
#: the BOA offset (DN) of processing baseline >= 04.00
BASELINE_04_BOA_OFFSET = -1000.0



def _boa_offset(
    layers: Sequence[_Layer], explicit: float | None, scale: float, required: bool = False
) -> tuple[float, str]:
    """BOA offset in DN and where it came from; ``required``: no metadata is an error (GeoTIFF), not 0."""
    if explicit is not None:
        return float(explicit), "option"
    for key, what in (("boa_add_offset", "BOA_ADD_OFFSET"), ("add_offset", "add_offset")):
        for layer in layers:
            a = {str(k).lower(): v for k, v in layer.attrs.items()}
            value = _number(a.get(key))
            if value is not None:
                dn = value if key == "boa_add_offset" else value / scale
                return dn, f"metadata {what} ({layer.source})"
    for layer in layers:
        a = {str(k).lower(): v for k, v in layer.attrs.items()}
        if "processing_baseline" in a:
            baseline = _number(str(a["processing_baseline"]).strip())
            if baseline is None:
                continue
            return (BASELINE_04_BOA_OFFSET if baseline >= 4.0 else 0.0), f"metadata PROCESSING_BASELINE={baseline:g}"
    if required:
        files = sorted({layer.source for layer in layers})
        named = files[0] + (f" (+{len(files) - 1} more)" if len(files) > 1 else "")
        raise IngestError(
            f"the reflectance offset is unknown: {named} carry no offset metadata (no GDAL scale/offset, "
            "BOA_ADD_OFFSET or PROCESSING_BASELINE tag) and none was given; pass --boa-offset DN (Python: "
            "boa_add_offset=): 0 when reflectance = DN x 1e-4 (harmonised products, processing baseline before "
            "04.00), -1000 for L2A processing baseline 04.00 or later"
        )
    return 0.0, "default: no BOA_ADD_OFFSET, add_offset or PROCESSING_BASELINE in the metadata (harmonised product)"

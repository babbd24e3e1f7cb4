"""FHIR R4 structure check of one resource with the ``fhir.resources.R4B`` pydantic models.

In: a parsed resource dict and its key. Out: ``r4.structure`` hits (element path and pydantic error
type, never the offending value) on a ``Findings``. Refused: nothing; an unknown resourceType is
itself an ``r4.structure`` hit.

Only R4B (4.3.0, the technical correction of R4) is used: the root package of fhir.resources is
R5, whose Coverage has no ``payor``, and there is no R4 4.0.1 module for pydantic v2. The models
cost ~5-10k resources/s, which is why the checker can sample instead of checking everything.
"""

from __future__ import annotations

import importlib
from functools import cache

import pydantic

from atr_pipeline.conform.findings import Findings


@cache
def model_for(resource_type: str) -> type[pydantic.BaseModel] | None:
    """The R4B model class for a resource type, imported on first use (the package is large)."""
    if not resource_type.isalpha():
        return None
    try:
        module = importlib.import_module(f"fhir.resources.R4B.{resource_type.lower()}")
    except ImportError:
        return None
    return getattr(module, resource_type, None)


def element_path(resource_type: str, loc: tuple) -> str:
    # pydantic locations mix names and list indices; keep names so paths aggregate and carry no data.
    return ".".join([resource_type, *(str(p) for p in loc if not isinstance(p, int))])


def check_structure(res: dict, resource_type: str, key: str, f: Findings) -> None:
    model = model_for(resource_type)
    if model is None:
        f.add("r4.structure", key, f"{resource_type} (unknown resource type)")
        return
    try:
        model.model_validate(res)
    except pydantic.ValidationError as exc:
        for err in exc.errors(include_input=False, include_url=False):
            f.add("r4.structure", key, f"{element_path(resource_type, err['loc'])} ({err['type']})")
    except (ValueError, TypeError) as exc:  # validators outside pydantic's error wrapping
        f.add("r4.structure", key, f"{resource_type} ({type(exc).__name__})")

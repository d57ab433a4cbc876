"""The model package's 1.x import path, kept for tools outside the app (scripts, checks and
notebooks written against ``inspector.package``): the same names, defined in the edge room.

New code imports from where each name lives: :mod:`inspector.edge.package` (the ``.crackpkg``
file), :mod:`inspector.edge.manifest`, :mod:`inspector.edge.contract` (the ONNX contract and the
reference check) and :mod:`inspector.edge.fields` (``PackageError``).
"""
from inspector.edge.contract import (  # noqa: F401 - the 1.x public names
    INPUT_NAME,
    ReferenceCheckError,
    check_model_contract,
    verify_reference_outputs,
)
from inspector.edge.fields import PackageError  # noqa: F401
from inspector.edge.manifest import (  # noqa: F401
    DEFAULT_REFERENCE_MEMBER,
    FORMAT,
    MANIFEST_MEMBER,
    MODEL_MEMBER,
    QUANTIZATION_TYPES,
    REQUIRED_OUTPUTS,
    SIGNATURE_ALGS,
    InputSpec,
    Manifest,
    Preprocessing,
    Quantization,
    ReferenceSpec,
    Signature,
    Tiling,
    utc_now_iso,
)
from inspector.edge.package import (  # noqa: F401
    MAX_MEMBER_BYTES,
    MAX_REFERENCE_BYTES,
    ModelPackage,
    load_package,
    signed_payload,
    write_package,
)

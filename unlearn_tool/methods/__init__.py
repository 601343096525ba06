"""Registered unlearning methods: one file each, imported here so the list is greppable."""

from .base import (  # noqa: F401
    MethodOutput,
    MethodParams,
    UnlearnContext,
    check_applicable,
    describe_method,
    get_method,
    list_methods,
    method_names,
    parse_params,
    register_method,
    run_method,
    unregister_method,
)
from . import rfa  # noqa: F401,E402
from . import retrain  # noqa: F401,E402

# --- baselines, group A (finetune, neggrad, neggrad+, random-label, salun, l1-sparse): one import per file ---
from . import finetune  # noqa: F401,E402
from . import neggrad  # noqa: F401,E402
from . import random_label  # noqa: F401,E402
from . import salun  # noqa: F401,E402
from . import l1_sparse  # noqa: F401,E402

# --- baselines, group B (scrub, bad-teacher, boundary-shrink, ssd, blindspot): one import per file ---
from . import scrub  # noqa: F401,E402
from . import bad_teacher  # noqa: F401,E402
from . import boundary_shrink  # noqa: F401,E402
from . import ssd  # noqa: F401,E402
from . import blindspot  # noqa: F401,E402

# --- seed methods (issue 13: iau, laf / laf+r, concept-poison): one import per file ---
from . import iau  # noqa: F401,E402
from . import laf  # noqa: F401,E402  (registers laf and laf+r)
from . import concept_poison  # noqa: F401,E402

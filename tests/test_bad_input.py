"""Bad input through the CLI and the Python API: one clear error naming the problem and the fix, a non-zero
exit (2: refused before any work, 1: the run failed), and nothing left on disk."""
import json
import math
import re
import shutil

import pytest

from vlmq_gptqmodel import VLMQConfig, cli
from vlmq_gptqmodel.errors import BadInput


@pytest.mark.parametrize("kwargs, message", [
    ({"targets": ("q_proj", "q_proj")}, "at most once"),
    ({"targets": 5}, "targets"),
    ({"seed": "abc"}, "seed='abc': must be an int"),
    ({"seed": 1.5}, "must be an int"),
    ({"min_weight": "0.1"}, "min_weight='0.1'"),
    ({"min_weight": float("nan")}, "min_weight=nan"),
    ({"random_factor": math.inf}, "random_factor=inf: must be a finite number > 0"),
    ({"random_factor": float("nan")}, "random_factor=nan"),
    ({"random_ratio": True}, "random_ratio=True"),
    ({"norm": ["l1"]}, "norm=['l1']"),
])
def test_vlmq_config_checks_types_and_ranges_when_built(kwargs, message):
    with pytest.raises(BadInput, match=re.escape(message)):
        VLMQConfig(**kwargs)

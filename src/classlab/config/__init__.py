"""One typed config tree, loaded from YAML and overridden with ``key.sub=value``.

- :mod:`~classlab.config.schema`: the dataclasses (every field documents itself and its
  unit) and the names each registry implements;
- :mod:`~classlab.config.load`: YAML, mappings and overrides in, a validated Config out;
- :mod:`~classlab.config.validate`: bounds, allowed values, combinations;
- :mod:`~classlab.config.reference`: the Markdown reference.

Validation happens once, before anything is written to disk, and every problem is raised as
:class:`ConfigError` with a single line naming the full key, the bad value and what is
allowed. This package imports no other part of classlab (and not torch).
"""

from classlab.config.errors import ConfigError, show
from classlab.config.load import (
    apply_overrides,
    dump,
    from_dict,
    load,
    parse_override,
    plain,
    read_yaml,
    set_key,
    to_dict,
)
from classlab.config.reference import reference
from classlab.config.schema import (
    ALBUMENTATIONS_DEFAULT,
    AugConfig,
    Config,
    DataConfig,
    DiagnoseConfig,
    LogConfig,
    ModelConfig,
    OptimConfig,
    SchedConfig,
    TrainConfig,
)
from classlab.config.validate import check_albumentations_shape, validate, walk

__all__ = [
    "ALBUMENTATIONS_DEFAULT", "AugConfig", "Config", "ConfigError", "DataConfig",
    "DiagnoseConfig", "LogConfig", "ModelConfig", "OptimConfig", "SchedConfig", "TrainConfig",
    "apply_overrides", "check_albumentations_shape", "dump", "from_dict", "load",
    "parse_override", "plain", "read_yaml", "reference", "set_key", "show", "to_dict",
    "validate", "walk",
]
